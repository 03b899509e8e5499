"""pvtx's exit statuses (SEMANTICS §12) and the error that carries one."""

from __future__ import annotations

from shared.errors import PvError

EXIT_OK = 0
EXIT_NO_TX_ADD = 1  # also: missing arguments for deploy / queue verbs, no queue
EXIT_NO_TX_REMOVE = 3  # also: queue process without an active transaction
EXIT_NO_PART = 4
EXIT_NOT_ACTIVE = 11  # show, commit, deploy
EXIT_WRONG_KIND = 12  # commit on a local transaction; queue new while active
EXIT_FAILED = 255  # everything else (-1)


class TxError(PvError):
    """A transaction error with the exit status pvtx gives it."""

    def __init__(self, message: str, *, exit_code: int = EXIT_FAILED,
                 source: str | None = None, key: str | None = None):
        super().__init__(message, source=source, key=key)
        self.exit_code = exit_code

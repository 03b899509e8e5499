"""pvtx-style transactions on disk; the merge rules are pure (`shared.transaction`).

* `record`: the transaction folder's files, `.status.json` (the record) and `current.json`;
* `folder`: `TxFolder`, pvtx's commands on one folder;
* `queue`: pvtx's queue mode (steps recorded now, replayed later);
* `deploy`: laying a revision out in a folder, crash-safe;
* `packages`: reading a package (JSON, tar, tar.gz, stdin) and installing its objects;
* `control`: the pv-ctrl calls (`begin current`, remote objects, `commit`);
* `errors`: `TxError` and pvtx's exit statuses.

Errors are `TxError`s carrying pvtx's exit status. See docs/pvtx.md.
"""

from pvreal.tx.control import CONTROL_SOCKETS, SOCKET_ENV, ControlClient
from pvreal.tx.deploy import deploy_revision, recover_target
from pvreal.tx.errors import (
    EXIT_FAILED,
    EXIT_NO_PART,
    EXIT_NO_TX_ADD,
    EXIT_NO_TX_REMOVE,
    EXIT_NOT_ACTIVE,
    EXIT_OK,
    EXIT_WRONG_KIND,
    TxError,
)
from pvreal.tx.folder import TxFolder
from pvreal.tx.packages import read_package
from pvreal.tx.record import (
    CURRENT_FILE,
    STATUS_FILE,
    TXDIR_ENV,
    QueueRecord,
    TxRecord,
    TxStatus,
    resolve_txdir,
    write_durably,
)

__all__ = [
    "CONTROL_SOCKETS", "CURRENT_FILE", "EXIT_FAILED", "EXIT_NOT_ACTIVE", "EXIT_NO_PART",
    "EXIT_NO_TX_ADD", "EXIT_NO_TX_REMOVE", "EXIT_OK", "EXIT_WRONG_KIND", "SOCKET_ENV",
    "STATUS_FILE", "TXDIR_ENV", "ControlClient", "QueueRecord", "TxError", "TxFolder",
    "TxRecord", "TxStatus", "deploy_revision", "read_package", "recover_target",
    "resolve_txdir", "write_durably",
]

"""The Hub's listening address: loopback unless the operator says otherwise."""

from __future__ import annotations

import ipaddress

DEFAULT_PORT = 12365  # the port of Pantahub's own examples
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"


class ListenError(ValueError):
    """A listening address that is malformed, or not loopback without permission."""


def parse_listen(text: str, *, allow_remote: bool = False) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ListenError(f"--listen {text!r}: expected HOST:PORT")
    host = host.strip("[]")
    if not allow_remote and not _loopback(host):
        raise ListenError(
            f"--listen {text}: {host} is not a loopback address; devices' secrets and the operator "
            "token travel in clear HTTP, so pass --allow-remote only on a network you trust"
        )
    return host, int(port_text)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

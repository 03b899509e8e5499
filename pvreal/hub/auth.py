"""Credentials: device secrets hashed at rest, session tokens, the operator token.

A device's secret is stored as PBKDF2-SHA256 with its own salt; a session token (random, 256 bits)
is stored as its SHA-256, which is enough for a value that cannot be guessed. The operator token
lives in a 0600 file beside the database unless one is given on the command line.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from pvreal.durable import atomic_write

PBKDF2_ITERATIONS = 100_000
SESSION_TTL_S = 24 * 3600.0
MIN_SECRET = 16  # characters: a device secret shorter than this is refused at registration
MAX_SECRET = 256


def hash_secret(secret: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${salt.hex()}${digest.hex()}"


def check_secret(secret: str, stored: str) -> bool:
    try:
        scheme, iterations, salt, digest = stored.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        again = hashlib.pbkdf2_hmac("sha256", secret.encode(), bytes.fromhex(salt), int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(again.hex(), digest)


@functools.cache
def decoy_hash() -> str:
    """A stored-hash lookalike to check a login against when the device does not exist."""
    return hash_secret(secrets.token_hex(16))


def new_token() -> str:
    """256 random bits, URL-safe, never starting with "-": a token is pasted after `--token` on
    command lines, where argparse (and most option parsers) would take "-..." for an option."""
    while (token := secrets.token_urlsafe(32)).startswith("-"):
        pass
    return token


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, None when there is none."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def same_token(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def beside(db: str | Path, suffix: str) -> Path:
    """A file next to the database: `hub.sqlite` -> `hub.sqlite.<suffix>`."""
    return Path(db).with_name(f"{Path(db).name}.{suffix}")


def token_path(db: str | Path, kind: str) -> Path:
    """`hub.sqlite.operator-token` or `hub.sqlite.device-token`."""
    return beside(db, f"{kind}-token")


def load_or_create_token(db: str | Path, kind: str) -> str:
    path = token_path(db, kind)
    try:
        token = path.read_text().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    token = new_token()
    atomic_write(path, (token + "\n").encode(), mode=0o600)
    return token

"""Bearer token authentication: the admin token and per-tenant tokens stored as salted digests.

A tenant token has the form `awt_<token id>_<secret>`. The token id is public and selects the
row; only SHA-256(salt + secret) is stored, and every comparison runs in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

TOKEN_PREFIX = "awt"
SALT_BYTES = 16
_TOKEN_ID = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller a request authenticated as: the admin, or one tenant's token."""

    tenant: str | None
    token_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.tenant is None


ADMIN = Principal(tenant=None)


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A new tenant token: the full token for the caller, and the parts the store keeps."""

    token_id: str
    token: str
    salt: bytes
    secret_sha256: bytes


def secret_digest(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode("utf-8")).digest()


def issue_token() -> IssuedToken:
    """Create a random token id, secret and salt."""
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(SALT_BYTES)
    return IssuedToken(
        token_id=token_id,
        token=f"{TOKEN_PREFIX}_{token_id}_{secret}",
        salt=salt,
        secret_sha256=secret_digest(salt, secret),
    )


def split_token(token: str) -> tuple[str, str] | None:
    """Return (token id, secret) of a tenant token, or None when it has another form."""
    prefix, _, rest = token.partition("_")
    token_id, _, secret = rest.partition("_")
    if prefix != TOKEN_PREFIX or not _TOKEN_ID.fullmatch(token_id) or not secret:
        return None
    return token_id, secret


def digests_equal(left: bytes, right: bytes) -> bool:
    return hmac.compare_digest(left, right)


def admin_digest(admin_token: str) -> bytes:
    # Comparing digests instead of the tokens keeps the comparison's length fixed, so its
    # timing does not reveal the admin token's length either.
    return hashlib.sha256(admin_token.encode("utf-8")).digest()

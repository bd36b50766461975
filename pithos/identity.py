"""Users, keys and tokens (Swift tempauth semantics over the catalog).

Keys are stored as salted scrypt hashes; tokens are random, handed out once, and stored only as
their SHA-256 (a token is 256 random bits, so an unsalted fast hash is enough to make a stolen
database useless for logging in).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

from pithos.catalog import Catalog, UserInfo
from pithos.core.errors import InvalidArgument
from pithos.core.locks import native_lock
from pithos.core.offload import Offload

TOKEN_TTL_S = 24 * 3600.0
TOKEN_PREFIX = "PTK_"
# A validated token is trusted for this long without asking the database again; a deleted user
# or a revoked token stops working at most this late.
_CACHE_S = 5.0
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_key(key: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(key.encode(), salt=salt, **_SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


def check_key(key: str, stored: str) -> bool:
    try:
        scheme, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    got = hashlib.scrypt(key.encode(), salt=bytes.fromhex(salt), **_SCRYPT)
    return hmac.compare_digest(got.hex(), digest)


@functools.cache
def _decoy() -> str:
    """A stored key that matches nothing: an unknown user's login costs as much as a known
    one's."""
    return hash_key(secrets.token_hex(16))


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def split_user(spec: str) -> tuple[str, str]:
    """"account:user" -> (account, user)."""
    account, sep, user = spec.partition(":")
    if not sep or not account or not user:
        raise InvalidArgument(f"expected ACCOUNT:USER, not {spec!r}")
    for part in (account, user):
        if "/" in part or len(part) > 256 or any(ord(ch) < 32 for ch in part):
            raise InvalidArgument(f"bad name {part!r}")
    return account, user


class Identity:
    def __init__(self, catalog: Catalog, token_ttl_s: float = TOKEN_TTL_S,
                 offload: Offload | None = None) -> None:
        """`offload` runs the key derivation (scrypt, ~40 ms of CPU) off an event loop: a
        server's loop must not stall on logins, least of all on failed ones."""
        self.catalog = catalog
        self.token_ttl_s = token_ttl_s
        self.offload = offload
        self._cache: dict[str, tuple[UserInfo, float, float]] = {}
        self._lock = native_lock()  # (dict moves only: pithos/core/locks.py)

    def _derive(self, check: Callable[[str, str], bool], key: str, stored: str) -> bool:
        if self.offload is None:
            return check(key, stored)
        return self.offload.run(check, key, stored)

    def add_user(self, account: str, user: str, key: str, admin: bool) -> UserInfo:
        if not key:
            raise InvalidArgument("the key must not be empty")
        return self.catalog.add_user(account, user, hash_key(key), admin)

    def set_initial_key(self, account: str, user: str, key: str, admin: bool
                        ) -> UserInfo | None:
        """The user with this initial key, if the catalog had no user at all or this user's
        key is still an initial one nobody logged in with; None otherwise."""
        if not key:
            raise InvalidArgument("the key must not be empty")
        return self.catalog.set_initial_key(account, user, hash_key(key), admin)

    def login(self, account: str, user: str, key: str, ttl_s: float | None = None
              ) -> tuple[UserInfo, str, float] | None:
        """(user, token, expires) for good credentials, None otherwise; the token lasts
        `ttl_s` (default: the identity's token_ttl_s)."""
        found = self.catalog.user_credentials(account, user)
        if found is None:
            # Spend the same time as a real check, so timing does not reveal user names.
            self._derive(check_key, key, _decoy())
            return None
        info = found.user
        if not self._derive(check_key, key, found.key_hash):
            return None
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        expires = time.time() + (self.token_ttl_s if ttl_s is None else ttl_s)
        self.catalog.add_token(token_hash(token), info.id, expires)
        return info, token, expires

    def revoke(self, token: str) -> None:
        """The token stops working (here at once; `authenticate(cached=False)` everywhere)."""
        digest = token_hash(token)
        self.catalog.delete_token(digest)
        with self._lock:
            self._cache.pop(digest, None)

    def authenticate(self, token: str, cached: bool = True) -> UserInfo | None:
        """The token's user; `cached=False` asks the database even within _CACHE_S (for
        tokens that may be revoked: UI sessions)."""
        now = time.time()
        digest = token_hash(token)
        # One dict read, atomic under the GIL (the entry is one tuple, replaced whole): no
        # lock on every request's path; the lock keeps only the writers' clear-and-put whole.
        hit = self._cache.get(digest)
        if cached and hit is not None and hit[2] > now and hit[1] > now:
            return hit[0]
        found = self.catalog.token_user(digest, now)
        if found is None:
            return None
        user, expires = found.user, found.expires
        with self._lock:
            if len(self._cache) > 10000:
                self._cache.clear()
            self._cache[digest] = (user, expires, now + _CACHE_S)
        return user

"""The keys of Swift's temporary URLs: X-Account-Meta-Temp-URL-Key(-2) sign for every
container of the account, X-Container-Meta-Temp-URL-Key(-2) for their container only.  The
request a signature lets in acts as a `ScopedUser` (pithos.objects.acl) of that account, or
of that container (the scope of the key that matched)."""

from __future__ import annotations

from dataclasses import dataclass

from pithos.catalog import Catalog
from pithos.objects.acl import ScopedUser

KEY_NAMES = ("temp-url-key", "temp-url-key-2")


@dataclass(frozen=True)
class SigningKey:
    key: str
    # None: an account key (the whole account); else the one container it signs for.
    container: str | None


class TempURLKeys:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def keys(self, account: str, container: str) -> list[SigningKey]:
        """The keys that may sign a URL of `container` in `account`: the account's, then the
        container's (none when either does not exist: nothing to sign for)."""
        info = self.catalog.account(account)
        if info is None:
            return []
        found = [SigningKey(v, None) for k, v in info.meta.items() if k.lower() in KEY_NAMES]
        c = self.catalog.container(info.id, container)
        if c is not None:
            found += [SigningKey(v, container) for k, v in c.meta.items()
                      if k.lower() in KEY_NAMES]
        return [k for k in found if k.key]

    @staticmethod
    def user(account: str, key: SigningKey) -> ScopedUser:
        """Who a request signed with `key` acts as."""
        return ScopedUser(0, account, ".wsgi.tempurl", True, container=key.container)

"""Objects as images: the map a volume (and later a server) starts from is an object's
current version.  A clone names that map, so it keeps the data whatever becomes of the
object; looking it up is an object read, with the reader's rights."""

from __future__ import annotations

from pithos.catalog import Catalog, UserInfo
from pithos.core.errors import InvalidArgument, NotFound
from pithos.objects.acl import Action
from pithos.objects.authz import Authz


class Images:
    def __init__(self, catalog: Catalog, authz: Authz | None = None) -> None:
        self.catalog = catalog
        self.authz = authz or Authz(catalog)

    def root(self, account: str, container: str, name: str, *, user: UserInfo | None = None,
             operator: bool = False) -> bytes:
        """The map root of object `name`'s current version, read as `user` would read it
        (Unauthenticated / Forbidden as `Authz.object_access`), or, with `operator` (the
        machine's own command line), without asking.  NotFound when there is no such object;
        InvalidArgument for a dynamic large object's manifest, which has no map of its own.
        Makes no account."""
        if operator:
            found = self.catalog.account_and_container(account, container).container
        else:
            _, found, _ = self.authz.object_access(user, account, container, name,
                                                   Action.OBJECT_READ)
        version = self.catalog.object(found.id, name) if found is not None else None
        if version is None:
            raise NotFound(f"no object {account}/{container}/{name}")
        if version.root is None or version.dlo_manifest:
            raise InvalidArgument(f"{account}/{container}/{name} is a dynamic large object "
                                  "manifest, not an image")
        return version.root

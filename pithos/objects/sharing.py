"""Pithos sharing and publishing: groups of accounts, X-Object-Sharing on objects and
pseudo-directories, `?shared` listings, who shares with whom, and public links.

Only the owner (or an account admin) changes sharing, publishes or sets groups.  Sharing
gives other accounts read or write access to single objects (pithos.objects.authz asks it
when the account and container ACLs refuse); public links serve an object without a token.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pithos.catalog import (
    AccountInfo,
    Catalog,
    ContainerInfo,
    ObjectVersion,
    PublicObject,
    SharingEntry,
    UserInfo,
)
from pithos.core.errors import Forbidden, InvalidArgument, NotFound
from pithos.objects.acl import Action, format_sharing, parse_sharing, sharing_right
from pithos.objects.authz import Authz

MAX_GROUP_NAME = 128


@dataclass(frozen=True)
class SharingChange:
    """What a write asks of an object's sharing and public link, checked (`Sharing.check`):
    `sharing` the X-Object-Sharing text (empty: remove), `public` True to publish, False to
    unpublish; None leaves either as it is."""
    sharing: str | None
    public: bool | None


@dataclass(frozen=True)
class ObjectSharing:
    """The sharing that applies to an object (shown to its owner): `text` as X-Object-Sharing
    gives it, and `path`, the object or the pseudo-directory it is inherited from."""
    text: str
    path: str


class Sharing:
    def __init__(self, catalog: Catalog, authz: Authz) -> None:
        self.catalog = catalog
        self.authz = authz

    # -- groups ----------------------------------------------------------------------------------

    def groups(self, account_id: int) -> dict[str, list[str]]:
        """The account's groups: name -> member accounts."""
        return self.catalog.groups(account_id)

    def set_groups(self, user: UserInfo | None, account: AccountInfo,
                   groups: Mapping[str, str]) -> None:
        """Replace each named group's members (a comma-separated list; empty: delete it).
        Only an account admin; InvalidArgument for a bad group name."""
        if not groups:
            return
        self.authz.require(user, account.name, account.acl, Action.ACCOUNT_ADMIN)
        for name, members in groups.items():
            if not name or len(name) > MAX_GROUP_NAME:
                raise InvalidArgument("bad group name")
            self.catalog.set_group(
                account.id, name, [m.strip() for m in members.split(",") if m.strip()])

    # -- objects -----------------------------------------------------------------------------------

    def check(self, user: UserInfo | None, account: AccountInfo | None, sharing: str | None,
              public: str | None) -> SharingChange | None:
        """X-Object-Sharing / X-Object-Public of a write, checked before anything is written:
        only the owner sets them (Forbidden), and they must parse (InvalidArgument).  None
        when the write asks for neither."""
        if sharing is None and public is None:
            return None
        if not self.authz.owns(user, account):
            raise Forbidden("only the owner changes sharing or publishes")
        if sharing is not None:
            parse_sharing(sharing)
        publish = None
        if public is not None:
            word = public.strip().lower()
            if word not in ("true", "false", ""):
                raise InvalidArgument("X-Object-Public is true or false")
            publish = word == "true"
        return SharingChange(sharing, publish)

    def apply(self, change: SharingChange, account: AccountInfo | None,
              container: ContainerInfo, v: ObjectVersion) -> str | None:
        """Apply a checked change to object `v`; returns the public token when it publishes."""
        catalog = self.catalog
        assert account is not None
        if change.sharing is not None:
            read, write = parse_sharing(change.sharing)
            catalog.set_sharing(account.id, container.id, v.name, read, write)
        if change.public is None:
            return None
        if change.public:
            return catalog.publish(v.object_id)
        catalog.unpublish(v.object_id)
        return None

    def of_object(self, container: ContainerInfo, name: str) -> ObjectSharing | None:
        """The sharing that applies to an object (its own, else the nearest pseudo-directory's
        above it); a container known to hold none is not searched."""
        if container.has_sharing is False:
            return None
        found = self.catalog.sharing_for(container.id, name)
        if found is None:
            return None
        return ObjectSharing(format_sharing(found.read, found.write), found.path)

    def public_object(self, token: str) -> PublicObject:
        """The current version a public token names, and its account's id; NotFound for an
        unknown token or an unpublished or deleted object."""
        found = self.catalog.public_object_and_account(token)
        if found is None:
            raise NotFound("The resource could not be found.")
        return found

    def public_token(self, object_id: int) -> str | None:
        return self.catalog.public_token(object_id)

    # -- listings ------------------------------------------------------------------------------

    def shared_containers(self, owner: str) -> set[str]:
        """The names of `owner`'s containers that hold a sharing entry (`?shared`)."""
        return {e.container for e in self.catalog.all_sharing() if e.account == owner}

    def sharing_accounts(self, user: UserInfo) -> list[str]:
        """The accounts that share something with `user`, sorted (Pithos' `GET /v1`)."""
        return sorted(self.shared_with(user))

    def shared_with(self, user: UserInfo) -> dict[str, list[str]]:
        """{account: its containers (sorted)} of every other account that shares something
        with `user` (the web UI's "shared with me": a sharee may not list the account)."""
        catalog = self.catalog
        found: dict[str, set[str]] = {}
        groups_of: dict[str, dict[str, list[str]]] = {}
        for entry in catalog.all_sharing():
            owner = entry.account
            if owner == user.account or entry.container in found.get(owner, ()):
                continue
            if owner not in groups_of:
                info = catalog.account(owner)
                groups_of[owner] = catalog.groups(info.id) if info else {}
            if sharing_right(entry.read, entry.write, user, owner, groups_of[owner]):
                found.setdefault(owner, set()).add(entry.container)
        return {owner: sorted(names) for owner, names in found.items()}

    def listing_access(self, user: UserInfo | None, account: str, container: str,
                       shared: bool, referrer: str | None = None) -> ContainerView:
        """The account and container of a container listing (GET or HEAD), and what `user`
        sees of it.  Who may list the container sees everything (with `shared`, the owner's
        `?shared`: what carries a sharing entry); who may not, but has objects of it shared
        with them (a sharee), sees those only, and nothing of the owner's container (its
        totals are those of what the sharee sees, no metadata, no policy); anyone else is
        refused as `Authz.container` refuses."""
        try:
            info, c = self.authz.container(user, account, container, Action.LISTING,
                                           referrer)
        except Forbidden:
            if user is None:
                raise
            found = self._shared_listing(user, account, container)
            if found is None:
                raise
            return found
        return ContainerView(info, c, self._filter(info, c, None) if shared else None, None)

    def sharee_totals(self, view: ContainerView) -> tuple[int, int]:
        """(objects, bytes) of what a sharee's `view` shows: the objects under the paths
        shared with it, each kept by the view's filter (the nearest sharing decides)."""
        assert view.visible is not None and view.sharee is not None
        catalog = self.catalog
        groups = catalog.groups(view.container.account_id)
        assert view.account is not None
        seen: set[str] = set()
        count = size = 0
        for e in catalog.container_sharing(view.container.id):
            if sharing_right(e.read, e.write, view.sharee, view.account.name, groups) is None:
                continue
            # The entry's object, and what lies under it if it is a directory (the filter
            # drops what a plain object's entry does not cover, and what a nearer entry
            # keeps from this sharee).
            under = e.path if e.path.endswith("/") else e.path + "/"
            own = catalog.object(view.container.id, e.path)
            if own is not None and e.path not in seen and view.visible(e.path, False):
                seen.add(e.path)
                count, size = count + 1, size + own.size
            marker = ""
            while True:
                page = catalog.list_objects(view.container.id, prefix=under, marker=marker,
                                            limit=LISTING_PAGE)
                for entry in page:
                    if entry.name not in seen and view.visible(entry.name, False):
                        seen.add(entry.name)
                        count, size = count + 1, size + entry.size
                if len(page) < LISTING_PAGE:
                    break
                marker = page[-1].name
        return count, size

    def _shared_listing(self, user: UserInfo, account_name: str, container: str
                        ) -> ContainerView | None:
        catalog = self.catalog
        account = catalog.account(account_name)
        c = catalog.container(account.id, container) if account else None
        if account is None or c is None:
            return None
        groups = catalog.groups(account.id)
        paths = [e.path for e in catalog.container_sharing(c.id)
                 if sharing_right(e.read, e.write, user, account.name, groups)]
        if not paths:
            return None
        return ContainerView(account, c, self._filter(account, c, user), user)

    def _filter(self, account: AccountInfo | None, c: ContainerInfo,
                user: UserInfo | None) -> Callable[[str, bool], bool]:
        """Keep objects with sharing that applies (to `user`, or for the owner's ?shared: to
        anyone) and the pseudo-directories that lead to them: one that holds a path shared
        with `user`, or one under a directory whose sharing (the nearest above it) applies
        to `user`.  (Any sharing entry under a name once kept the name: a sharee of one
        object learnt the pseudo-directories of what was shared with others.)"""
        catalog = self.catalog
        assert account is not None
        groups = catalog.groups(account.id)

        def applies(found: SharingEntry | None) -> bool:
            if found is None:
                return False
            return user is None or sharing_right(found.read, found.write, user, account.name,
                                                 groups) is not None

        mine = [e.path for e in catalog.container_sharing(c.id) if applies(e)]

        def keep(name: str, subdir: bool) -> bool:
            if subdir:
                if any(p.startswith(name) for p in mine):
                    return True
                # The sharing that names under `name` inherit unless nearer entries say
                # otherwise: the nearest directory's at or above it (`name`, "dir/", is
                # one of the candidates, as a directory).
                return applies(catalog.sharing_for(c.id, name))
            return applies(catalog.sharing_for(c.id, name))

        return keep


# Objects read per catalog page when adding up what a sharee sees.
LISTING_PAGE = 1000


@dataclass(frozen=True)
class ContainerView:
    """What a caller sees of a container (`Sharing.listing_access`): `visible` filters the
    listing's entries (name, is a pseudo-directory) -> keep, None: all of them; `sharee`, the
    caller when it sees only objects shared with it (None: the owner's view)."""
    account: AccountInfo | None
    container: ContainerInfo
    visible: Callable[[str, bool], bool] | None
    sharee: UserInfo | None

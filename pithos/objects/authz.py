"""Authorization against the catalog (the rules are pithos.objects.acl's), with account
auto-creation: an account's admin makes the account on first use, as Swift's
`account_autocreate`.

Refusals are `Unauthenticated` (HTTP 401) for anonymous callers and `Forbidden` (403)
otherwise, and a refusal always comes before a `NotFound`, so that outsiders never learn
whether another account's container or object exists.  Every check costs one catalog
statement (the account and container by name together); none reads counters.
"""

from __future__ import annotations

from collections.abc import Callable

from pithos.catalog import AccountInfo, Catalog, ContainerInfo, UserInfo
from pithos.core.errors import Forbidden, NotFound, Unauthenticated
from pithos.objects.acl import Action, decide, sharing_right


class Authz:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def account(self, user: UserInfo | None, name: str, action: Action,
                autocreate: bool = True) -> AccountInfo:
        """The account, with its counters and metadata, if `user` may do `action` on it;
        its admin makes it on first use (`autocreate`)."""
        catalog = self.catalog
        info = catalog.account(name)
        if info is None and autocreate and user is not None and user.account == name \
                and user.admin:
            catalog.ensure_account(name)
            info = catalog.account(name)
        self.require(user, name, info.acl if info else None, action)
        if info is None:
            raise NotFound("no such account")
        return info

    @staticmethod
    def require(user: UserInfo | None, account: str, account_acl: str | None,
                action: Action, container: ContainerInfo | None = None,
                referrer: str | None = None) -> None:
        """Unauthenticated or Forbidden unless `user` may do `action` (on a request whose
        Referer is `referrer`: a container's referrer ACL may let it read)."""
        decision = decide(user, account, account_acl, action, container, referrer)
        if not decision.allowed:
            if decision.needs_login:
                raise Unauthenticated("authentication required")
            raise Forbidden("access denied")

    def container(self, user: UserInfo | None, account: str, name: str,
                  action: Action, referrer: str | None = None
                  ) -> tuple[AccountInfo | None, ContainerInfo]:
        """The container (without counters), if `user` may do `action` in it; a refusal
        comes before any NotFound so that outsiders learn nothing about names."""
        info, container = self._account_and_container(user, account, name)
        self.require(user, account, info.acl if info else None, action, container, referrer)
        if container is None:
            raise NotFound("no such container")
        return info, container

    def _account_and_container(self, user: UserInfo | None, account: str, name: str
                               ) -> tuple[AccountInfo | None, ContainerInfo | None]:
        """Both by name in one catalog statement; only ids and ACLs (no counters: they cost
        aggregate queries).  The account's admin makes it on first use."""
        catalog = self.catalog
        found = catalog.account_and_container(account, name)
        if found.account is None and user is not None and user.account == account and user.admin:
            catalog.ensure_account(account)
            found = catalog.account_and_container(account, name)
        return found.account, found.container

    def object_access(self, user: UserInfo | None, account: str, container_name: str,
                      obj: str, action: Action, referrer: str | None = None
                      ) -> tuple[AccountInfo | None, ContainerInfo, str | None]:
        """Like `container`, but an object shared with the user (X-Object-Sharing on it or
        on a pseudo-directory above it) is reachable too.  The third value is the right the
        sharing gives ("read"/"write"), None when the account or container grants it."""
        info, container = self._account_and_container(user, account, container_name)
        try:
            self.require(user, account, info.acl if info else None, action, container,
                         referrer)
        except Forbidden:
            if user is None or action not in (Action.OBJECT_READ, Action.OBJECT_WRITE):
                raise
            right = self._shared_right(user, account, info, container, obj)
            if right is None or (action is Action.OBJECT_WRITE and right != "write"):
                raise
            assert info is not None and container is not None
            return info, container, right
        if container is None:
            raise NotFound("no such container")
        return info, container, None

    def shared_right(self, user: UserInfo | None, account: str, container_name: str,
                     obj: str) -> str | None:
        """What X-Object-Sharing gives `user` on `obj` ("read"/"write"; None: nothing)."""
        found = self.catalog.account_and_container(account, container_name)
        return self._shared_right(user, account, found.account, found.container, obj)

    def _shared_right(self, user: UserInfo | None, account: str, info: AccountInfo | None,
                      container: ContainerInfo | None, obj: str) -> str | None:
        """A container known to hold no sharing entry is not searched."""
        if info is None or container is None or container.has_sharing is False:
            return None
        catalog = self.catalog
        found = catalog.sharing_for(container.id, obj)
        if found is None:
            return None
        return sharing_right(found.read, found.write, user, account, catalog.groups(info.id))

    @staticmethod
    def owns(user: UserInfo | None, account: AccountInfo | None) -> bool:
        """The owner (or an account admin): only they change sharing, publish, set groups,
        or see ACLs."""
        return account is not None and decide(user, account.name, account.acl,
                                              Action.ACCOUNT_ADMIN).allowed

    @staticmethod
    def may_read(user: UserInfo | None, account: AccountInfo | None,
                 referrer: str | None = None) -> Callable[[ContainerInfo | None], bool]:
        """May `user` read the objects of a container of `account`?  Asked of the containers
        that hold a large object's segments: a manifest is no way around an ACL.  Of a
        container that does not exist (None), it answers for the account's rights alone (no
        container ACL), so a refusal does not depend on the container's existence."""
        def check(c: ContainerInfo | None) -> bool:
            return account is not None and decide(user, account.name, account.acl,
                                                  Action.OBJECT_READ, c, referrer).allowed
        return check

"""Projects, passwords and quotas: the rules over pithos.catalog.projects (Astakos' part).

- **Projects.** Every account has a home project (id and name: the account's name; members:
  its users), so a user who never asks for another acts there and nothing that worked before
  projects changes.  Other projects are made by a cloud admin (an admin user of the account
  named ADMIN_ACCOUNT, as compute's all-tenants listing), who adds members and sets limits.
- **Acting in a project.** A token carries the project it was scoped to at login (Keystone's
  project scope); tempauth tokens act in the home project.  What the user then creates is
  charged to that project: a container (its objects' bytes and count), an image, a server.
- **Passwords** are salted scrypt hashes, as keys are; a password login takes the password if
  the user has one, and the key in any case (clients that log in with their key keep working).
- **Visibility.** A user sees only the projects it is a member of; any other project, and any
  other user, does not exist for it (NotFound, never Forbidden: names cannot be probed).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping

from pithos.catalog import Catalog, Commission, Holding, Project, TokenOwner, UserInfo
from pithos.core.errors import Forbidden, InvalidArgument, NotFound, Unauthenticated
from pithos.identity import TOKEN_PREFIX, Identity, check_key, hash_key, token_hash
from pithos.identity import _decoy as decoy

ADMIN_ACCOUNT = "admin"
MIN_PASSWORD = 8


def is_cloud_admin(user: UserInfo | None) -> bool:
    return user is not None and user.admin and user.account == ADMIN_ACCOUNT


def user_ref(user: UserInfo) -> str:
    """A user's id as Keystone shows it ("account:user", as today's tokens name it)."""
    return f"{user.account}:{user.name}"


class Projects:
    def __init__(self, catalog: Catalog, identity: Identity) -> None:
        self.catalog = catalog
        self.identity = identity

    # -- logging in ----------------------------------------------------------------------------

    def login(self, account: str, user: str, secret: str, project: str | None = None
              ) -> tuple[UserInfo, str, float] | None:
        """(user acting in the project, token, expires) for good credentials and a project
        (id or name; None: the home project) the user is a member of; None otherwise (the
        same answer for a bad password, an unknown user and a project not its own)."""
        found = self.catalog.user_credentials(account, user)
        derive = self.identity._derive
        if found is None:
            derive(check_key, secret, decoy())  # the same time as a real check
            return None
        info = found.user
        password = self.catalog.password_hash(info.id)
        if not ((password is not None and derive(check_key, secret, password))
                or derive(check_key, secret, found.key_hash)):
            return None
        scope = None
        if project is not None and project != info.account:
            found_project = self.catalog.project(project)
            if found_project is None or not self.catalog.is_member(info, found_project.id):
                return None
            scope = None if found_project.home else found_project.id
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        expires = time.time() + self.identity.token_ttl_s
        self.catalog.add_token(token_hash(token), info.id, expires, project_id=scope)
        return UserInfo(info.id, info.account, info.name, info.admin, scope), token, expires

    def token(self, token: str) -> TokenOwner | None:
        """The user (acting in its project) a token authenticates, and when it expires;
        None if unknown or expired.  Uncached: for validating a token, not for every
        request."""
        return self.catalog.token_user(token_hash(token), time.time())

    def user_in(self, project: Project, name: str) -> UserInfo | None:
        """The member of `project` named `name` (a Keystone login that names the user
        without its account), if exactly one."""
        found = [u for u in self.catalog.project_members(project.id) if u.name == name]
        return found[0] if len(found) == 1 else None

    def set_password(self, user: UserInfo, password: str) -> None:
        if not isinstance(password, str) or len(password) < MIN_PASSWORD:
            raise InvalidArgument(f"a password has at least {MIN_PASSWORD} characters")
        offload = self.identity.offload
        # scrypt off a server's event loop, as logins' (pithos.identity).
        hashed = hash_key(password) if offload is None else offload.run(hash_key, password)
        self.catalog.set_password(user.id, hashed)

    def change_password(self, caller: UserInfo, user_id: int, original: str,
                        password: str) -> None:
        """A user changes its own password, proving it knows the current one (or its key)."""
        target = self.user(caller, user_id)
        found = self.catalog.user_credentials(target.account, target.name)
        stored = self.catalog.password_hash(target.id)
        derive = self.identity._derive
        if found is None or not ((stored is not None and derive(check_key, original, stored))
                                 or derive(check_key, original, found.key_hash)):
            raise Unauthenticated("the original password is wrong")
        self.set_password(target, password)

    # -- what a user sees ----------------------------------------------------------------------

    def project_id(self, user: UserInfo) -> str:
        """The project the user acts in."""
        return user.project or user.account

    def user(self, caller: UserInfo | None, user_id: int | str) -> UserInfo:
        """A user by id (number, or "account:user"), if the caller may see it: itself, or
        anyone for a cloud admin."""
        if caller is None:
            raise Unauthenticated("a token is required")
        found: UserInfo | None = None
        text = str(user_id)
        if isinstance(user_id, int) or (text.isascii() and text.isdigit()):
            number = int(user_id)
            # (A user's id is an Integer column, 32-bit in PostgreSQL: a number past it
            # names nobody, where the driver would fail on it.)
            found = self.catalog.user_by_id(number) if 0 <= number < 1 << 31 else None
        elif ":" in str(user_id):
            account, _, name = str(user_id).partition(":")
            creds = self.catalog.user_credentials(account, name)
            found = None if creds is None else creds.user
        if found is None or (found.id != caller.id and not is_cloud_admin(caller)):
            raise NotFound("no such user")
        return found

    def projects(self, caller: UserInfo | None, user: UserInfo | None = None
                 ) -> list[Project]:
        """The projects of `user` (default the caller); a cloud admin asking for no user in
        particular sees them all."""
        if caller is None:
            raise Unauthenticated("a token is required")
        if user is None:
            return (self.catalog.projects() if is_cloud_admin(caller)
                    else self.catalog.user_projects(caller))
        if user.id != caller.id and not is_cloud_admin(caller):
            raise NotFound("no such user")
        return self.catalog.user_projects(user)

    def project(self, caller: UserInfo | None, ref: str) -> Project:
        """A project by id or name that the caller is a member of (any, for a cloud
        admin); NotFound otherwise."""
        if caller is None:
            raise Unauthenticated("a token is required")
        found = self.catalog.project(ref)
        if found is None or not (is_cloud_admin(caller)
                                 or self.catalog.is_member(caller, found.id)):
            raise NotFound("no such project")
        return found

    def lookup(self, ref: str) -> Project | None:
        """A project by id or name, whoever asks (a login resolving its scope)."""
        return self.catalog.project(ref)

    def visible_users(self, caller: UserInfo | None, name: str | None = None
                      ) -> list[UserInfo]:
        """The users the caller may see (itself; everyone, for a cloud admin), by name."""
        if caller is None:
            raise Unauthenticated("a token is required")
        found = self.catalog.users() if is_cloud_admin(caller) else [caller]
        return [u for u in found if name is None or u.name == name]

    def holdings(self, caller: UserInfo | None, ref: str) -> dict[str, Holding]:
        """A project's holdings, for its members (and cloud admins)."""
        return self.catalog.holdings(self.project(caller, ref).id)

    def quotas(self, caller: UserInfo | None) -> dict[str, dict[str, Holding]]:
        """Astakos' quota view: per project of the caller, each resource's limit, usage
        and pending charges."""
        return {p.id: self.catalog.holdings(p.id) for p in self.projects(caller)}

    def members(self, caller: UserInfo | None, ref: str) -> list[UserInfo]:
        return self.catalog.project_members(self.project(caller, ref).id)

    # -- a cloud admin's changes ---------------------------------------------------------------

    @staticmethod
    def _require_admin(caller: UserInfo | None) -> None:
        if caller is None:
            raise Unauthenticated("a token is required")
        if not is_cloud_admin(caller):
            raise Forbidden("only a cloud admin (an admin of account "
                            f"{ADMIN_ACCOUNT!r}) manages projects")

    def create_project(self, caller: UserInfo | None, name: str, description: str = ""
                       ) -> Project:
        self._require_admin(caller)
        return self.catalog.create_project(name, description)

    def set_member(self, caller: UserInfo | None, ref: str, user_id: int | str,
                   member: bool = True) -> bool:
        self._require_admin(caller)
        project = self.project(caller, ref)
        return self.catalog.set_member(project.id, self.user(caller, user_id).id, member)

    def set_quota(self, caller: UserInfo | None, ref: str,
                  limits: Mapping[str, int | None]) -> dict[str, Holding]:
        self._require_admin(caller)
        project = self.project(caller, ref)
        self.catalog.set_quota(project.id, limits)
        return self.catalog.holdings(project.id)


class Commissions:
    """The two-step charge for resources outside the catalog (compute's servers), as the
    entry point hands it to compute (which never imports the catalog): issue, then accept
    or reject; a release after the resource is gone.  See pithos.catalog.projects."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def issue(self, project_id: str, provisions: Mapping[str, int], name: str,
              lease_s: float = 60.0) -> int:
        return self.catalog.issue_commission(project_id, provisions, name, lease_s)

    def accept(self, serial: int) -> bool:
        return self.catalog.accept_commission(serial)

    def reject(self, serial: int) -> bool:
        return self.catalog.reject_commission(serial)

    def pending(self, name_prefix: str = "") -> list[Commission]:
        return self.catalog.commissions(name_prefix)

    def release(self, project_id: str, provisions: Mapping[str, int]) -> None:
        """Give back what a resource that is gone held (never refused)."""
        self.catalog.charge(project_id, {r: -abs(q) for r, q in provisions.items()})

    def reap(self, now: float | None = None) -> int:
        return self.catalog.reap_commissions(now)


__all__ = ["ADMIN_ACCOUNT", "Commission", "Commissions", "Holding", "Project", "Projects",
           "TokenOwner", "UserInfo", "is_cloud_admin", "user_ref"]

"""Who may do what: tempauth's rules for account owners, account ACLs and container ACLs.

Container ACLs (X-Container-Read / X-Container-Write) are comma-separated lists of
`account:user`, `account` (every user of it), `*` (every authenticated user), and, for read,
`.r:*` (anyone, without a token, may read objects) and `.rlistings` (with `.r:*`, may also list).
The account ACL (X-Account-Access-Control) is JSON with the keys `admin`, `read-write` and
`read-only`, each a list of the same names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum

from pithos.catalog import ContainerInfo, UserInfo
from pithos.core.errors import InvalidArgument


class Action(Enum):
    ACCOUNT_READ = "account read"  # HEAD/GET of the account (container listing)
    ACCOUNT_WRITE = "account write"  # POST of account metadata
    ACCOUNT_ADMIN = "account admin"  # ACLs of the account
    CONTAINER_WRITE = "container write"  # PUT/POST/DELETE of a container
    LISTING = "listing"  # HEAD/GET of a container
    OBJECT_READ = "object read"
    OBJECT_WRITE = "object write"


ACCOUNT_ACL_KEYS = ("admin", "read-write", "read-only")


def parse_container_acl(text: str | None) -> list[str]:
    return [e.strip() for e in (text or "").split(",") if e.strip()]


def validate_container_acl(text: str, for_read: bool) -> str:
    entries = parse_container_acl(text)
    for e in entries:
        if e.startswith("."):
            if not for_read or not (e.startswith(".r:") or e in (".rlistings",)):
                raise InvalidArgument(f"bad ACL entry {e!r}")
            if e.startswith(".r:") and len(e) == 3:
                raise InvalidArgument(f"bad ACL entry {e!r}: a referrer is needed after .r:")
    return ",".join(entries)


def parse_account_acl(text: str | None) -> dict[str, list[str]]:
    if not text:
        return {}
    try:
        acl = json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidArgument("the account ACL is not JSON") from None
    if not isinstance(acl, dict) or any(k not in ACCOUNT_ACL_KEYS for k in acl):
        raise InvalidArgument(f"the account ACL may only have the keys {ACCOUNT_ACL_KEYS}")
    for names in acl.values():
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InvalidArgument("the account ACL's values are lists of names")
    return {k: list(v) for k, v in acl.items()}


def _matches(entries: list[str], user: UserInfo) -> bool:
    mine = {f"{user.account}:{user.name}", user.account, f"{user.account}:*", "*"}
    return any(e in mine for e in entries if not e.startswith("."))


def _public_read(entries: list[str]) -> bool:
    # Only the any-referrer grant is honoured: a Referer header proves nothing.
    return ".r:*" in entries and ".r:-*" not in entries


@dataclass(frozen=True)
class ScopedUser(UserInfo):
    """Who a Swift temporary URL (or a signed form post) acts as: the account's rights on the
    objects of that account, or of one container of it (`container`), and nothing else: no
    container or account writes, no ACLs, no sharing (pithos.objects.tempurl)."""
    container: str | None = None


# What a scoped user may do (in its scope).
SCOPED_ACTIONS = (Action.OBJECT_READ, Action.OBJECT_WRITE, Action.LISTING)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    # Anonymous and refused: answer 401 (log in) rather than 403.
    needs_login: bool = False


def decide(user: UserInfo | None, account: str, account_acl: str | None, action: Action,
           container: ContainerInfo | None = None) -> Decision:
    """May `user` (None: no token) do `action` in `account` (and `container`)?"""
    if isinstance(user, ScopedUser):
        # Before the owner's rule below: a scoped user carries the owner's name.  Refused as
        # an anonymous caller is (401), as Swift's tempurl refuses what it does not sign.
        in_scope = user.account == account and action in SCOPED_ACTIONS and (
            user.container is None or (container is not None
                                       and container.name == user.container))
        return Decision(in_scope, needs_login=not in_scope)
    if user is not None:
        if user.account == account and user.admin:
            return Decision(True)
        acl = parse_account_acl(account_acl)
        if _matches(acl.get("admin", []), user):
            return Decision(True)
        if action is Action.ACCOUNT_ADMIN:
            return Decision(False)
        if _matches(acl.get("read-write", []), user) and action is not Action.ACCOUNT_WRITE:
            return Decision(True)
        if _matches(acl.get("read-only", []), user) and action in (
                Action.ACCOUNT_READ, Action.LISTING, Action.OBJECT_READ):
            return Decision(True)
    if container is not None:
        read = parse_container_acl(container.read_acl)
        write = parse_container_acl(container.write_acl)
        if action is Action.OBJECT_READ:
            if _public_read(read) or (user is not None and _matches(read, user)):
                return Decision(True)
        elif action is Action.LISTING:
            if (_public_read(read) and ".rlistings" in read) or (
                    user is not None and _matches(read, user)):
                return Decision(True)
        elif action is Action.OBJECT_WRITE and user is not None and _matches(write, user):
            return Decision(True)
    return Decision(False, needs_login=user is None)


# -- Pithos sharing ---------------------------------------------------------------------------

def parse_sharing(text: str) -> tuple[str, str]:
    """X-Object-Sharing "read=a,OWNER:group;write=b" -> (read list, write list), normalized;
    an empty header removes sharing.  InvalidArgument for anything else."""
    read: list[str] = []
    write: list[str] = []
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        key, eq, names = part.partition("=")
        key = key.strip().lower()
        if not eq or key not in ("read", "write"):
            raise InvalidArgument("X-Object-Sharing is 'read=NAMES;write=NAMES'")
        items = [n.strip() for n in names.split(",") if n.strip()]
        if any("/" in n or len(n) > 256 for n in items):
            raise InvalidArgument("bad name in X-Object-Sharing")
        (read if key == "read" else write).extend(items)
    return ",".join(dict.fromkeys(read)), ",".join(dict.fromkeys(write))


def format_sharing(read: str, write: str) -> str:
    return ";".join(p for p in (f"read={read}" if read else "",
                                f"write={write}" if write else "") if p)


def _shared_with(names: str, user: UserInfo, owner: str,
                 owner_groups: dict[str, list[str]]) -> bool:
    for name in (n for n in names.split(",") if n):
        if name == "*" or name == user.account:
            return True
        prefix, colon, rest = name.partition(":")
        if colon and prefix == owner and rest in owner_groups:
            if user.account in owner_groups[rest]:
                return True
        elif colon and prefix == user.account and rest == user.name:
            return True
    return False


def sharing_right(read: str, write: str, user: UserInfo | None, owner: str,
                  owner_groups: dict[str, list[str]]) -> str | None:
    """"write", "read" or None: what a sharing entry gives `user` (write implies read).
    A name is an account (every user of it), OWNER:group (the owner's group of accounts),
    account:user, or * (everybody with an account)."""
    if user is None:
        return None
    if _shared_with(write, user, owner, owner_groups):
        return "write"
    if _shared_with(read, user, owner, owner_groups):
        return "read"
    return None

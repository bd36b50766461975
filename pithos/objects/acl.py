"""Who may do what: tempauth's rules for account owners, account ACLs and container ACLs.

Container ACLs (X-Container-Read / X-Container-Write) are comma-separated lists of
`account:user`, `account` (every user of it), `*` (every authenticated user), and, for read,
Swift's referrer designations (swift.common.middleware.acl): `.r:*` (any request, without a
token too, may read objects), `.r:example.com` / `.r:.example.com` (requests whose Referer
names that host / a host of that domain), `.r:-host` (not that one: the designations apply in
order), and `.rlistings` (whoever a referrer designation lets in may also list).  A Referer
is the client's word: referrer ACLs are Swift's convenience for web pages, never a secret, and
they only ever open reads.
The account ACL (X-Account-Access-Control) is JSON with the keys `admin`, `read-write` and
`read-only`, each a list of the same names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from urllib.parse import unquote, urlparse

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


def parse_container_acl(text: str | None) -> tuple[list[str], list[str]]:
    """A cleaned container ACL -> (referrer designations without their `.r:`, the other
    entries), as Swift's parse_acl."""
    referrers: list[str] = []
    groups: list[str] = []
    for e in (text or "").split(","):
        e = e.strip()
        if e.startswith(".r:"):
            referrers.append(e[3:])
        elif e:
            groups.append(unquote(e))
    return referrers, groups


REFERRER_DESIGNATORS = (".r", ".ref", ".referer", ".referrer")


def validate_container_acl(text: str, for_read: bool) -> str:
    """The ACL cleaned as Swift's clean_acl cleans it (spaces and empty entries dropped, a
    referrer designation written `.r:[-]host`, `*.example.com` as `.example.com`), or
    InvalidArgument: a referrer in a write ACL, one without a host, an unknown `.designator:`."""
    values = []
    for raw in text.split(","):
        raw = raw.strip()
        if not raw:
            continue
        first, colon, second = (v.strip() for v in raw.partition(":"))
        if not colon or not first.startswith("."):
            values.append(raw)
            continue
        if first not in REFERRER_DESIGNATORS:
            raise InvalidArgument(f"Unknown designator {first!r} in ACL: {raw!r}")
        if not for_read:
            raise InvalidArgument(f"Referrers not allowed in write ACL: {raw!r}")
        negate = second.startswith("-")
        if negate:
            second = second[1:].strip()
        if second != "*" and second.startswith("*"):
            second = second[1:].strip()
        if not second or second == ".":
            raise InvalidArgument(
                f"No host/domain value after referrer designation in ACL: {raw!r}")
        values.append(f".r:{'-' if negate else ''}{second}")
    return ",".join(values)


def referrer_allowed(referrer: str | None, designations: list[str]) -> bool:
    """Does a request with this Referer (None: none) pass the referrer designations?  Each
    that matches sets the answer, the last one wins (Swift's referrer_allowed)."""
    allow = False
    if designations:
        try:
            host = urlparse(referrer or "").hostname or "unknown"
        except ValueError:  # a Referer that is no URL names no host
            host = "unknown"
        for match in designations:
            negate = match.startswith("-")
            if negate:
                match = match[1:]
            if match == host or (match.startswith(".") and host.endswith(match)):
                allow = not negate
            elif match == "*" and not negate:
                allow = True
    return allow


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
           container: ContainerInfo | None = None, referrer: str | None = None) -> Decision:
    """May `user` (None: no token) do `action` in `account` (and `container`), on a request
    whose Referer header is `referrer` (None: none)?"""
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
        if action in (Action.OBJECT_READ, Action.LISTING):
            referrers, readers = parse_container_acl(container.read_acl)
            # As tempauth: a referrer designation lets in object reads, and listings when
            # the ACL has .rlistings too; whoever the request comes from.
            if referrer_allowed(referrer, referrers) and (
                    action is Action.OBJECT_READ or ".rlistings" in readers):
                return Decision(True)
            if user is not None and _matches(readers, user):
                return Decision(True)
        elif action is Action.OBJECT_WRITE and user is not None and _matches(
                parse_container_acl(container.write_acl)[1], user):
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

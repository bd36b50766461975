"""`pithos project` and `pithos user passwd`: the operator's commands for projects, their
members and quotas, and users' passwords (on the data directory's catalog, as `pithos user`).

```
pithos project create NAME [--description TEXT]
pithos project list [--json]
pithos project show PROJECT                          members, limits, usage (JSON)
pithos project quota PROJECT [RESOURCE=LIMIT ...]    LIMIT: a number (sizes like 10G for
                                                     bytes), or "none"
pithos project member add|del PROJECT ACCOUNT:USER
pithos project reap                                  reject commissions past their lease
pithos user passwd ACCOUNT:USER [--password P]       (default: read from stdin)
```

A PROJECT is its id or name; an account's name is its home project.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pithos.cli.datadir import DataDir
from pithos.core.errors import InvalidArgument, NotFound
from pithos.identity import Identity, split_user
from pithos.projects import Projects

RESOURCES = ("bytes", "objects", "images", "servers", "vcpus", "ram_mib", "disk_gib")
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _projects(data: DataDir) -> Projects:
    catalog = data.catalog()
    return Projects(catalog, Identity(catalog))


def _project(projects: Projects, ref: str) -> Any:
    found = projects.lookup(ref)
    if found is None:
        raise NotFound(f"no project {ref!r}")
    return found


def _limit(resource: str, text: str) -> int | None:
    if text.lower() in ("none", "unlimited", ""):
        return None
    scale = 1
    if resource == "bytes" and text[-1:].upper() in _UNITS:
        scale, text = _UNITS[text[-1].upper()], text[:-1]
    try:
        value = int(text) * scale
    except ValueError:
        raise InvalidArgument(f"the limit of {resource} is a whole number or none, not "
                              f"{text!r}") from None
    if value < 0:
        raise InvalidArgument(f"the limit of {resource} must not be negative")
    return value


def _show(projects: Projects, ref: str) -> dict[str, Any]:
    project = _project(projects, ref)
    held = projects.catalog.holdings(project.id)
    return {"id": project.id, "name": project.name, "home": project.home,
            "description": project.description,
            "members": [f"{u.account}:{u.name}"
                        for u in projects.catalog.project_members(project.id)],
            "quota": {r: {"limit": h.limit, "usage": h.usage, "pending": h.pending}
                      for r, h in held.items()}}


def cmd_create(args: argparse.Namespace, data: DataDir) -> int:
    project = _projects(data).catalog.create_project(args.name, args.description)
    print(json.dumps({"id": project.id, "name": project.name}))
    return 0


def cmd_list(args: argparse.Namespace, data: DataDir) -> int:
    found = _projects(data).catalog.projects()
    if args.json:
        print(json.dumps([{"id": p.id, "name": p.name, "home": p.home} for p in found]))
    else:
        for p in found:
            print("\t".join([p.id, p.name] + (["(home)"] if p.home else [])))
    return 0


def cmd_show(args: argparse.Namespace, data: DataDir) -> int:
    print(json.dumps(_show(_projects(data), args.project), indent=1))
    return 0


def cmd_quota(args: argparse.Namespace, data: DataDir) -> int:
    projects = _projects(data)
    project = _project(projects, args.project)
    limits: dict[str, int | None] = {}
    for item in args.limits:
        resource, sep, value = item.partition("=")
        if not sep or resource not in RESOURCES:
            raise InvalidArgument(f"expected RESOURCE=LIMIT with RESOURCE one of "
                                  f"{', '.join(RESOURCES)}, not {item!r}")
        limits[resource] = _limit(resource, value)
    if limits:
        projects.catalog.set_quota(project.id, limits)
    print(json.dumps(_show(projects, project.id)["quota"]))
    return 0


def cmd_member(args: argparse.Namespace, data: DataDir) -> int:
    projects = _projects(data)
    project = _project(projects, args.project)
    account, name = split_user(args.user)
    creds = projects.catalog.user_credentials(account, name)
    if creds is None:
        raise NotFound(f"no user {args.user}")
    projects.catalog.set_member(project.id, creds.user.id, args.action == "add")
    print(json.dumps(_show(projects, project.id)["members"]))
    return 0


def cmd_reap(args: argparse.Namespace, data: DataDir) -> int:
    print(f"rejected {_projects(data).catalog.reap_commissions()} expired commissions")
    return 0


def cmd_passwd(args: argparse.Namespace, data: DataDir) -> int:
    projects = _projects(data)
    account, name = split_user(args.user)
    creds = projects.catalog.user_credentials(account, name)
    if creds is None:
        raise NotFound(f"no user {args.user}")
    password = args.password
    if password is None:
        password = sys.stdin.readline().rstrip("\n")
    projects.set_password(creds.user, password)
    print(f"{account}:{name}: password set")
    return 0


def add_parsers(commands: Any, user_actions: Any, common: argparse.ArgumentParser) -> None:
    """`pithos project ...` beside the other commands, `passwd` beside `pithos user add`."""
    project = commands.add_parser("project", parents=[common],
                                  help="projects: members and quotas per resource")
    actions = project.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", parents=[common], help="make a project")
    create.add_argument("name")
    create.add_argument("--description", default="")
    create.set_defaults(func=cmd_create)
    lst = actions.add_parser("list", parents=[common], help="list projects")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_list)
    show = actions.add_parser("show", parents=[common],
                              help="a project's members, limits and usage (JSON)")
    show.add_argument("project", metavar="PROJECT")
    show.set_defaults(func=cmd_show)
    quota = actions.add_parser("quota", parents=[common],
                               help="show, or set, a project's limits: RESOURCE=LIMIT ...")
    quota.add_argument("project", metavar="PROJECT")
    quota.add_argument("limits", nargs="*", metavar="RESOURCE=LIMIT",
                       help=f"RESOURCE: {', '.join(RESOURCES)}; LIMIT: a number (bytes: "
                            "also 10G), or none")
    quota.set_defaults(func=cmd_quota)
    member = actions.add_parser("member", parents=[common], help="add or remove a member")
    member.add_argument("action", choices=("add", "del"))
    member.add_argument("project", metavar="PROJECT")
    member.add_argument("user", metavar="ACCOUNT:USER")
    member.set_defaults(func=cmd_member)
    reap = actions.add_parser("reap", parents=[common],
                              help="reject the commissions past their lease (crashed issuers)")
    reap.set_defaults(func=cmd_reap)
    passwd = user_actions.add_parser("passwd", parents=[common],
                                     help="set a user's password (read from stdin by default)")
    passwd.add_argument("user", metavar="ACCOUNT:USER")
    passwd.add_argument("--password", help="the password (else the first line of stdin)")
    passwd.set_defaults(func=cmd_passwd)

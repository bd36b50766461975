"""`compute`: the compute agent and the operator's commands for compute.

    compute agent --api URL [--listen 127.0.0.1:0] [--name NAME] [--state-dir DIR]
                  [--vcpus N] [--ram-mib N] [--accel auto|kvm|tcg] [--key-file F]
    compute flavor list [--json]
    compute flavor create NAME --vcpus N --ram-mib N --disk-gib N [--id ID]
    compute flavor delete NAME_OR_ID
    compute agents [--json]                     the agents the API knows, and their use
    compute key [--key-file F]                  make the shared key if missing; print its path

Every command takes the storage options of every entry point (--data-dir, --blocks,
--catalog, --config). The agent keeps its VMs' state in --state-dir (default
DATA_DIR/compute) and its disks among the volumes of --data-dir; agents on one machine share
--data-dir and differ by --state-dir and --name. The shared key (default
DATA_DIR/compute.key, made at first use, mode 0600) authenticates the agent to the API and
the API to the agent; every host of a deployment is given the same file.

This is an entry point: it reads the command line and builds what the compute package takes
as arguments (the catalog's writer leases, which compute may not import itself).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import sys
import threading
from collections.abc import Sequence

from pithos.config import Storage, add_storage_arguments
from pithos.core.errors import PithosError


def key_path(storage: Storage, given: str | None) -> str:
    return given or os.path.join(storage.data_dir, "compute.key")


def ensure_key(path: str) -> str:
    """The shared compute key in `path`, made (random, mode 0600) if the file is missing."""
    with contextlib.suppress(FileNotFoundError), open(path) as f:
        key = f.read().strip()
        if key:
            return key
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    key = secrets.token_hex(32)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)  # the first of concurrent makers wins; the others read its key
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    with open(path) as f:
        return f.read().strip()


def cmd_agent(args: argparse.Namespace, storage: Storage) -> int:
    from compute.agent import Agent, host_capacity, open_volumes
    from compute.agent_http import AgentServer, Reporter
    from pithos.catalog import Catalog
    from pithos.catalog.leases import WriterLeases

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="compute agent: %(message)s")
    key = ensure_key(key_path(storage, args.key_file))
    host, _, port = args.listen.rpartition(":")
    name = args.name or socket.gethostname()
    state_dir = args.state_dir or os.path.join(storage.data_dir, "compute")
    catalog = Catalog(storage.catalog)
    writers = WriterLeases(catalog)
    volumes = open_volumes(storage.data_dir, storage.blocks)
    # Clones and snapshots are writers: `pithos gc` on the same storage spares what they name.
    volumes.writers = writers
    agent = Agent(state_dir, volumes, host_capacity(args.vcpus, args.ram_mib),
                  accel=None if args.accel == "auto" else args.accel,
                  stall_after=os.environ.get("PITHOS_COMPUTE_TEST_STALL"))
    server = None
    reporter = None
    try:
        agent.start()
        server = AgentServer((host or "127.0.0.1", int(port)), agent, name, key)
        reporter = Reporter(server, args.api)
        agent.changed = reporter.nudge
        reporter.start()

        def stop(signum: int, frame: object) -> None:
            threading.Thread(target=server.shutdown, daemon=True).start()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        print(f"compute agent {name}: listening on {server.url} (state {agent.state_dir}, "
              f"{agent.capacity.vcpus} vCPUs, {agent.capacity.ram_mib} MiB, "
              f"{agent.accel}: {agent.accel_reason})", flush=True)
        server.serve_forever()
    finally:
        if reporter is not None:
            reporter.stop()
        if server is not None:
            server.server_close()
        agent.close()  # the VMs go on running
        with contextlib.suppress(Exception):
            writers.close()
        catalog.close()
    return 0


def _db(storage: Storage):  # type: ignore[no-untyped-def]
    from compute.db import ComputeDb, database_url

    return ComputeDb(database_url(storage.catalog, storage.data_dir))


def cmd_flavor(args: argparse.Namespace, storage: Storage) -> int:
    db = _db(storage)
    try:
        if args.action == "list":
            flavors = db.flavors()
            if args.json:
                print(json.dumps([f.__dict__ for f in flavors]))
            for f in [] if args.json else flavors:
                print(f"{f.id}\t{f.name}\t{f.vcpus} vCPU\t{f.ram_mib} MiB\t{f.disk_gib} GiB")
        elif args.action == "create":
            f = db.create_flavor(args.name, args.vcpus, args.ram_mib, args.disk_gib, args.id)
            print(f"created flavor {f.name} (id {f.id})")
        else:
            db.delete_flavor(args.name)
            print(f"deleted flavor {args.name}")
    finally:
        db.close()
    return 0


def cmd_agents(args: argparse.Namespace, storage: Storage) -> int:
    import time

    db = _db(storage)
    try:
        usage = db.usage()
        rows = []
        for a in db.agents():
            u = usage.get(a.name)
            rows.append({"name": a.name, "url": a.url, "vcpus": a.vcpus, "ram_mib": a.ram_mib,
                         "used_vcpus": u.vcpus if u else 0, "used_ram_mib": u.ram_mib if u
                         else 0, "servers": len(u.servers) if u else 0,
                         "last_report_s": round(time.time() - a.heartbeat, 1)})
        if args.json:
            print(json.dumps(rows))
        for r in [] if args.json else rows:
            print(f"{r['name']}\t{r['url']}\t{r['used_vcpus']}/{r['vcpus']} vCPU\t"
                  f"{r['used_ram_mib']}/{r['ram_mib']} MiB\t{r['servers']} server(s)\t"
                  f"report {r['last_report_s']} s ago")
    finally:
        db.close()
    return 0


def cmd_key(args: argparse.Namespace, storage: Storage) -> int:
    path = key_path(storage, args.key_file)
    ensure_key(path)
    print(path)
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="compute", description=__doc__.split("\n")[0])
    commands = top.add_subparsers(dest="command", required=True)

    p = commands.add_parser("agent", help="run the VMs of this host")
    p.add_argument("--api", required=True, metavar="URL",
                   help="the compute API's base URL (pithos serve --compute), e.g. "
                        "http://127.0.0.1:8080")
    p.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT",
                   help="the agent's own API (default 127.0.0.1 on a free port)")
    p.add_argument("--name", help="this agent's name (default: the host name)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="where the VMs' state lives (default DATA_DIR/compute)")
    p.add_argument("--vcpus", type=int, help="vCPUs to offer (default 16 per core, as Nova)")
    p.add_argument("--ram-mib", type=int, help="RAM to offer (default: all less 512 MiB)")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    p.add_argument("--key-file", help="the shared compute key (default DATA_DIR/compute.key)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_agent)

    p = commands.add_parser("flavor", help="list, create or delete flavors")
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("list")
    a.add_argument("--json", action="store_true")
    add_storage_arguments(a)
    a = actions.add_parser("create")
    a.add_argument("name")
    a.add_argument("--vcpus", type=int, required=True)
    a.add_argument("--ram-mib", type=int, required=True)
    a.add_argument("--disk-gib", type=int, required=True)
    a.add_argument("--id", help="the flavor's id (default: a new UUID)")
    add_storage_arguments(a)
    a = actions.add_parser("delete")
    a.add_argument("name", metavar="NAME_OR_ID")
    add_storage_arguments(a)
    p.set_defaults(func=cmd_flavor)

    p = commands.add_parser("agents", help="the agents the API knows")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_agents)

    p = commands.add_parser("key", help="make the shared compute key if missing; print its "
                                        "path")
    p.add_argument("--key-file")
    p.set_defaults(func=cmd_key)
    for sub in commands.choices.values():
        add_storage_arguments(sub)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        storage = Storage.from_args(args)
        return int(args.func(args, storage))
    except (PithosError, OSError) as exc:
        print(f"compute: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

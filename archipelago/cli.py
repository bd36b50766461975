"""`archipelago`: volumes and the NBD server, on the data directory of `pithos store`.

    archipelago volume create NAME --size 10G [--block-size 4M]
    archipelago volume snapshot VOLUME SNAPSHOT
    archipelago volume clone SNAPSHOT NEWVOLUME [--size S]
    archipelago volume clone --from-root ROOTHEX NEWVOLUME [--size S]
    archipelago volume clone --from-object ACCOUNT/CONTAINER/OBJECT NEWVOLUME
    archipelago volume list|info NAME|resize NAME --size S|delete NAME   [--json]
    archipelago serve [--listen 127.0.0.1:10809] [--socket PATH] [--handshake-timeout S]
                      [--max-connections N] [--buffer-memory SIZE]

Every command takes `--data-dir DIR` (default ./data).  Errors are one line on stderr and exit
status 1 (2 for bad usage).  This is the only module of the package that reads the environment
or the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from archipelago.volumes import Volumes
from pithos.blocker import DEFAULT_BLOCK_SIZE
from pithos.config import Storage, add_storage_arguments
from pithos.core.errors import InvalidArgument, NotFound, PithosError
from pithos.core.hashing import from_hex


class CliError(Exception):
    """A failure to report as one line, exit status 1."""


def size_arg(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None


def _print(args: argparse.Namespace, obj: Any, text: str) -> None:
    print(json.dumps(obj) if getattr(args, "json", False) else text, flush=True)


def cmd_create(args: argparse.Namespace, vols: Volumes) -> int:
    head = vols.create(args.name, args.size, args.block_size)
    _print(args, head.to_json(), f"created volume {head.name} ({head.size} bytes)")
    return 0


def cmd_snapshot(args: argparse.Namespace, vols: Volumes) -> int:
    head = vols.snapshot(args.volume, args.snapshot)
    _print(args, head.to_json(), f"snapshot {head.name} of {args.volume}: root {head.root}")
    return 0


def cmd_clone(args: argparse.Namespace, vols: Volumes) -> int:
    if args.from_object:
        root, inline = _object_root(args.storage.catalog, args.from_object)
        head = vols.clone_root(root, args.newvolume, args.size, content=inline)
    elif args.from_root:
        head = vols.clone_root(from_hex(args.from_root), args.newvolume, args.size)
    elif args.source:
        head = vols.clone(args.source, args.newvolume, args.size)
    else:
        raise CliError("clone needs a SNAPSHOT, --from-root or --from-object")
    _print(args, head.to_json(), f"cloned {head.origin} into volume {head.name}")
    return 0


def _object_root(catalog_url: str, spec: str) -> tuple[bytes, bytes | None]:
    """The map root of the current version of ACCOUNT/CONTAINER/OBJECT in the catalog of the
    data directory (the image a clone starts from; the clone keeps the map alive for the GC
    even if the object is later deleted), and its content if it is kept inline (the clone
    stores it as blocks)."""
    from pithos.catalog import Catalog
    from pithos.objects.images import Images

    account, _, rest = spec.partition("/")
    container, _, obj = rest.partition("/")
    account = account.removeprefix("AUTH_")
    if not (account and container and obj):
        raise CliError(f"--from-object wants ACCOUNT/CONTAINER/OBJECT, not {spec!r}")
    catalog = Catalog(catalog_url)
    try:
        # The operator's command: no user's rights to ask.
        return Images(catalog).current(account, container, obj, operator=True)
    except NotFound:
        raise CliError(f"no object {spec}") from None
    except InvalidArgument:
        raise CliError(f"{spec} is a dynamic large object manifest, not an image") from None
    finally:
        catalog.close()


def cmd_list(args: argparse.Namespace, vols: Volumes) -> int:
    heads = vols.list()
    if args.json:
        print(json.dumps([h.to_json() for h in heads]))
        return 0
    for h in heads:
        print(f"{h.name}\t{h.kind}\t{h.size}\t{h.origin}")
    return 0


def cmd_info(args: argparse.Namespace, vols: Volumes) -> int:
    info = vols.info(args.name)
    _print(args, info, "\n".join(f"{k}: {v}" for k, v in info.items()))
    return 0


def cmd_resize(args: argparse.Namespace, vols: Volumes) -> int:
    head = vols.resize(args.name, args.size)
    _print(args, head.to_json(), f"resized {head.name} to {head.size} bytes")
    return 0


def cmd_delete(args: argparse.Namespace, vols: Volumes) -> int:
    vols.delete(args.name)
    _print(args, {"deleted": args.name}, f"deleted {args.name}")
    return 0


def cmd_serve(args: argparse.Namespace, vols: Volumes) -> int:
    from archipelago.nbd.server import Limits, NbdServer

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="archipelago: %(message)s")
    try:
        limits = Limits(handshake_timeout_s=args.handshake_timeout,
                        max_connections=args.max_connections,
                        buffer_memory_bytes=args.buffer_memory)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    host, _, port = args.listen.rpartition(":")
    server = NbdServer(vols, host or "127.0.0.1", int(port), unix_path=args.socket,
                       limits=limits)

    def stop(signum: int, frame: object) -> None:
        server.interrupt()  # serve_forever returns; the volumes are closed below

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever(ready=lambda addr: print(f"listening on {addr}", flush=True))
    finally:
        server.stop()
    return 0


def _common(parser: argparse.ArgumentParser, json_flag: bool = True) -> None:
    add_storage_arguments(parser)
    if json_flag:
        parser.add_argument("--json", action="store_true", help="JSON output")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="archipelago", description=__doc__.split("\n")[0])
    commands = top.add_subparsers(dest="command", required=True)
    volume = commands.add_parser("volume", help="manage volumes, snapshots and clones")
    actions = volume.add_subparsers(dest="action", required=True)

    p = actions.add_parser("create", help="a new empty volume")
    p.add_argument("name")
    p.add_argument("--size", type=size_arg, required=True, help="e.g. 10G")
    p.add_argument("--block-size", type=size_arg, default=DEFAULT_BLOCK_SIZE,
                   help="block size of its maps (default 4M)")
    p.set_defaults(func=cmd_create)

    p = actions.add_parser("snapshot", help="freeze a volume as a read-only snapshot")
    p.add_argument("volume")
    p.add_argument("snapshot")
    p.set_defaults(func=cmd_snapshot)

    p = actions.add_parser("clone", help="a new volume over a snapshot or a map (no copy)")
    p.add_argument("source", nargs="?", metavar="SNAPSHOT")
    p.add_argument("newvolume", metavar="NEWVOLUME")
    p.add_argument("--from-root", metavar="ROOTHEX", help="clone any map root (an image)")
    p.add_argument("--from-object", metavar="ACCOUNT/CONTAINER/OBJECT",
                   help="clone an object's current version (needs the catalog)")
    p.add_argument("--size", type=size_arg, help="grow the clone to this size")
    p.set_defaults(func=cmd_clone)

    p = actions.add_parser("list", help="every volume and snapshot")
    p.set_defaults(func=cmd_list)

    p = actions.add_parser("info", help="one volume or snapshot")
    p.add_argument("name")
    p.set_defaults(func=cmd_info)

    p = actions.add_parser("resize", help="grow a volume")
    p.add_argument("name")
    p.add_argument("--size", type=size_arg, required=True)
    p.set_defaults(func=cmd_resize)

    p = actions.add_parser("delete", help="remove a volume or snapshot")
    p.add_argument("name")
    p.set_defaults(func=cmd_delete)
    for sub in actions.choices.values():
        _common(sub)

    serve = commands.add_parser("serve", help="export every volume and snapshot over NBD")
    _common(serve, json_flag=False)
    serve.add_argument("--listen", default="127.0.0.1:10809", metavar="HOST:PORT",
                       help="TCP address (default 127.0.0.1:10809; port 0 picks one)")
    serve.add_argument("--socket", metavar="PATH", help="listen on a Unix socket instead")
    serve.add_argument("--handshake-timeout", type=float, default=10.0, metavar="S",
                       help="close a client that has not finished its handshake after S "
                            "seconds (default 10)")
    serve.add_argument("--max-connections", type=int, default=256, metavar="N",
                       help="connections at once; beyond, new ones are closed (default 256)")
    serve.add_argument("--buffer-memory", type=size_arg, default=256 << 20, metavar="SIZE",
                       help="memory for the buffers of all connections (default 256M, "
                            "at least 64M)")
    serve.add_argument("-v", "--verbose", action="store_true")
    serve.set_defaults(func=cmd_serve)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    from pithos.catalog import Catalog
    from pithos.catalog.leases import WriterLeases

    args = parser().parse_args(argv)
    vols = None
    catalog = None
    try:
        # The server keeps a volume's lease a moment after its last client disconnects.
        storage = Storage.from_args(args)
        args.storage = storage
        vols = Volumes.at(storage.data_dir, storage.blocks,
                          lease_wait_s=0.0 if args.command == "serve" else 5.0)
        # Snapshots and clones are writers: `pithos gc` on the same storage spares what they
        # store or name (the leases live in the catalog the collector reads).
        catalog = Catalog(storage.catalog)
        vols.writers = WriterLeases(catalog)
        return int(args.func(args, vols))
    except (CliError, PithosError) as exc:
        print(f"archipelago: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"archipelago: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if vols is not None:
            with contextlib.suppress(Exception):
                if vols.writers is not None:
                    vols.writers.close()
            with contextlib.suppress(Exception):
                vols.close()
        if catalog is not None:
            with contextlib.suppress(Exception):
                catalog.close()


if __name__ == "__main__":
    sys.exit(main())

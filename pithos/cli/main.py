"""`pithos`: the command-line entry point.

    pithos serve [--listen HOST:PORT] [--workers N] [--client-timeout S] [--keepalive S]
                 [--compute]
                                    the object API (the main job)
    pithos user add ACCOUNT:USER --key KEY [--admin]  users; also `user list`, `user del`,
                                                  `user passwd`
    pithos project create|list|show|quota|member|reap  projects and their quotas
    pithos store put FILE...        store files as maps, print "<root-hex> <size>" for each
    pithos store get ROOT [-o FILE] write a map's content to FILE or stdout
    pithos store stats [--json]     blocks and bytes in the store
    pithos store fsck [--json]      verify every block and every recorded map
    pithos store scrub [--rate MB/s] [--json]   verify every block at a bounded rate and
                                    quarantine the damaged ones
    pithos store compact [--min-garbage F] [--json]   rewrite packs of small blocks whose
                                    dead records are at least F of their size

Every command takes --data-dir DIR (default ./data).

Errors are one line on stderr and a non-zero exit: 1 for a failure, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, BinaryIO

from pithos.core.errors import IntegrityError, NotFound, PithosError
from pithos.core.hashing import from_hex, to_hex

if TYPE_CHECKING:
    # Imported where used: the catalog (SQLAlchemy) is ~0.3 s of CPU that `pithos sync`,
    # an HTTP client, would pay on every run; the block store, the storage configuration
    # and the mapper's fsck and gc ~0.1 s more.
    from pithos.cli.datadir import DataDir


class CliError(Exception):
    """A failure to report as one line, exit status 1."""


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if text and text[-1] in units:
            return int(text[:-1]) * units[text[-1]]
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None


def _open_inputs(paths: Sequence[str]) -> Iterator[BinaryIO]:
    from pithos.cli.files import open_ahead

    files = open_ahead(p for p in paths if p != "-")
    for path in paths:
        if path == "-":
            yield sys.stdin.buffer
            continue
        try:
            yield next(files)
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc.strerror}") from None


def cmd_put(args: argparse.Namespace, data: DataDir) -> int:
    for path in args.files:
        if path != "-" and not os.path.isfile(path):
            what = "no such file" if not os.path.exists(path) else "not a regular file"
            raise CliError(f"cannot read {path}: {what}")
    from pithos.catalog.leases import WriterLeases

    many = len(args.files) > 1
    # A writer (pithos.catalog.leases) from before its first block until its root is logged:
    # a collector running meanwhile spares what it stored, however slowly the input comes.
    leases = WriterLeases(data.catalog())
    try:
        # One writer for all the files: build_many reads ahead into the next file.
        with leases.held() as writer:
            for path, (root, size) in zip(
                    args.files, data.mapper.build_many(_open_inputs(args.files)), strict=False):
                # The map is durable; log its root before telling anyone about it.
                with leases.commit_guard(writer):
                    data.record_roots([(root, size)])
                print(f"{to_hex(root)} {size}" + (f" {path}" if many else ""), flush=True)
    finally:
        leases.close()
    return 0


def cmd_get(args: argparse.Namespace, data: DataDir) -> int:
    root = from_hex(args.root)
    try:
        data.mapper.stat(root)
    except NotFound:
        raise CliError(f"unknown root {args.root}") from None
    except IntegrityError as exc:
        raise CliError(str(exc)) from None
    if args.output is None:
        out = sys.stdout.buffer
        for piece in data.mapper.read(root):
            out.write(piece)
        out.flush()
        return 0
    # Write beside the target and rename, so a failed get never leaves a partial file.
    tmp = f"{args.output}.part.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            for piece in data.mapper.read(root):
                f.write(piece)
        os.replace(tmp, args.output)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return 0


def cmd_stats(args: argparse.Namespace, data: DataDir) -> int:
    blocks = total = 0
    for _, size in data.blocker.iterate():
        blocks += 1
        total += size
    stats = {"blocks": blocks, "bytes": total, "maps": len(set(all_roots(data))),
             "block_size": data.mapper.block_size, "data_dir": os.path.abspath(data.path)}
    if args.json:
        print(json.dumps(stats))
    else:
        for key, value in stats.items():
            print(f"{key}: {value}")
    return 0


def all_roots(data: DataDir) -> Iterator[bytes]:
    """Every map root the data directory keeps: retained versions and images in the catalog,
    volumes and snapshots, and maps recorded by `pithos store put`."""
    from pithos.cli.roots import provided_roots

    yield from data.catalog().version_roots()
    yield from data.catalog().image_roots()
    yield from (named.root for named in provided_roots(data))
    yield from data.roots()


def cmd_fsck(args: argparse.Namespace, data: DataDir) -> int:
    from pithos.cli.damage import inline_damage, name_quarantined, quarantine_lines
    from pithos.mapper.fsck import fsck

    report = fsck(data.blocker, all_roots(data))
    inline_checked, inline_corrupt = inline_damage(data)
    clean = report.clean and not inline_corrupt
    result = report.as_dict()
    result["inline_objects"] = inline_checked
    result["inline_corrupt"] = inline_corrupt
    result["clean"] = clean
    name_quarantined(data, result["quarantined"])  # type: ignore[arg-type]
    if args.json:
        print(json.dumps(result))
    else:
        print(f"checked {report.blocks} blocks ({report.bytes_checked} bytes), "
              f"{report.maps} maps ({report.pages} pages), {inline_checked} objects kept "
              "inline")
        for h in report.corrupt:
            print(f"corrupt block {to_hex(h)}")
        for h, root in report.missing:
            print(f"missing block {to_hex(h)} (named by map {to_hex(root)})")
        for h in report.not_maps:
            print(f"not a map page {to_hex(h)}")
        for line in quarantine_lines(result["quarantined"]):  # type: ignore[arg-type]
            print(line)
        for name in report.leftovers:
            print(f"leftover {name} of a writer that died (pithos gc removes it)")
        for line in inline_corrupt:
            print(line)
        print("clean" if clean else "damaged")
    return 0 if clean else 1


def cmd_scrub(args: argparse.Namespace, data: DataDir) -> int:
    from pithos.cli.damage import run_scrub

    if args.rate < 0:
        raise CliError("--rate must not be negative")
    return run_scrub(data, all_roots(data), args.rate, args.json)


def cmd_serve(args: argparse.Namespace, data: DataDir | None) -> int:
    from pithos.cli.serve import serve
    from pithos.config import Storage

    if args.workers < 1:
        raise CliError("--workers must be at least 1")
    timeouts = {}
    if args.client_timeout is not None:
        if not args.client_timeout > 0:
            raise CliError("--client-timeout must be more than 0 seconds")
        timeouts["client_timeout_s"] = args.client_timeout
    if args.keepalive is not None:
        if args.keepalive < 1:  # (0 would leave a half-sent request line unbounded)
            raise CliError("--keepalive must be at least 1 second")
        timeouts["keepalive_s"] = args.keepalive
    return serve(Storage.from_args(args), args.listen, args.workers, **timeouts,
                 compute=args.compute)


def cmd_user_add(args: argparse.Namespace, data: DataDir) -> int:
    from pithos.identity import Identity, split_user

    account, user = split_user(args.user)
    Identity(data.catalog()).add_user(account, user, args.key, admin=args.admin)
    print(f"{account}:{user}{' (admin)' if args.admin else ''}")
    return 0


def cmd_user_list(args: argparse.Namespace, data: DataDir) -> int:
    users = data.catalog().users()
    if args.json:
        print(json.dumps([{"account": u.account, "user": u.name, "admin": u.admin}
                          for u in users]))
    else:
        for u in users:
            print(f"{u.account}:{u.name}{' admin' if u.admin else ''}")
    return 0


def cmd_user_del(args: argparse.Namespace, data: DataDir) -> int:
    from pithos.identity import split_user

    account, user = split_user(args.user)
    if not data.catalog().delete_user(account, user):
        raise CliError(f"no such user {account}:{user}")
    return 0


def cmd_gc(args: argparse.Namespace, data: DataDir) -> int:
    from pithos.catalog.leases import oldest_live_writer
    from pithos.mapper.gc import UnsafeToSweep, collect

    if args.clock_margin < 0:
        raise CliError("--clock-margin must not be negative")
    catalog = data.catalog()
    # The mark start comes first: a writer that begins later is younger than it; one that
    # began earlier has its lease row in the catalog by now (pithos.catalog.leases).
    started = time.time()
    oldest_writer = oldest_live_writer(catalog)
    # Versions committed from here on are picked up by late_roots before each sweep batch.
    seen = catalog.max_version_id()

    def late_roots() -> list[bytes]:
        nonlocal seen
        found = catalog.roots_after(seen)
        seen = found.newest_version_id
        return found.roots

    try:
        report = collect(data.blocker, all_roots(data), dry_run=args.dry_run,
                         oldest_upload=oldest_writer, force=args.force,
                         late_roots=late_roots, started=started,
                         clock_margin_s=args.clock_margin)
    except UnsafeToSweep as exc:
        raise CliError(str(exc)) from None
    # Temporary files of writers that died (never a live writer's: see BlockStore.leftovers).
    leftovers = data.blocker.leftovers() if args.dry_run else data.blocker.remove_leftovers()
    result = report.as_dict()
    result["leftovers"] = leftovers
    # The space of swept packed blocks comes back when their packs are rewritten.
    result["compaction"] = {} if args.dry_run else _compact(data, COMPACT_MIN_GARBAGE)
    if args.json:
        print(json.dumps(result))
    else:
        verb = "would reclaim" if args.dry_run else "reclaimed"
        count = report.garbage_blocks if args.dry_run else report.reclaimed_blocks
        size = report.garbage_bytes if args.dry_run else report.reclaimed_bytes
        print(f"{verb} {count} blocks ({size} bytes); {report.reachable_blocks} reachable "
              f"from {report.roots} roots; {report.spared_young_blocks} spared as too young; "
              f"{'would remove' if args.dry_run else 'removed'} {len(leftovers)} temporary "
              f"files of dead writers; {report.seconds:.1f} s")
    return 0


# `pithos gc` rewrites a pack once a quarter of it is dead: each live byte is copied at most
# about 4 times over its life for every byte reclaimed.
COMPACT_MIN_GARBAGE = 0.25


def _compact(data: DataDir, min_garbage: float) -> dict[str, int]:
    from pithos.blocker import LocalBlockStore

    store = data.store
    return store.compact(min_garbage) if isinstance(store, LocalBlockStore) else {}


def cmd_compact(args: argparse.Namespace, data: DataDir) -> int:
    if not 0 <= args.min_garbage <= 1:
        raise CliError("--min-garbage must be between 0 and 1")
    report = _compact(data, args.min_garbage)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report.get('compacted', 0)} packs rewritten, {report.get('removed', 0)} "
              f"removed of {report.get('packs', 0)}; {report.get('copied_bytes', 0)} bytes "
              f"copied, {report.get('reclaimed_bytes', 0)} bytes reclaimed")
    return 0


def cmd_quota(args: argparse.Namespace, data: DataDir) -> int:
    catalog = data.catalog()
    if args.bytes is not None:
        catalog.set_account_quota(args.account, args.bytes)
    info = catalog.account(args.account)
    if info is None:
        raise CliError(f"no such account {args.account}")
    print(json.dumps({"account": info.name, "quota_bytes": info.quota_bytes or 0,
                      "bytes_used": info.bytes}))
    return 0


def parser() -> argparse.ArgumentParser:
    from pithos.blocker import DEFAULT_BLOCK_SIZE
    from pithos.config import add_storage_arguments
    from pithos.mapper.gc import CLOCK_MARGIN_S

    # --data-dir is accepted before or after the subcommand; SUPPRESS keeps a later default
    # from overwriting an earlier value.
    common = argparse.ArgumentParser(add_help=False)
    add_storage_arguments(common)
    top = argparse.ArgumentParser(prog="pithos", description=__doc__.split("\n")[0])
    commands = top.add_subparsers(dest="command", required=True)

    store = commands.add_parser("store", parents=[common],
                                help="administer the block store of a data directory")
    actions = store.add_subparsers(dest="action", required=True)

    put = actions.add_parser("put", parents=[common],
                             help="store files; print '<root-hex> <size>' for each")
    put.add_argument("files", nargs="+", metavar="FILE", help="a file, or - for stdin")
    put.add_argument("--block-size", type=_size, default=DEFAULT_BLOCK_SIZE,
                     help="chunk size for new data (default 4M)")
    put.set_defaults(func=cmd_put)

    get = actions.add_parser("get", parents=[common], help="write the content of a map")
    get.add_argument("root", metavar="ROOT", help="root hash (hex) printed by put")
    get.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    get.set_defaults(func=cmd_get)

    stats = actions.add_parser("stats", parents=[common],
                               help="count blocks and bytes in the store")
    stats.add_argument("--json", action="store_true", help="one JSON object")
    stats.set_defaults(func=cmd_stats)

    check = actions.add_parser("fsck", parents=[common],
                               help="verify every block and every recorded map")
    check.add_argument("--json", action="store_true", help="one JSON object")
    check.set_defaults(func=cmd_fsck)

    scrub = actions.add_parser("scrub", parents=[common],
                               help="verify every block at a bounded rate; quarantine the "
                                    "damaged ones and name the maps that need them")
    scrub.add_argument("--rate", type=float, default=100.0, metavar="MB/s",
                       help="read at most this many MB (10^6 bytes) a second on average "
                            "(default 100; 0: no bound)")
    scrub.add_argument("--json", action="store_true", help="one JSON object")
    scrub.set_defaults(func=cmd_scrub)

    compact = actions.add_parser("compact", parents=[common],
                                 help="rewrite the packs of small blocks that hold enough "
                                      "dead records (pithos gc does it too)")
    compact.add_argument("--min-garbage", type=float, default=COMPACT_MIN_GARBAGE,
                         metavar="F", help="rewrite a pack when at least this share of it "
                                           f"is dead (default {COMPACT_MIN_GARBAGE:g}; 0: "
                                           "every pack with any)")
    compact.add_argument("--json", action="store_true", help="one JSON object")
    compact.set_defaults(func=cmd_compact)

    gc = commands.add_parser("gc", parents=[common],
                             help="reclaim blocks no version, volume or recorded map uses")
    gc.add_argument("--dry-run", action="store_true", help="count, do not delete")
    gc.add_argument("--json", action="store_true", help="one JSON object")
    gc.add_argument("--force", action="store_true",
                    help="sweep even when some maps cannot be walked (blocks only they name "
                         "are lost)")
    gc.add_argument("--clock-margin", type=float, default=CLOCK_MARGIN_S, metavar="S",
                    help="spare blocks stamped this close to the cutoff: the clock skew "
                         f"between hosts (default {CLOCK_MARGIN_S:g})")
    gc.set_defaults(func=cmd_gc)

    quota = commands.add_parser("quota", parents=[common],
                                help="show or set an account's quota (bytes; 0: none)")
    quota.add_argument("account", metavar="ACCOUNT")
    quota.add_argument("--bytes", type=_size, default=None, help="set the quota")
    quota.set_defaults(func=cmd_quota)

    serve = commands.add_parser("serve", parents=[common],
                                help="run the object API (Swift v1) on the data directory")
    serve.add_argument("--listen", default=os.environ.get("PITHOS_LISTEN", "127.0.0.1:8080"),
                       metavar="HOST:PORT",
                       help="address to listen on (default $PITHOS_LISTEN or 127.0.0.1:8080)")
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="worker processes (default 1)")
    serve.add_argument("--client-timeout", type=float, metavar="S",
                       default=os.environ.get("PITHOS_CLIENT_TIMEOUT"),
                       help="a request body that sends nothing for S seconds ends in 408 "
                            "(default $PITHOS_CLIENT_TIMEOUT or 60, as Swift's proxy)")
    serve.add_argument("--keepalive", type=int, metavar="S",
                       help="close a connection idle for S seconds, or whose request line and "
                            "headers take longer to arrive (default 75)")
    serve.add_argument("--compute", action="store_true",
                       help="also run the compute API (Nova v2.1 subset) and one local compute "
                            "agent on the data directory")
    serve.set_defaults(func=cmd_serve, no_data=True)

    user = commands.add_parser("user", parents=[common], help="manage users (tempauth style)")
    user_actions = user.add_subparsers(dest="action", required=True)
    add = user_actions.add_parser("add", parents=[common], help="add a user, or reset its key")
    add.add_argument("user", metavar="ACCOUNT:USER")
    add.add_argument("--key", required=True, help="the user's key (password)")
    add.add_argument("--admin", action="store_true", help="the user owns its account")
    add.set_defaults(func=cmd_user_add)
    lst = user_actions.add_parser("list", parents=[common], help="list users")
    lst.add_argument("--json", action="store_true", help="one JSON list")
    lst.set_defaults(func=cmd_user_list)
    rm = user_actions.add_parser("del", parents=[common], help="delete a user and its tokens")
    rm.add_argument("user", metavar="ACCOUNT:USER")
    rm.set_defaults(func=cmd_user_del)

    from pithos.cli.projects import add_parsers as add_project_parsers

    add_project_parsers(commands, user_actions, common)
    from pithos.cli.sync import add_parser as add_sync_parser

    add_sync_parser(commands)
    return top


def sync_parser() -> argparse.ArgumentParser:
    """The parser of `pithos sync` alone: an HTTP client, which need not import the server's
    modules that the other commands' parsers do (the catalog, SQLAlchemy: ~0.3 s of CPU at
    every run)."""
    top = argparse.ArgumentParser(prog="pithos", description=__doc__.split("\n")[0])
    commands = top.add_subparsers(dest="command", required=True)
    from pithos.cli.sync import add_parser as add_sync_parser

    add_sync_parser(commands)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    args = (sync_parser() if words[:1] == ["sync"] else parser()).parse_args(words)
    data = None
    try:
        if getattr(args, "no_data", False):
            return int(args.func(args, None))
        from pithos.blocker import DEFAULT_BLOCK_SIZE
        from pithos.cli.datadir import DataDir
        from pithos.config import Storage

        block_size = getattr(args, "block_size", DEFAULT_BLOCK_SIZE)

        data = DataDir(Storage.from_args(args), block_size=block_size)
        return int(args.func(args, data))
    except (CliError, PithosError) as exc:
        print(f"pithos: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); not an error of ours.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 1
    except OSError as exc:
        print(f"pithos: error: {exc.filename or ''}{': ' if exc.filename else ''}"
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if data is not None:
            data.close()


if __name__ == "__main__":
    sys.exit(main())

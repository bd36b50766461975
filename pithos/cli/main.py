"""`pithos`: the command-line entry point.

    pithos store put FILE...        store files as maps, print "<root-hex> <size>" for each
    pithos store get ROOT [-o FILE] write a map's content to FILE or stdout
    pithos store stats [--json]     blocks and bytes in the store
    pithos store fsck [--json]      verify every block and every recorded map

Errors are one line on stderr and a non-zero exit: 1 for a failure, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import BinaryIO

from pithos.blocker import DEFAULT_BLOCK_SIZE
from pithos.cli.datadir import DataDir
from pithos.cli.files import open_ahead
from pithos.core.errors import IntegrityError, NotFound, PithosError
from pithos.core.hashing import from_hex, to_hex
from pithos.mapper.fsck import fsck


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
    many = len(args.files) > 1
    for path, (root, size) in zip(args.files, data.mapper.build_many(_open_inputs(args.files)),
                                  strict=False):
        # The map is durable; log its root before telling anyone about it.
        data.record_roots([(root, size)])
        print(f"{to_hex(root)} {size}" + (f" {path}" if many else ""), flush=True)
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
    stats = {"blocks": blocks, "bytes": total, "maps": len(set(data.roots())),
             "block_size": data.mapper.block_size, "data_dir": os.path.abspath(data.path)}
    if args.json:
        print(json.dumps(stats))
    else:
        for key, value in stats.items():
            print(f"{key}: {value}")
    return 0


def cmd_fsck(args: argparse.Namespace, data: DataDir) -> int:
    report = fsck(data.blocker, data.roots())
    result = report.as_dict()
    result["stale_tmp_files"] = data.store.stale_tmp_files()
    if args.json:
        print(json.dumps(result))
    else:
        print(f"checked {report.blocks} blocks ({report.bytes_checked} bytes), "
              f"{report.maps} maps ({report.pages} pages)")
        for h in report.corrupt:
            print(f"corrupt block {to_hex(h)}")
        for h, root in report.missing:
            print(f"missing block {to_hex(h)} (named by map {to_hex(root)})")
        for h in report.not_maps:
            print(f"not a map page {to_hex(h)}")
        print("clean" if report.clean else "damaged")
    return 0 if report.clean else 1


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="pithos", description=__doc__.split("\n")[0])
    commands = top.add_subparsers(dest="command", required=True)

    store = commands.add_parser("store", help="administer the block store of a data directory")
    store.add_argument("--data-dir", default="./data", help="data directory (default ./data)")
    actions = store.add_subparsers(dest="action", required=True)

    put = actions.add_parser("put", help="store files; print '<root-hex> <size>' for each")
    put.add_argument("files", nargs="+", metavar="FILE", help="a file, or - for stdin")
    put.add_argument("--block-size", type=_size, default=DEFAULT_BLOCK_SIZE,
                     help="chunk size for new data (default 4M)")
    put.set_defaults(func=cmd_put)

    get = actions.add_parser("get", help="write the content of a map")
    get.add_argument("root", metavar="ROOT", help="root hash (hex) printed by put")
    get.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    get.set_defaults(func=cmd_get)

    stats = actions.add_parser("stats", help="count blocks and bytes in the store")
    stats.add_argument("--json", action="store_true", help="one JSON object")
    stats.set_defaults(func=cmd_stats)

    check = actions.add_parser("fsck", help="verify every block and every recorded map")
    check.add_argument("--json", action="store_true", help="one JSON object")
    check.set_defaults(func=cmd_fsck)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    data = None
    try:
        block_size = getattr(args, "block_size", DEFAULT_BLOCK_SIZE)
        data = DataDir(args.data_dir, block_size=block_size)
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

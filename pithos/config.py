"""Where the data lives, as the entry points learn it: `--data-dir` (the embedded shorthand),
`--blocks URL`, `--catalog URL`, or the same keys in a TOML file given by `--config FILE`.
Flags override the file.  Only entry points (pithos.cli, archipelago.cli) use this module; the
layers below take what it resolves as arguments.

    # pithos.toml
    data_dir = "/var/lib/pithos"                 # local state: roots log, volume deltas
    blocks = "rados://pithos?conf=/etc/ceph/ceph.conf"
    catalog = "postgresql+psycopg://pithos@db.example/pithos"
"""

from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import dataclass

from pithos.core.errors import InvalidArgument

DEFAULT_DATA_DIR = "./data"
KEYS = ("data_dir", "blocks", "catalog")


def add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    """--data-dir, --blocks, --catalog, --config; SUPPRESS defaults, so the flags can be given
    before or after a subcommand without one overwriting the other."""
    parser.add_argument("--data-dir", default=argparse.SUPPRESS,
                        help=f"data directory (default {DEFAULT_DATA_DIR})")
    parser.add_argument("--blocks", default=argparse.SUPPRESS, metavar="URL",
                        help="block store: file:///path or rados://POOL?conf=CEPH.CONF "
                             "(default: DATA_DIR/blocks)")
    parser.add_argument("--catalog", default=argparse.SUPPRESS, metavar="URL",
                        help="catalog database, any SQLAlchemy URL "
                             "(default: SQLite in DATA_DIR)")
    parser.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE",
                        help="TOML file with data_dir, blocks and catalog")


@dataclass(frozen=True)
class Storage:
    data_dir: str
    blocks: str
    catalog: str

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Storage:
        values: dict[str, str] = {}
        path = getattr(args, "config", None)
        if path:
            try:
                with open(path, "rb") as f:
                    doc = tomllib.load(f)
            except OSError as exc:
                raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from None
            except tomllib.TOMLDecodeError as exc:
                raise InvalidArgument(f"{path}: {exc}") from None
            unknown = set(doc) - set(KEYS)
            if unknown:
                raise InvalidArgument(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
            values.update({k: str(v) for k, v in doc.items()})
        for key in KEYS:
            if getattr(args, key, None) is not None:
                values[key] = str(getattr(args, key))
        data_dir = values.get("data_dir", DEFAULT_DATA_DIR)
        blocks = values.get("blocks") or "file://" + os.path.abspath(
            os.path.join(data_dir, "blocks"))
        # (Imported here: the catalog and SQLAlchemy are ~0.3 s of CPU that commands without
        # a data directory, `pithos sync`, would pay on every run.)
        from pithos.catalog import local_url

        catalog = values.get("catalog") or local_url(data_dir)
        return cls(data_dir, blocks, catalog)

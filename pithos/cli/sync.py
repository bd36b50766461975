"""`pithos sync`: keep a local folder and a container in step (pithos.sync does the work).

    pithos sync LOCAL_DIR CONTAINER --auth-url URL --user ACCOUNT:USER --key KEY
                [--watch [--interval S]] [--dry-run] [--quiet]
    pithos sync LOCAL_DIR                  again, with what the folder's state remembers
    pithos sync status [LOCAL_DIR]         what is pending, from the state alone

Credentials also come from ST_AUTH / ST_USER / ST_KEY (the swift CLI's environment); the
first run remembers them in LOCAL_DIR/.pithos-sync/state.sqlite (mode 0600).  Exit status: 0
when the folder and the container agree, 1 when something was left undone (each reason one
line on stderr), 2 for bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pithos.core import gc_tuning
from pithos.sync.progress import Progress
from pithos.sync.remote import Credentials, Remote, RemoteError
from pithos.sync.state import State

if TYPE_CHECKING:
    from pithos.sync.engine import Engine

# (The engine, the scan and the plan are loaded where they are used: a run loads them while
# its login is under way.)

PROGRESS_MIN_BYTES = 8 << 20  # no bar for transfers smaller than this


def add_parser(commands: Any) -> None:
    p = commands.add_parser(
        "sync", help="keep a local folder and a container in step (only missing chunks move)",
        description=__doc__.split("\n\n")[0], epilog="Also: pithos sync status [LOCAL_DIR]")
    p.add_argument("args", nargs="+", metavar="ARG",
                   help="LOCAL_DIR [CONTAINER]; or: status [LOCAL_DIR]")
    p.add_argument("--auth-url", default=os.environ.get("ST_AUTH"),
                   help="tempauth v1.0 URL (default $ST_AUTH, then the folder's state)")
    p.add_argument("--user", default=os.environ.get("ST_USER"), metavar="ACCOUNT:USER",
                   help="default $ST_USER, then the folder's state")
    p.add_argument("--key", default=os.environ.get("ST_KEY"),
                   help="default $ST_KEY, then the folder's state")
    p.add_argument("--watch", action="store_true",
                   help="keep running: sync on every change of the folder and every --interval")
    p.add_argument("--interval", type=float, default=30.0, metavar="S",
                   help="with --watch, ask the server for changes every S seconds (default 30)")
    p.add_argument("--dry-run", action="store_true", help="say what would be done, do nothing")
    p.add_argument("--quiet", "-q", action="store_true", help="print errors only")
    p.set_defaults(func=cmd_sync, no_data=True)


def _err(line: str) -> None:
    print(f"pithos sync: {line}", file=sys.stderr, flush=True)


def cmd_sync(args: argparse.Namespace, _data: object = None) -> int:
    if args.args[0] == "status" and (len(args.args) == 1 or not os.path.isdir("status")):
        if len(args.args) > 2:
            _err("usage: pithos sync status [LOCAL_DIR]")
            return 2
        return cmd_status(args.args[1] if len(args.args) > 1 else ".")
    if len(args.args) > 2:
        _err("usage: pithos sync LOCAL_DIR [CONTAINER] [options]")
        return 2
    folder = args.args[0]
    if not os.path.isdir(folder):
        _err(f"{folder} is not a directory")
        return 2
    gc_tuning.tune_for_throughput()
    try:
        state = State(folder)
    except (sqlite3.Error, OSError) as exc:
        # (A full disk, a read-only folder: one line, as for any other error.)
        _err(f"cannot open the sync state in {folder}: {exc}")
        return 1
    try:
        if not state.lock():
            _err(f"another pithos sync is running on {folder}")
            return 1
        settings = {"container": args.args[1] if len(args.args) > 1 else None,
                    "auth_url": args.auth_url, "user": args.user, "key": args.key}
        for k, v in settings.items():
            if v is None:
                settings[k] = state.get(k)
        absent = [k for k, v in settings.items() if not v]
        if absent:
            _err("missing " + ", ".join(absent).replace("_", "-")
                 + " (give them once; the folder's state remembers them)")
            return 2
        container = settings["container"]
        assert container is not None
        if "/" in container:
            _err("a container name has no '/'")
            return 2
        remembered = state.get("container")
        if remembered and remembered != container:
            _err(f"{folder} is synced with container {remembered}, not {container}")
            return 2
        creds = Credentials(str(settings["auth_url"]), str(settings["user"]),
                            str(settings["key"]))
        remote = Remote(creds, container)
        failed = _login_while(remote, _load_engine)
        if failed is not None:
            _err(str(failed))
            return 1
        from pithos.sync.engine import Engine
        for k, v in settings.items():
            state.set(k, v)
        progress = BarProgress() if sys.stderr.isatty() and not args.quiet else None
        say = (lambda _: None) if args.quiet else (lambda line: print(line, flush=True))
        engine = Engine(state, remote, report=_err, say=say, progress=progress,
                        dry_run=args.dry_run)
        if args.watch and not args.dry_run:
            return _watch(engine, args.interval)
        try:
            agreed = engine.sync_once()
        except RemoteError as exc:
            _err(str(exc))
            return 1
        if not args.dry_run:
            state.set("last_sync", str(time.time()))
            state.set("agreed", "1" if agreed else "0")
        s = engine.stats
        if not args.quiet and not args.dry_run:
            print(f"synced: {s.uploaded} uploaded, {s.downloaded} downloaded, {s.moved} moved, "
                  f"{s.deleted} deleted, {s.conflicts} conflicts; {s.sent_bytes} bytes sent, "
                  f"{s.fetched_bytes} fetched, {s.reused_bytes} reused from the folder",
                  flush=True)
        return 0 if agreed else 1
    finally:
        state.close()


def _load_engine() -> None:
    import pithos.sync.engine  # noqa: F401  (loaded now, named where used)


def _login_while(remote: Remote, work: Callable[[], None]) -> RemoteError | None:
    """Log in on a thread while `work` runs here; the login's failure, if it failed.  (The
    server derives the key from the password, tens of milliseconds, while a run's first
    moments loaded the sync engine's modules one after the other.)"""
    outcome: list[BaseException] = []

    def login() -> None:
        try:
            remote.login()
        except BaseException as exc:  # (handed to the caller's thread)
            outcome.append(exc)

    thread = threading.Thread(target=login, name="pithos-sync-login", daemon=True)
    thread.start()
    try:
        work()
    finally:
        thread.join()
    if outcome:
        if isinstance(outcome[0], RemoteError):
            return outcome[0]
        raise outcome[0]
    return None


def _watch(engine: Engine, interval_s: float) -> int:
    from pithos.sync.watch import watch

    stop = threading.Event()

    def on_signal(_sig: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    with contextlib.suppress(KeyboardInterrupt):
        watch(engine, interval_s, stop, _err)
    return 0


def cmd_status(folder: str) -> int:
    from pithos.sync.plan import TRANSFERS, plan
    from pithos.sync.scan import Ignore, scan

    if not os.path.isdir(os.path.join(folder, ".pithos-sync")):
        _err(f"{folder} has never been synced")
        return 1
    state = State(folder)
    try:
        print(f"folder: {state.folder}")
        print(f"container: {state.get('container')} at {state.get('auth_url')} "
              f"as {state.get('user')}")
        last = state.get("last_sync")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(last))) if last else \
            "never"
        agreed = state.get("agreed") == "1"
        print(f"last sync: {when}" + (", in agreement" if agreed else ", incomplete"
                                      if last else ""))
        base = state.base()
        print(f"synced files: {len(base)}")
        journal = state.journal()
        for path, op, _detail in journal:
            print(f"interrupted: {op} {path}")
        # Pending, against the remote as last seen (no network): a read-only look that still
        # refreshes the files cache, so the next sync hashes nothing twice.
        result = scan(state.folder, state, Ignore(state.folder), lambda line: print(line))
        actions = [a for a in plan(base, result.files, state.remote(), result.unknown)
                   if a.kind in TRANSFERS]
        for a in actions[:50]:
            print(f"pending: {a.describe()}")
        if len(actions) > 50:
            print(f"pending: ... {len(actions) - 50} more")
        if not actions and not journal:
            print("pending: nothing (as of the last look at the server)")
        return 0
    finally:
        state.close()


class BarProgress(Progress):
    """A rich progress bar with bytes and files, shown once a pass's transfers come to 8 MiB
    or more (uploads begun during the scan count from their start: `add`)."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.task: Any = None
        self.files = 0
        self.total_files = 0
        self.total_bytes = 0
        self.done_bytes = 0  # advanced before the bar was shown

    def start(self, total_bytes: int, total_files: int) -> None:
        self.stop()
        self.files, self.total_files = 0, total_files
        self.total_bytes, self.done_bytes = total_bytes, 0
        self._show()

    def add(self, total_bytes: int, total_files: int) -> None:
        self.total_bytes += total_bytes
        self.total_files += total_files
        if self.bar is None:
            self._show()
        else:
            self.bar.update(self.task, total=self.total_bytes,
                            files=f"{self.files}/{self.total_files} files")

    def _show(self) -> None:
        if self.total_bytes < PROGRESS_MIN_BYTES:
            return
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import (
            Progress as RichProgress,
        )

        self.bar = RichProgress(TextColumn("{task.description}"), BarColumn(),
                                DownloadColumn(), TransferSpeedColumn(),
                                TextColumn("{task.fields[files]}"), TimeRemainingColumn(),
                                transient=True)
        self.task = self.bar.add_task("sync", total=self.total_bytes,
                                      completed=self.done_bytes,
                                      files=f"{self.files}/{self.total_files} files")
        self.bar.start()

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, n)
        else:
            self.done_bytes += n

    def file_done(self) -> None:
        self.files += 1
        if self.bar is not None:
            self.bar.update(self.task, files=f"{self.files}/{self.total_files} files")

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

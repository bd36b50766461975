"""`pithos sync --watch`: a pass whenever the folder changes (filesystem events: inotify via
watchdog), and at least every `interval_s` (remote changes come from the change feed, asked
each pass; the pass's scan also catches anything the events missed)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from pithos.sync.engine import Engine
from pithos.sync.remote import RemoteError
from pithos.sync.state import STATE_DIR

DEBOUNCE_S = 0.5  # let a burst of events (an editor's save, a copy) settle into one pass


def watch(engine: Engine, interval_s: float, stop: threading.Event,
          report: Callable[[str], None]) -> None:
    """Sync until `stop` is set.  A server that cannot be reached is reported and retried at
    the next interval, never fatal."""
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers import Observer

    dirty = threading.Event()
    marker = f"/{STATE_DIR}"

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            paths = (str(event.src_path), str(getattr(event, "dest_path", "") or ""))
            if all(marker + "/" in p or p.endswith(marker) or not p for p in paths):
                return  # our own state and temporary files
            if event.event_type in ("opened", "closed_no_write"):
                return  # reads change nothing
            dirty.set()

    observer = Observer()
    observer.schedule(Handler(), engine.folder, recursive=True)
    observer.start()
    try:
        while not stop.is_set():
            dirty.clear()
            try:
                engine.sync_once()
            except RemoteError as exc:
                report(f"{exc} (will retry)")
            deadline = time.monotonic() + interval_s
            while not stop.is_set() and time.monotonic() < deadline:
                if dirty.wait(min(0.5, max(0.0, deadline - time.monotonic()))):
                    time.sleep(DEBOUNCE_S)
                    break
    finally:
        observer.stop()
        observer.join(timeout=10)

"""The progress of a pass's transfers, as the engine reports it: a no-op base, which the CLI
replaces with a bar (its own module, so that the CLI can name it without loading the
engine: pithos.cli.sync loads that while the login is under way)."""

from __future__ import annotations


class Progress:
    """Bytes and files of a pass's transfers; a no-op base that the CLI replaces with a bar.
    `start` begins a pass's count; `add` grows its totals (the uploads begun while the scan
    goes on, then the plan's transfers)."""

    def start(self, total_bytes: int, total_files: int) -> None:
        pass

    def add(self, total_bytes: int, total_files: int) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def file_done(self) -> None:
        pass

    def stop(self) -> None:
        pass

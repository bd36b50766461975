"""The collector's tuning for serve workers and sync runs: what the process holds when it is
called is frozen, young collections are rarer, and cycles made after it are still
collected."""

from __future__ import annotations

import gc
import weakref

from pithos.core import gc_tuning


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_the_start_is_frozen_and_young_collections_are_rarer_yet_cycles_are_collected():
    before = gc.get_threshold()
    try:
        gc.unfreeze()
        gc.set_threshold(700, 10, 10)
        gc_tuning.tune_for_throughput()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (gc_tuning.YOUNG_THRESHOLD, 10, 10)
        # A higher threshold set before (an operator's) is kept.
        gc.set_threshold(10 * gc_tuning.YOUNG_THRESHOLD, 10, 10)
        gc_tuning.tune_for_throughput()
        assert gc.get_threshold()[0] == 10 * gc_tuning.YOUNG_THRESHOLD
        # A cycle made afterwards is collected, by the next collection at the latest.
        a, b = Node(), Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)

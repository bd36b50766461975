"""Upload leases (pithos/objects/leases.py): the catalog row that makes the garbage collector
spare blocks of uploads in flight, published when a process goes busy and cleared after it
has been idle a while."""

import threading
import time

import pytest

from pithos.objects import leases as leases_mod
from pithos.objects.leases import UploadLeases


def wait_for(predicate, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def clear_timers():
    return [t for t in threading.enumerate() if isinstance(t, threading.Timer)]


@pytest.fixture
def quick_clear(monkeypatch):
    monkeypatch.setattr(leases_mod, "IDLE_CLEAR_S", 0.3)


def test_the_row_covers_uploads_in_flight_and_is_cleared_once_idle(catalog, quick_clear):
    leases = UploadLeases(catalog)
    first = time.time()
    with leases.held():
        oldest = catalog.oldest_upload()
        assert oldest is not None and first - 1 <= oldest <= time.time()
        with leases.held():  # a second upload keeps the first one's start
            assert catalog.oldest_upload() == oldest
        assert catalog.oldest_upload() == oldest  # still busy: not cleared
        time.sleep(0.5)
        assert catalog.oldest_upload() == oldest
    assert wait_for(lambda: catalog.oldest_upload() is None)
    with leases.held():  # busy again: published again before the upload goes on
        assert catalog.oldest_upload() is not None


def test_one_clear_timer_for_many_idle_moments(catalog, quick_clear):
    """A server with one client at a time goes idle between every two requests: that arms
    one timer, not one per request."""
    assert wait_for(lambda: not clear_timers())  # (timers of earlier tests have fired)
    leases = UploadLeases(catalog)
    for _ in range(50):
        with leases.held():
            pass
        assert len(clear_timers()) <= 1
    assert wait_for(lambda: catalog.oldest_upload() is None)
    assert wait_for(lambda: not clear_timers())
    # A timer that fires while an upload is in flight leaves the row; the next idle moment
    # arms a new one, which clears it.
    with leases.held():
        pass
    token = leases.begin()
    time.sleep(0.5)
    assert catalog.oldest_upload() is not None and not clear_timers()
    leases.end(token)
    assert len(clear_timers()) == 1
    assert wait_for(lambda: catalog.oldest_upload() is None)

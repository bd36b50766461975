"""A hypothesis state machine drives random edits, deletes and renames on two devices and
syncs them in random order through one live `pithos serve`.  After every sync the device and
the container agree; after syncing both, everything agrees byte for byte; and no sync ever
loses a local edit (what a device wrote since its last sync is still in its folder after it,
under its name or as a conflict copy)."""

from __future__ import annotations

import itertools
import os
import random
import shutil

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test
from sync_helpers import Device, assert_agree, container_files

NAMES = ["a.txt", "b.txt", "d/c.txt", "d/e/f.bin"]
CONTENTS = [b"", b"one", b"two", b"three\n" * 50, random.Random(9).randbytes(200_000),
            random.Random(10).randbytes(200_000)[:150_000] + b"edited"]

_examples = itertools.count()


@pytest.mark.slow
def test_random_edits_on_two_devices_converge(pithos_server, tmp_path):
    class TwoDevices(RuleBasedStateMachine):
        @initialize()
        def setup(self):
            n = next(_examples)
            self.root = tmp_path / f"ex{n}"
            self.container = f"model-{n}"
            self.devices = [Device(pithos_server, self.root / d, self.container)
                            for d in ("a", "b")]
            self.dirty: list[set[str]] = [set(), set()]

        @rule(d=st.integers(0, 1), name=st.sampled_from(NAMES),
              data=st.one_of(st.sampled_from(CONTENTS), st.binary(max_size=64)))
        def write(self, d, name, data):
            dev = self.devices[d]
            if os.path.isdir(dev.path(name)):
                return
            dev.write(name, data)
            self.dirty[d].add(name)

        @rule(d=st.integers(0, 1), pick=st.integers(0, 99))
        def delete(self, d, pick):
            files = sorted(self.devices[d].files())
            if files:
                name = files[pick % len(files)]
                os.unlink(self.devices[d].path(name))
                self.dirty[d].discard(name)

        @rule(d=st.integers(0, 1), pick=st.integers(0, 99), dst=st.sampled_from(NAMES))
        def rename(self, d, pick, dst):
            dev = self.devices[d]
            files = sorted(dev.files())
            if not files or os.path.isdir(dev.path(dst)):
                return
            src = files[pick % len(files)]
            os.makedirs(os.path.dirname(dev.path(dst)), exist_ok=True)
            os.rename(dev.path(src), dev.path(dst))
            if src in self.dirty[d]:
                self.dirty[d].discard(src)
            self.dirty[d].add(dst)

        @rule(d=st.integers(0, 1))
        def sync(self, d):
            dev = self.devices[d]
            before = dev.files()
            edits = [before[n] for n in self.dirty[d] if n in before]
            dev.sync()
            after = list(dev.files().values())
            for data in edits:
                assert data in after, "a sync lost a local edit"
            self.dirty[d] = set()
            assert container_files(pithos_server, self.container) == dev.files()

        @rule()
        def converge(self):
            a, b = self.devices
            for dev in (a, b, a):
                self.sync(self.devices.index(dev))
            assert_agree(pithos_server, a, b, container=self.container)

        def teardown(self):
            if hasattr(self, "devices"):
                self.converge()
                shutil.rmtree(self.root, ignore_errors=True)

    run_state_machine_as_test(TwoDevices, settings=settings(
        max_examples=20, stateful_step_count=15, deadline=None, derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]))

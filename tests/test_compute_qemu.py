"""compute.qemu against real qemu: the tiny guest of scripts/guest-image (a Debian cloud kernel
and a busybox initramfs) boots under TCG (or KVM where it works) from a thin clone served by
`archipelago serve` on 127.0.0.1, writes a marker to its disk, and finds it on the next boot;
the image it was cloned from stays unchanged. Also: the ACPI power button, a hard reset in
place, a seed disk, the forwarded port, and a VM found again from its state directory by a
process that did not start it.

Boot time and qemu's RSS are printed (run with -s to see them), not asserted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from archipelago.testing import ServerProcess
from compute.qemu import FileDisk, NbdDisk, QemuError, Vm, VmSpec, detect_accel, free_port
from compute.seed import write_seed

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20
MARKER_OFFSET = 1 * MiB
BOOT_TIMEOUT_S = 120

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None,
    reason="qemu-system-x86 / qemu-utils not installed (scripts/setup --test)")


def run(*cmd: str, timeout: float = 120) -> str:
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    return proc.stdout.decode()


@pytest.fixture(scope="module")
def guest() -> dict[str, str]:
    """kernel, initrd and disk of the test guest, built once per machine (cached)."""
    out = run(str(REPO / "scripts" / "guest-image"), timeout=600)
    paths = dict(line.split(" ", 1) for line in out.splitlines())
    for key in ("kernel", "initrd", "disk"):
        assert os.path.isfile(paths[key]), paths
    return paths


@pytest.fixture
def data_dir(tmp_path: Path) -> str:
    d = tmp_path / "data"
    d.mkdir()
    return str(d)


@pytest.fixture
def server(data_dir: str):
    srv = ServerProcess(data_dir)
    yield srv
    srv.stop()


@pytest.fixture
def vms():
    """Every VM a test starts is killed at its end, whatever happened."""
    started: list[Vm] = []
    yield started
    for vm in started:
        vm.kill()


def archipelago(data_dir: str, *args: str) -> str:
    return run(sys.executable, "-m", "archipelago.cli", *args, "--data-dir", data_dir)


def store_image(data_dir: str, path: str) -> str:
    """The image's map root (hex), stored with `pithos store put`."""
    out = run(sys.executable, "-m", "pithos.cli.main", "store", "put", path,
              "--data-dir", data_dir)
    return out.split()[0]


def read_export(server: ServerProcess, name: str, dest: Path) -> bytes:
    """An export's whole content, read by a real NBD client."""
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", server.qemu_uri(name), str(dest))
    return dest.read_bytes()


def spec_for(guest: dict[str, str], state_dir: Path, disks: tuple, append: str,
             **kw) -> VmSpec:
    return VmSpec(name=state_dir.name, state_dir=str(state_dir), kernel=guest["kernel"],
                  initrd=guest["initrd"], append=f"quiet {append}", disks=disks, **kw)


def test_marker_reaches_the_thin_clone_and_not_the_image(guest, data_dir, server, vms,
                                                         tmp_path):
    root = store_image(data_dir, guest["disk"])
    archipelago(data_dir, "volume", "clone", "--from-root", root, "image")
    archipelago(data_dir, "volume", "clone", "--from-root", root, "vm1-disk")
    disk = NbdDisk(export="vm1-disk", port=server.port)

    vm = Vm(spec_for(guest, tmp_path / "vm1", (disk,), "pithos.marker=M1 pithos.net=0"))
    vms.append(vm)
    t0 = time.monotonic()
    vm.start()
    written = vm.wait_console(r"PITHOS-MARKER-WRITTEN: (\S+)", BOOT_TIMEOUT_S)
    boot_s = time.monotonic() - t0
    assert written is not None and written.group(1) == "M1", vm.console()
    assert vm.wait_exit(60), "the guest did not power off"
    assert "PITHOS-MARKER-NONE" in vm.console()
    print(f"\nboot to marker written: {boot_s:.2f} s ({vm.accel}: {vm.accel_reason})")

    # A second boot of the same disk sees the first one's marker, and writes its own.
    vm = Vm(spec_for(guest, tmp_path / "vm1", (disk,), "pithos.marker=M2 pithos.net=0"))
    vms.append(vm)
    vm.start()
    assert vm.wait_console("PITHOS-MARKER-WRITTEN: M2", BOOT_TIMEOUT_S), vm.console()
    assert vm.wait_exit(60)
    second = vm.console(vm.console_offset)
    assert "PITHOS-MARKER-OLD: M1" in second, second

    written_disk = read_export(server, "vm1-disk", tmp_path / "vm1.raw")
    assert written_disk[MARKER_OFFSET:MARKER_OFFSET + 16] == b"PITHOS-MARKER:M2"
    # Thin-clone isolation: the image volume and the image's map hold no marker.
    original = Path(guest["disk"]).read_bytes()
    image = read_export(server, "image", tmp_path / "image.raw")
    assert image == original
    assert image[MARKER_OFFSET:MARKER_OFFSET + 4096] == bytes(4096)
    stored = tmp_path / "root.raw"
    run(sys.executable, "-m", "pithos.cli.main", "store", "get", root, "-o", str(stored),
        "--data-dir", data_dir)
    assert stored.read_bytes() == original


STARTER = textwrap.dedent("""
    import json, sys
    from compute.qemu import Vm, VmSpec
    vm = Vm(VmSpec.from_json(json.loads(sys.argv[1])))
    print(vm.start(accel="tcg" if sys.argv[2] == "tcg" else sys.argv[2]))
""")


def test_a_vm_outlives_its_starter_powers_down_and_resets(guest, data_dir, server, vms,
                                                          tmp_path):
    root = store_image(data_dir, guest["disk"])
    archipelago(data_dir, "volume", "clone", "--from-root", root, "vm2-disk")
    seed = write_seed(str(tmp_path / "seed.raw"), {"marker": "FROM-SEED", "after": "wait"},
                      user_data="echo user-data ran as $(id -u)\nexit 3\n")
    ssh_port = free_port()
    spec = spec_for(guest, tmp_path / "vm2",
                    (NbdDisk(export="vm2-disk", port=server.port), FileDisk(seed)),
                    "", ssh_port=ssh_port)
    accel, why = detect_accel()
    # A separate process starts qemu and exits: the VM must not go with it.
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", STARTER, json.dumps(spec.to_json()), accel],
                         capture_output=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr.decode()
    pid = int(out.stdout.split()[0])

    vm = Vm.attach(str(tmp_path / "vm2"))
    vms.append(vm)
    assert vm.spec == spec
    assert vm.pid == pid and vm.is_running()
    assert vm.wait_console("PITHOS-GUEST-READY", BOOT_TIMEOUT_S, offset=0), vm.console()
    ready_s = time.monotonic() - t0
    console = vm.console()
    assert "user-data ran as 0" in console and "PITHOS-USER-DATA-EXIT: 3" in console
    assert "PITHOS-MARKER-WRITTEN: FROM-SEED" in console
    assert vm.status() == "running"
    assert vm.qmp("query-status")["running"] is True
    rss = vm.rss_bytes()
    assert rss is not None and rss > 0
    print(f"\nstart to ready (seed read, user-data run, marker written): {ready_s:.2f} s; "
          f"qemu RSS {rss / MiB:.0f} MiB ({accel}: {why})")

    # The forwarded port reaches the guest (busybox httpd on its port 22).
    with urllib.request.urlopen(f"http://127.0.0.1:{ssh_port}/", timeout=10) as resp:
        assert resp.read() == b"PITHOS-GUEST\n"

    # Another object for the same VM (as a restarted agent would make) drives it too.
    again = Vm.attach(str(tmp_path / "vm2"))
    offset = len(vm.console().encode())
    again.reset()
    assert again.wait_console("PITHOS-GUEST-READY", BOOT_TIMEOUT_S, offset=offset), \
        again.console(offset)
    assert again.pid == pid, "a reset must not restart qemu"
    assert "PITHOS-MARKER-OLD: FROM-SEED" in again.console(offset)

    assert again.powerdown(timeout_s=60), "the guest ignored the power button"
    assert "PITHOS-GUEST-POWERDOWN" in again.console(offset)
    assert not vm.is_running() and vm.status() == "shutoff" and vm.pid is None
    assert not os.path.exists(spec.pidfile)
    with pytest.raises(QemuError):
        vm.qmp("query-status")


def test_a_missing_export_fails_start_with_qemus_reason(guest, server, vms, tmp_path):
    vm = Vm(spec_for(guest, tmp_path / "vm3", (NbdDisk(export="nope", port=server.port),), ""))
    vms.append(vm)
    with pytest.raises(QemuError, match=r"nope|export"):
        vm.start(accel="tcg")
    assert not vm.is_running()


def test_a_killed_vm_reads_as_shutoff_and_starts_again(guest, tmp_path, vms):
    disk = tmp_path / "disk.raw"
    shutil.copyfile(guest["disk"], disk)
    vm = Vm(spec_for(guest, tmp_path / "vm4", (FileDisk(str(disk)),),
                     "pithos.after=wait pithos.net=0", network=False))
    vms.append(vm)
    vm.start()
    assert vm.wait_console("PITHOS-GUEST-BOOTED", BOOT_TIMEOUT_S), vm.console()
    assert vm.kill()
    assert vm.status() == "shutoff"
    # A stale pidfile or socket from the killed qemu does not stop a new start.
    vm.start()
    assert vm.is_running()
    assert vm.quit()


def test_accel_choice_and_bad_specs(tmp_path):
    accel, why = detect_accel()
    assert accel in ("kvm", "tcg") and why
    if os.path.exists("/sys/module/kvm_pvm"):
        assert accel == "tcg"
    with pytest.raises(QemuError, match="too long"):
        Vm(VmSpec(name="x", state_dir=str(tmp_path / ("d" * 120)))).start(accel="tcg")
    with pytest.raises(ValueError):
        write_seed(str(tmp_path / "s"), {"colour": "blue"})
    with pytest.raises(ValueError):
        write_seed(str(tmp_path / "s"), {"marker": "two words"})


def test_powerdown_right_after_start_is_not_lost(guest, tmp_path, vms):
    disk = tmp_path / "disk.raw"
    shutil.copyfile(guest["disk"], disk)
    vm = Vm(spec_for(guest, tmp_path / "vm5", (FileDisk(str(disk)),),
                     "pithos.after=wait pithos.net=0", network=False))
    vms.append(vm)
    vm.start()
    # Pressed before the guest listens: powerdown presses again until it is heard.
    assert vm.powerdown(timeout_s=BOOT_TIMEOUT_S, repeat_s=2), vm.console()
    assert "PITHOS-GUEST-POWERDOWN" in vm.console()


def test_guest_image_is_cached(guest):
    before = {k: os.stat(p).st_mtime_ns for k, p in guest.items()}
    out = run(str(REPO / "scripts" / "guest-image"), timeout=60)
    assert dict(line.split(" ", 1) for line in out.splitlines()) == guest
    assert {k: os.stat(p).st_mtime_ns for k, p in guest.items()} == before

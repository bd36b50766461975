"""Run one VM under qemu-system-x86_64: build its command line, start it so that it outlives
the process that started it, talk QMP to it, find it again after that process restarted.

    spec = VmSpec(name="vm1", state_dir="/var/lib/x/vm1", kernel=".../vmlinuz",
                  initrd=".../initrd.img", append="pithos.marker=M1",
                  disks=(NbdDisk(port=10809, export="vm1-disk"),), ssh_port=2222)
    vm = Vm(spec)
    vm.start()                        # returns once qemu runs (it daemonizes itself)
    vm.wait_console("PITHOS-GUEST-READY", timeout_s=120)
    vm.powerdown(timeout_s=60)        # ACPI power button; True once qemu has exited
    ...
    vm = Vm.attach("/var/lib/x/vm1")  # after a restart of the agent: same VM, no new qemu

Everything a VM needs lives in its state directory: `spec.json` (the spec it was started
with), `qemu.pid` (written and locked by qemu, removed when it exits), `qmp.sock`,
`console.log` (the serial console, appended to across starts) and `qemu.log` (qemu's own
errors at start-up).

Accelerator: `detect_accel` picks KVM where it really boots a kernel and TCG otherwise (on a
kvm-pvm host /dev/kvm opens, and runs real mode, but a stock kernel never boots).

Only the standard library: QMP is a JSON line protocol over a Unix socket, a few dozen lines
here. Nothing here knows about volumes or images: a disk is an NBD export or a file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

QEMU = "qemu-system-x86_64"
# The guest's console on the first serial port; panic=-1 turns a guest panic into a reboot,
# which -no-reboot turns into qemu's exit, so a broken guest never hangs on the host.
# no_timer_check: the kernel's early check that the IO-APIC delivers timer interrupts counts
# ticks over a busy-wait; under TCG on a loaded host (ten guests booting on two cores) too
# few arrived and the guest panicked ("IO-APIC + timer doesn't work!"), as virtual machines'
# kernels are told to skip it for the same reason.
BASE_APPEND = "console=ttyS0 panic=-1 no_timer_check"


class QemuError(Exception):
    """qemu failed to start, a QMP command failed, or the VM is not running."""


# ----------------------------------------------------------------------------------------
# Disks


@dataclass(frozen=True)
class NbdDisk:
    """An NBD export (archipelago serve) seen by the guest as a virtio disk.

    `host`/`port` for TCP, or `socket_path` for a Unix socket. `reconnect_delay_s`: how long
    qemu keeps a guest's I/O waiting for the server to come back if the connection drops (an
    NBD server restart then costs the guest a pause, not an I/O error)."""

    export: str
    host: str = "127.0.0.1"
    port: int = 10809
    socket_path: str | None = None
    readonly: bool = False
    reconnect_delay_s: int = 10

    def blockdev(self, node: str) -> list[str]:
        if self.socket_path:
            server = f"server.type=unix,server.path={_opt(self.socket_path)}"
        else:
            server = f"server.type=inet,server.host={_opt(self.host)},server.port={self.port}"
        proto = (f"driver=nbd,node-name={node}-proto,{server},export={_opt(self.export)},"
                 f"reconnect-delay={self.reconnect_delay_s}")
        return ["-blockdev", proto, "-blockdev", _format_node(node, "raw", self.readonly)]


@dataclass(frozen=True)
class FileDisk:
    """A local image file (raw or qcow2): a seed disk, or a disk for comparisons."""

    path: str
    format: str = "raw"
    readonly: bool = False

    def blockdev(self, node: str) -> list[str]:
        proto = f"driver=file,node-name={node}-proto,filename={_opt(self.path)}"
        if self.readonly:
            proto += ",read-only=on"
        return ["-blockdev", proto, "-blockdev", _format_node(node, self.format, self.readonly)]


Disk = NbdDisk | FileDisk


def _format_node(node: str, fmt: str, readonly: bool) -> str:
    # The format node is what the device sees; cache.direct stays off (NBD has no page cache
    # on this side, and a file disk here is a small seed or a comparison, not a data path).
    # Guest FLUSHes pass through as they come: writeback with flushes honoured.
    return (f"driver={fmt},node-name={node},file={node}-proto"
            + (",read-only=on" if readonly else ""))


def _opt(value: str) -> str:
    """A value inside a qemu option string: commas are doubled, as qemu wants."""
    return value.replace(",", ",,")


# ----------------------------------------------------------------------------------------
# The spec and the command line


@dataclass(frozen=True)
class VmSpec:
    """What to run. `disks[0]` is the guest's /dev/vda, then vdb, ...

    kernel/initrd/append: direct kernel boot (`append` is added after BASE_APPEND); without a
    kernel the first disk boots by itself through the BIOS. `ssh_port`: a host port on
    127.0.0.1 forwarded to the guest's port 22 (user-mode networking; None: the guest gets a
    NIC but nothing forwarded; `network=False`: no NIC). `accel`: "kvm", "tcg" or "auto"
    (`detect_accel`). `no_reboot`: a guest-side reboot or panic makes qemu exit (the agent
    sees the VM stop); `Vm.reset` still resets in place."""

    name: str
    state_dir: str
    disks: tuple[Disk, ...] = ()
    kernel: str | None = None
    initrd: str | None = None
    append: str = ""
    vcpus: int = 1
    ram_mib: int = 256
    ssh_port: int | None = None
    network: bool = True
    accel: str = "auto"
    no_reboot: bool = True
    qemu: str = QEMU
    extra_args: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["disks"] = [dict(kind=type(d).__name__, **dataclasses.asdict(d))
                        for d in self.disks]
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> VmSpec:
        obj = dict(obj)
        disks: list[Disk] = []
        for d in obj.pop("disks", []):
            d = dict(d)
            kind = d.pop("kind")
            disks.append(NbdDisk(**d) if kind == "NbdDisk" else FileDisk(**d))
        obj["extra_args"] = tuple(obj.get("extra_args", ()))
        return cls(disks=tuple(disks), **obj)

    # The state directory's files.
    @property
    def pidfile(self) -> str:
        return os.path.join(self.state_dir, "qemu.pid")

    @property
    def qmp_path(self) -> str:
        return os.path.join(self.state_dir, "qmp.sock")

    @property
    def console_path(self) -> str:
        return os.path.join(self.state_dir, "console.log")

    @property
    def log_path(self) -> str:
        return os.path.join(self.state_dir, "qemu.log")

    @property
    def spec_path(self) -> str:
        return os.path.join(self.state_dir, "spec.json")


def accel_args(accel: str) -> list[str]:
    """The accelerator's options: KVM with the host's CPU, or TCG with one host thread per
    vCPU and every CPU feature TCG emulates."""
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    if accel == "tcg":
        return ["-accel", "tcg,thread=multi", "-cpu", "max"]
    raise ValueError(f"accel must be kvm or tcg, not {accel!r}")


def build_command(spec: VmSpec, accel: str) -> list[str]:
    """The whole qemu command line for `spec` with a resolved accelerator ("kvm"/"tcg").

    -daemonize: qemu forks once it is set up (the disks opened, QMP listening) and the parent
    exits 0, or non-zero with the reason on stderr; the VM then belongs to no session of
    ours, so the agent can die or restart without taking it along."""
    if spec.vcpus < 1 or spec.ram_mib < 16:
        raise ValueError("a VM needs at least 1 vCPU and 16 MiB of RAM")
    if spec.kernel is None and spec.initrd is not None:
        raise ValueError("an initrd needs a kernel")
    cmd = [spec.qemu, "-name", _opt(spec.name)]
    cmd += accel_args(accel)
    cmd += ["-machine", "pc", "-smp", str(spec.vcpus), "-m", str(spec.ram_mib)]
    # No default devices (VGA, floppy, CD-ROM, a monitor on stdio): only what is listed.
    cmd += ["-nodefaults", "-no-user-config", "-display", "none"]
    cmd += ["-chardev", f"file,id=serial0,path={_opt(spec.console_path)},append=on",
            "-serial", "chardev:serial0"]
    cmd += ["-qmp", f"unix:{_opt(spec.qmp_path)},server=on,wait=off"]
    cmd += ["-pidfile", spec.pidfile, "-daemonize"]
    if spec.no_reboot:
        cmd += ["-no-reboot"]
    if spec.kernel is not None:
        cmd += ["-kernel", spec.kernel]
        if spec.initrd is not None:
            cmd += ["-initrd", spec.initrd]
        cmd += ["-append", f"{BASE_APPEND} {spec.append}".strip()]
    for i, disk in enumerate(spec.disks):
        node = f"disk{i}"
        cmd += disk.blockdev(node)
        cmd += ["-device", f"virtio-blk-pci,drive={node}"
                + (",bootindex=1" if i == 0 and spec.kernel is None else "")]
    if spec.network:
        netdev = "user,id=net0"
        if spec.ssh_port is not None:
            netdev += f",hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22"
        # romfile= : no PXE option ROM (the kernel is loaded directly or from the disk; the
        # iPXE package need not be installed).
        cmd += ["-netdev", netdev, "-device", "virtio-net-pci,netdev=net0,romfile="]
    cmd += list(spec.extra_args)
    return cmd


# ----------------------------------------------------------------------------------------
# The accelerator

PROBE_TIMEOUT_S = 20.0


def detect_accel(qemu: str = QEMU, probe_kernel: str | None = None,
                 cache_path: str | None = None) -> tuple[str, str]:
    """("kvm" or "tcg", why). KVM only where it works:

    - /dev/kvm missing or not openable read-write: TCG;
    - the kvm_pvm module loaded (a PVM host: /dev/kvm opens and even runs a BIOS, but a stock
      kernel never gets past its first instructions): TCG;
    - `probe_kernel` given: boot it under KVM without a root (it panics, -no-reboot exits
      qemu) and want its banner on the serial port within PROBE_TIMEOUT_S; else TCG;
    - otherwise KVM.

    With `cache_path`, the probe's answer is kept per host boot and qemu binary (a JSON file;
    a repeat costs a read)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return "tcg", f"/dev/kvm: {exc.strerror}"
    os.close(fd)
    if os.path.exists("/sys/module/kvm_pvm"):
        return "tcg", "kvm-pvm host: stock kernels do not boot under its KVM"
    if probe_kernel is None:
        return "kvm", "/dev/kvm opens"
    key = f"{_boot_id()} {_which(qemu)} {_mtime(qemu)}"
    if cache_path is not None:
        with contextlib.suppress(OSError, ValueError, KeyError):
            with open(cache_path) as f:
                cached = json.load(f)
            if cached["key"] == key:
                return str(cached["accel"]), str(cached["why"]) + " (cached)"
    accel, why = _probe_kvm(qemu, probe_kernel)
    if cache_path is not None:
        tmp = f"{cache_path}.{os.getpid()}.tmp"
        with contextlib.suppress(OSError):
            with open(tmp, "w") as f:
                json.dump({"key": key, "accel": accel, "why": why}, f)
            os.replace(tmp, cache_path)
    return accel, why


def _probe_kvm(qemu: str, kernel: str) -> tuple[str, str]:
    cmd = [qemu, *accel_args("kvm"), "-machine", "pc", "-m", "128", "-nodefaults",
           "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio",
           "-kernel", kernel, "-append", BASE_APPEND]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or b""
        if b"Linux version" in out:
            return "kvm", "probe: the kernel booted under KVM"
        return "tcg", f"probe: no kernel banner under KVM in {PROBE_TIMEOUT_S:.0f} s"
    if b"Linux version" in proc.stdout:
        return "kvm", "probe: the kernel booted under KVM"
    return "tcg", f"probe: qemu -accel kvm failed: {proc.stderr.decode(errors='replace')[-300:]}"


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "?"


def _which(prog: str) -> str:
    import shutil
    return shutil.which(prog) or prog


def _mtime(prog: str) -> int:
    try:
        return int(os.stat(_which(prog)).st_mtime)
    except OSError:
        return 0


# ----------------------------------------------------------------------------------------
# QMP


def qmp_command(path: str, command: str, arguments: dict[str, Any] | None = None,
                timeout_s: float = 10.0) -> Any:
    """Run one QMP command on the socket at `path` and return its "return" value.

    A connection per command: qemu serves one QMP client at a time, so holding one open would
    lock out another process (a restarted agent) for as long. Events that arrive meanwhile
    are skipped. QemuError on an "error" answer, a closed socket or the timeout."""
    deadline = time.monotonic() + timeout_s
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(path)
            reader = sock.makefile("rb")
            _qmp_read(reader, deadline, sock, greeting=True)
            sock.sendall(b'{"execute": "qmp_capabilities"}\n')
            _qmp_read(reader, deadline, sock)
            msg: dict[str, Any] = {"execute": command}
            if arguments:
                msg["arguments"] = arguments
            sock.sendall(json.dumps(msg).encode() + b"\n")
            return _qmp_read(reader, deadline, sock)
    except (OSError, ValueError) as exc:  # socket.timeout is an OSError
        raise QemuError(f"QMP {command} on {path}: {exc}") from None


def _qmp_read(reader: Any, deadline: float, sock: socket.socket,
              greeting: bool = False) -> Any:
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        line = reader.readline()
        if not line:
            raise QemuError("QMP connection closed")
        msg = json.loads(line)
        if greeting and "QMP" in msg:
            return msg["QMP"]
        if "return" in msg:
            return msg["return"]
        if "error" in msg:
            err = msg["error"]
            raise QemuError(f"{err.get('class')}: {err.get('desc')}")
        # An event ({"event": ...}): not the answer.


# ----------------------------------------------------------------------------------------
# A VM


class Vm:
    """One VM: its spec, its qemu process (if running) and its state directory.

    Nothing is held in memory that the state directory does not hold too, so `Vm.attach`
    in another process (a restarted agent) gives an equal object."""

    def __init__(self, spec: VmSpec) -> None:
        self.spec = spec
        self.console_offset = 0  # where the console log stood when this object started qemu
        self.accel: str | None = None
        self.accel_reason = ""

    @classmethod
    def attach(cls, state_dir: str) -> Vm:
        """The VM whose state lives in `state_dir`, running or not (see `is_running`)."""
        with open(os.path.join(state_dir, "spec.json")) as f:
            spec = VmSpec.from_json(json.load(f))
        return cls(spec)

    # --- process ------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """qemu's pid if it runs (the pidfile names a live qemu that owns our QMP socket),
        else None. A stale pidfile (a qemu killed with -9) or a recycled pid reads as None."""
        try:
            with open(self.spec.pidfile) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return None
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            return None
        if state == b"Z":
            return None
        # The same VM: its command line names our QMP socket (guards against a reused pid).
        if not any(self.spec.qmp_path.encode() in a for a in argv):
            return None
        return pid

    def is_running(self) -> bool:
        return self.pid is not None

    def rss_bytes(self) -> int | None:
        """qemu's resident memory, or None if it does not run."""
        pid = self.pid
        if pid is None:
            return None
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return None

    def start(self, accel: str | None = None, timeout_s: float = 60.0) -> int:
        """Start qemu and return its pid once it runs (disks connected, QMP listening).

        `accel` overrides the spec's ("auto" asks `detect_accel`). Writes spec.json first,
        so an agent that dies right after still finds the VM. QemuError if it is already
        running or qemu refuses (its message is in the error and in qemu.log)."""
        spec = self.spec
        if self.is_running():
            raise QemuError(f"VM {spec.name} is already running (pid {self.pid})")
        if len(spec.qmp_path.encode()) > 107:
            raise QemuError(f"state directory {spec.state_dir!r} is too long for a Unix "
                            "socket path (qmp.sock must fit in 107 bytes)")
        os.makedirs(spec.state_dir, exist_ok=True)
        choice = accel or spec.accel
        if choice == "auto":
            choice, self.accel_reason = detect_accel(spec.qemu)
        self.accel = choice
        cmd = build_command(spec, choice)
        _write_atomic(spec.spec_path, json.dumps(spec.to_json(), indent=1))
        for stale in (spec.qmp_path, spec.pidfile):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)
        try:
            self.console_offset = os.path.getsize(spec.console_path)
        except OSError:
            self.console_offset = 0
        with open(spec.log_path, "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(cmd)}\n".encode())
            log.flush()
            try:
                # Its own session: a signal to the agent's process group never reaches qemu.
                proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.PIPE, timeout=timeout_s,
                                      start_new_session=True)
            except subprocess.TimeoutExpired:
                self._kill_from_pidfile()
                raise QemuError(f"qemu for {spec.name} did not start in {timeout_s} s") \
                    from None
            log.write(proc.stderr)
        if proc.returncode != 0:
            raise QemuError(f"qemu for {spec.name} failed (exit {proc.returncode}): "
                            f"{proc.stderr.decode(errors='replace').strip()[-1000:]}")
        pid = self.pid
        if pid is None:
            raise QemuError(f"qemu for {spec.name} started but is gone; see {spec.log_path}")
        return pid

    def _kill_from_pidfile(self) -> None:
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def wait_exit(self, timeout_s: float) -> bool:
        """Wait until qemu has exited; True if it did within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while self.is_running():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    # --- QMP ----------------------------------------------------------------------------

    def qmp(self, command: str, arguments: dict[str, Any] | None = None,
            timeout_s: float = 10.0) -> Any:
        """Any QMP command (see qemu's QMP reference); QemuError if it fails or qemu is not
        running."""
        if not self.is_running():
            raise QemuError(f"VM {self.spec.name} is not running")
        return qmp_command(self.spec.qmp_path, command, arguments, timeout_s)

    def status(self) -> str:
        """"shutoff" if qemu does not run, else QMP's run state ("running", "paused",
        "shutdown", "internal-error", ...)."""
        if not self.is_running():
            return "shutoff"
        try:
            return str(self.qmp("query-status")["status"])
        except QemuError:
            # It exited between the two looks.
            return "shutoff" if not self.is_running() else "unknown"

    def powerdown(self, timeout_s: float = 60.0, repeat_s: float = 5.0) -> bool:
        """Press the ACPI power button and wait for the guest to power off (qemu exits).
        The button is pressed again every `repeat_s`: a press a guest gets before it listens
        (early in its boot) is lost. True if qemu exited within `timeout_s`; the VM is left
        running otherwise (then `quit` or `kill`). A repeat is safe; a VM that does not run
        is already down."""
        deadline = time.monotonic() + timeout_s
        while self.is_running():
            with contextlib.suppress(QemuError):  # it may exit while we ask
                self.qmp("system_powerdown")
            left = deadline - time.monotonic()
            if self.wait_exit(min(repeat_s, max(left, 0))):
                return True
            if time.monotonic() >= deadline:
                return False
        return True

    def reset(self) -> None:
        """A hard reset, in place: the same qemu boots the guest again (the kernel and initrd
        are reloaded). With `no_reboot`, qemu would exit on a reset, so the reboot action of
        this qemu becomes "reset" first, and stays so until it exits: SeaBIOS resets the
        machine once more itself on a warm boot, at a moment nothing here can see, so the
        action cannot safely go back to "shutdown". A guest reboot or panic after a reset()
        therefore restarts the guest in place instead of ending qemu."""
        if self.spec.no_reboot:
            self.qmp("set-action", {"reboot": "reset"})
        self.qmp("system_reset")

    def quit(self, timeout_s: float = 10.0) -> bool:
        """Stop qemu at once (QMP quit: no guest shutdown, but qemu closes its disks: the NBD
        connection ends cleanly). True once it has exited."""
        if not self.is_running():
            return True
        with contextlib.suppress(QemuError):
            self.qmp("quit")
        return self.wait_exit(timeout_s)

    def kill(self, timeout_s: float = 10.0) -> bool:
        """SIGKILL qemu (a pull of the plug) and wait for it to go. True once it has."""
        self._kill_from_pidfile()
        gone = self.wait_exit(timeout_s)
        if gone:
            # qemu removes its pidfile on a clean exit only.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.spec.pidfile)
        return gone

    def stop(self, timeout_s: float = 60.0) -> bool:
        """Graceful stop: the power button, then `quit` and `kill` if the guest does not
        power off within `timeout_s`. True if the guest powered off by itself."""
        if self.powerdown(timeout_s):
            return True
        if not self.quit():
            self.kill()
        return False

    # --- the console --------------------------------------------------------------------

    def console(self, offset: int = 0) -> str:
        """The serial console log from byte `offset` ("" if there is none yet)."""
        try:
            with open(self.spec.console_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def wait_console(self, pattern: str | re.Pattern[str], timeout_s: float,
                     offset: int | None = None) -> re.Match[str] | None:
        """Wait until the console log (from `offset`, default: where it stood when this
        object last started qemu) matches `pattern` (a regex); the match, or None after
        `timeout_s` or once qemu has exited without printing it."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        start = self.console_offset if offset is None else offset
        deadline = time.monotonic() + timeout_s
        while True:
            running = self.is_running()
            m = rx.search(self.console(start))
            if m is not None:
                return m
            if not running or time.monotonic() >= deadline:
                return None
            time.sleep(0.05)


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (for `ssh_port`; qemu cannot report one it picked)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


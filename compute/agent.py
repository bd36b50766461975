"""The compute agent: runs the VMs of one host, each with its disk a thin clone of an image.

One agent per host (or per state directory on one machine). It holds:

- the volumes of its servers' disks (archipelago `Volumes` over the shared block store) and
  an NBD server in its own process (archipelago's `NbdServer`, on a Unix socket in the state
  directory) through which qemu reaches them. In-process rather than an `archipelago serve`
  child: the agent then holds the open volumes, so it snapshots a running server's disk
  (`Volumes.snapshot_open`, with the guest paused by QMP so the disk is quiet) without
  stopping it, and one process has one lifecycle to manage. The cost: while the agent
  restarts, the guests' disk I/O waits (qemu's NBD reconnect-delay) and resumes when the new
  agent serves the socket again; the VMs themselves never stop.
- one state directory per server under `STATE/vms/<server id>/`: `server.json` (what the
  API asked for and the phase of the work: creating, ready, deleting, error) and the files of
  compute.qemu (spec.json, qemu.pid, qmp.sock, console.log), plus the server's seed disk.
- a cache of kernels and ramdisks, `STATE/cache/<map root hex>`: an image's content is named
  by its map root, so a kernel is read from the store once per content, whatever its image.

Crash safety: the intent is recorded before acting. `server.json` says "creating" before the
volume is cloned and "ready" only once qemu runs; an agent that starts and finds "creating"
(it was killed during a create) deletes the half-made volume and marks the server as failed;
"deleting" is finished. qemu runs in a session of its own (compute.qemu), so an agent's exit,
even kill -9, leaves its VMs running; a restarted agent finds them with `Vm.attach`.

Nothing here speaks HTTP: compute.agent_http serves this class and reports to the API.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from archipelago import Volumes
from archipelago.nbd.server import NbdServer
from compute.qemu import FileDisk, NbdDisk, QemuError, Vm, VmSpec, detect_accel, free_port
from compute.seed import KEYS as SEED_KEYS
from compute.seed import write_seed
from pithos.core.errors import Conflict, InvalidArgument, NotFound, PithosError
from pithos.core.hashing import from_hex

log = logging.getLogger("compute.agent")

# How long a stop waits for the guest to power off after the ACPI button (then qemu quits).
STOP_TIMEOUT_S = 60.0
# How long a delete or snapshot waits for qemu's NBD connection to let its volume go.
LEASE_WAIT_S = 15.0


@dataclass(frozen=True)
class Capacity:
    vcpus: int
    ram_mib: int


def host_capacity(vcpus: int | None = None, ram_mib: int | None = None) -> Capacity:
    """What this host offers: the operator's figures, else vCPUs at 16 per core (guests are
    mostly idle: Nova's default ratio) and the RAM less 512 MiB for the host."""
    if vcpus is None:
        vcpus = 16 * (os.cpu_count() or 1)
    if ram_mib is None:
        ram_mib = 1024
        with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    ram_mib = max(int(line.split()[1]) // 1024 - 512, 256)
    return Capacity(vcpus, ram_mib)


_SERVER_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def volume_name(server_id: str) -> str:
    return f"server-{server_id}"


class Agent:
    """The VMs of one state directory. Thread-safe: each server's work runs under its own
    lock, on a thread of its own (`submit`), so a slow stop never delays another server."""

    def __init__(self, state_dir: str, volumes: Volumes, capacity: Capacity,
                 accel: str | None = None, stall_after: str | None = None) -> None:
        """`stall_after`: a test's fault injection ("clone": a create stops for a minute
        after cloning its volume, so the test can kill the agent there)."""
        self.state_dir = os.path.abspath(state_dir)
        self.vms_dir = os.path.join(self.state_dir, "vms")
        self.cache_dir = os.path.join(self.state_dir, "cache")
        os.makedirs(self.vms_dir, exist_ok=True)
        os.makedirs(self.cache_dir, exist_ok=True)
        self.volumes = volumes
        self.volumes.lease_wait_s = LEASE_WAIT_S
        self.capacity = capacity
        self.stall_after = stall_after
        self.accel, self.accel_reason = (accel, "given") if accel else detect_accel()
        self.nbd_path = os.path.join(self.state_dir, "nbd.sock")
        self.nbd: NbdServer | None = None
        self._lock_fd = -1
        self._locks: dict[str, threading.Lock] = {}
        self._tasks: dict[str, str] = {}  # server id -> task in progress
        self._guard = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self.changed: Callable[[], None] = lambda: None  # the reporter's nudge

    # -- start and stop ----------------------------------------------------------------------

    def start(self) -> None:
        """Serve the disks and finish what a previous run left half done. Conflict if
        another agent runs on this state directory (it holds `agent.lock`)."""
        self._lock_fd = os.open(os.path.join(self.state_dir, "agent.lock"),
                                os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise Conflict(f"another compute agent runs on {self.state_dir}") from None
        self.nbd = NbdServer(self.volumes, unix_path=self.nbd_path)
        t = threading.Thread(target=self.nbd.serve_forever, name="nbd", daemon=True)
        t.start()
        for sid in self._server_ids():
            try:
                self._recover(sid)
            except Exception:
                log.exception("recovering server %s failed", sid)

    def close(self) -> None:
        """Stop serving (the VMs go on; their disk I/O waits for the next agent)."""
        for t in list(self._threads):
            t.join(timeout=1)
        if self.nbd is not None:
            self.nbd.stop()
        self.volumes.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # the lock goes last: the next agent finds all closed
            self._lock_fd = -1

    def _recover(self, sid: str) -> None:
        rec = self._read(sid)
        phase = rec.get("phase")
        if phase == "creating":
            # Killed during a create: nothing of it is trusted; its volume goes.
            log.warning("server %s: the create was interrupted; removing its volume", sid)
            self._kill_vm(sid)
            self._delete_volume(rec["volume"])
            self._write(sid, phase="error",
                        fault="the compute agent restarted during the create")
        elif phase == "deleting":
            self._delete_now(sid)

    # -- records -----------------------------------------------------------------------------

    def _dir(self, sid: str) -> str:
        # A server id names a directory: only a UUID's characters, never a path.
        if not _SERVER_ID.fullmatch(sid):
            raise NotFound(f"no server {sid!r} on this agent")
        return os.path.join(self.vms_dir, sid)

    def _server_ids(self) -> list[str]:
        return sorted(n for n in os.listdir(self.vms_dir) if _SERVER_ID.fullmatch(n)
                      and os.path.isfile(os.path.join(self.vms_dir, n, "server.json")))

    def _read(self, sid: str) -> dict[str, Any]:
        try:
            with open(os.path.join(self._dir(sid), "server.json")) as f:
                out: dict[str, Any] = json.load(f)
                return out
        except FileNotFoundError:
            raise NotFound(f"no server {sid} on this agent") from None

    def _write(self, sid: str, **changes: Any) -> dict[str, Any]:
        """Update server.json durably (temporary file, fsync, rename, fsync of the
        directory): the record of an intent is on disk before the act."""
        path = os.path.join(self._dir(sid), "server.json")
        try:
            with open(path) as f:
                rec = json.load(f)
        except FileNotFoundError:
            rec = {}
        rec.update(changes)
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(rec, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(self._dir(sid), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        out: dict[str, Any] = rec
        return out

    def _lock(self, sid: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(sid, threading.Lock())

    def _vm(self, sid: str) -> Vm | None:
        try:
            return Vm.attach(self._dir(sid))
        except (OSError, ValueError):
            return None

    # -- what the API sees -------------------------------------------------------------------

    def state(self, sid: str) -> dict[str, Any]:
        """{"id", "state": building|active|shutoff|error|deleting, "task", "fault",
        "ssh_port"}; NotFound if this agent has no such server."""
        rec = self._read(sid)
        phase = rec.get("phase")
        task = self._tasks.get(sid)
        out: dict[str, Any] = {"id": sid, "task": task, "fault": rec.get("fault"),
                               "ssh_port": rec.get("ssh_port")}
        if phase == "creating":
            out["state"] = "building"
        elif phase == "error":
            out["state"] = "error"
        elif phase == "deleting":
            out["state"] = "deleting"
        else:
            vm = self._vm(sid)
            out["state"] = "active" if vm is not None and vm.is_running() else "shutoff"
        return out

    def states(self) -> list[dict[str, Any]]:
        out = []
        for sid in self._server_ids():
            with contextlib.suppress(NotFound, ValueError, OSError):
                out.append(self.state(sid))
        return out

    def console(self, sid: str, length: int | None = None) -> str:
        self._read(sid)
        try:
            with open(os.path.join(self._dir(sid), "console.log"), "rb") as f:
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""
        if length is not None and length >= 0:
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-length:]) if length else ""
        return str(text)

    # -- work --------------------------------------------------------------------------------

    def submit(self, sid: str, task: str, work: Callable[[], None]) -> None:
        """Run `work` on a thread of its own, as server `sid`'s one task in progress
        (Conflict if it has one)."""
        with self._guard:
            if sid in self._tasks:
                raise Conflict(f"server {sid} is busy ({self._tasks[sid]})")
            self._tasks[sid] = task

        def run() -> None:
            try:
                with self._lock(sid):
                    if os.path.isdir(self._dir(sid)) and self._read(sid).get("fault") \
                            and self._read(sid).get("phase") == "ready":
                        self._write(sid, fault=None)  # the last failure is over
                    work()
            except Exception as exc:
                log.exception("server %s: %s failed", sid, task)
                with contextlib.suppress(Exception):
                    if os.path.isdir(self._dir(sid)):
                        self._write(sid, fault=f"{task} failed: {exc}")
            finally:
                with self._guard:
                    self._tasks.pop(sid, None)
                    self._threads.discard(threading.current_thread())
                self.changed()

        t = threading.Thread(target=run, name=f"{task}-{sid[:8]}", daemon=True)
        with self._guard:
            self._threads.add(t)
        t.start()
        self.changed()

    def create(self, req: dict[str, Any]) -> dict[str, Any]:
        """Record the new server and build it in the background: clone the image's map into
        its volume, fetch its kernel and ramdisk, write its seed, start qemu."""
        sid = str(req.get("id"))
        if not _SERVER_ID.fullmatch(sid):
            raise InvalidArgument("create needs the server's id (a UUID)")
        if os.path.exists(self._dir(sid)):
            raise Conflict(f"server {sid} exists on this agent")
        for key in ("image_root", "disk_bytes", "vcpus", "ram_mib"):
            if key not in req:
                raise InvalidArgument(f"create needs {key}")
        os.makedirs(self._dir(sid))
        self._write(sid, id=sid, phase="creating", volume=volume_name(sid), request=req,
                    created=time.time())
        self.submit(sid, "spawning", lambda: self._build(sid))
        return self.state(sid)

    def _build(self, sid: str) -> None:
        rec = self._read(sid)
        req = rec["request"]
        try:
            t0 = time.monotonic()
            head = self.volumes.clone_root(from_hex(req["image_root"]), rec["volume"],
                                           size=int(req["disk_bytes"]))
            disk_ready_s = time.monotonic() - t0  # what a thin clone costs: no data copied
            log.info("server %s: disk %s cloned (%d bytes) in %.3f s", sid, head.name,
                     head.size, disk_ready_s)
            if self.stall_after == "clone":
                time.sleep(60)
            kernel = self._cached(req["kernel_root"]) if req.get("kernel_root") else None
            initrd = self._cached(req["ramdisk_root"]) if req.get("ramdisk_root") else None
            meta = req.get("metadata") or {}
            seed_values = {k: str(v) for k, v in meta.items() if k in SEED_KEYS}
            seed = write_seed(os.path.join(self._dir(sid), "seed.raw"), seed_values,
                              user_data=req.get("user_data"),
                              public_keys=req.get("public_keys") or ())
            ssh_port = free_port()
            spec = VmSpec(
                name=f"server-{sid}", state_dir=self._dir(sid),
                disks=(NbdDisk(export=rec["volume"], socket_path=self.nbd_path),
                       FileDisk(seed)),
                kernel=kernel, initrd=initrd if kernel else None,
                append=str(req.get("cmdline") or "") if kernel else "",
                vcpus=int(req["vcpus"]), ram_mib=int(req["ram_mib"]), ssh_port=ssh_port)
            Vm(spec).start(accel=self.accel)
        except (PithosError, QemuError, OSError, ValueError) as exc:
            self._write(sid, phase="error", fault=str(exc)[-1000:])
            return
        self._write(sid, phase="ready", ssh_port=ssh_port, launched=time.time(),
                    disk_ready_s=disk_ready_s)

    def _cached(self, root_hex: str) -> str:
        """The content of the map `root_hex` as a file in the cache (read once per root)."""
        root = from_hex(root_hex)
        path = os.path.join(self.cache_dir, root_hex)
        if os.path.exists(path):
            return path
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        mapper = self.volumes.mapper(self.volumes.blocker.block_size)
        with open(tmp, "wb") as f:
            for piece in mapper.read(root):
                f.write(piece)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    def _ready(self, sid: str) -> dict[str, Any]:
        rec = self._read(sid)
        if rec.get("phase") != "ready":
            raise Conflict(f"server {sid} is {rec.get('phase')}: it cannot do that now")
        return rec

    def power(self, sid: str, action: str) -> dict[str, Any]:
        """start, stop, reboot (soft: the guest powers off, then boots again) or hard_reboot
        (qemu quits and starts again at once); in the background."""
        self._ready(sid)
        vm = self._vm(sid)
        running = vm is not None and vm.is_running()
        if action == "start":
            if running:
                raise Conflict(f"server {sid} is running")
            self.submit(sid, "powering-on", lambda: self._start(sid))
        elif action == "stop":
            if not running:
                raise Conflict(f"server {sid} is not running")
            self.submit(sid, "powering-off", lambda: self._stop(sid))
        elif action in ("reboot", "hard_reboot"):
            hard = action == "hard_reboot"

            def reboot() -> None:
                if hard:
                    self._kill_vm(sid)
                else:
                    self._stop(sid)
                self._start(sid)

            self.submit(sid, "rebooting_hard" if hard else "rebooting", reboot)
        else:
            raise InvalidArgument(f"unknown action {action!r}")
        return self.state(sid)

    def _start(self, sid: str) -> None:
        vm = self._vm(sid)
        if vm is None:
            raise QemuError(f"server {sid} has no VM spec")
        if not vm.is_running():
            vm.start(accel=self.accel)

    def _stop(self, sid: str) -> None:
        vm = self._vm(sid)
        if vm is not None:
            vm.stop(STOP_TIMEOUT_S)

    def _kill_vm(self, sid: str) -> None:
        vm = self._vm(sid)
        if vm is not None and vm.is_running() and not vm.quit():
            vm.kill()

    def delete(self, sid: str) -> dict[str, Any]:
        """Power off at once, delete the volume and the state directory (in the background;
        the server leaves the agent's list when done). A repeat is safe."""
        rec = self._read(sid)
        if rec.get("phase") != "deleting":
            with self._guard:
                busy = self._tasks.get(sid)
            if busy == "deleting":
                return self.state(sid)
            # A create or action in progress finishes first (under the server's lock).
        self.submit_delete(sid)
        return {"id": sid, "state": "deleting", "task": "deleting", "fault": None,
                "ssh_port": None}

    def submit_delete(self, sid: str) -> None:
        def work() -> None:
            self._write(sid, phase="deleting")
            self._delete_now(sid)

        with self._guard:
            self._tasks.pop(sid, None)  # a delete overrides a task waiting on its lock
        self.submit(sid, "deleting", work)

    def _delete_now(self, sid: str) -> None:
        rec = self._read(sid)
        self._kill_vm(sid)
        self._delete_volume(rec["volume"])
        shutil.rmtree(self._dir(sid), ignore_errors=True)
        log.info("server %s deleted", sid)

    def _delete_volume(self, name: str) -> None:
        with contextlib.suppress(NotFound):
            self.volumes.delete(name)

    def snapshot(self, sid: str, name: str) -> dict[str, Any]:
        """Freeze the server's disk as snapshot `name` (a volume snapshot: its map is shared
        with the disk, no data copied but what the guest wrote). A running guest is paused
        meanwhile (QMP stop drains its I/O), so the snapshot is of a quiet disk. Returns
        {"root", "size"}. Synchronous: the caller registers the root as an image."""
        rec = self._ready(sid)
        with self._guard:
            if sid in self._tasks:
                raise Conflict(f"server {sid} is busy ({self._tasks[sid]})")
            self._tasks[sid] = "image_snapshot"
        try:
            with self._lock(sid):
                assert self.nbd is not None
                vm = self._vm(sid)
                paused = False
                if vm is not None and vm.is_running():
                    with contextlib.suppress(QemuError):
                        vm.qmp("stop")
                        paused = True
                try:
                    vol = self.nbd.exports.attach(rec["volume"])
                    try:
                        head = self.volumes.snapshot_open(vol, name)
                    finally:
                        self.nbd.exports.detach(vol)
                finally:
                    if paused and vm is not None:
                        with contextlib.suppress(QemuError):
                            vm.qmp("cont")
        finally:
            with self._guard:
                self._tasks.pop(sid, None)
        return {"name": head.name, "root": head.root, "size": head.size}

    def delete_snapshot(self, name: str) -> None:
        head = self.volumes.get(name)
        if not head.readonly:
            raise InvalidArgument(f"{name!r} is a volume, not a snapshot")
        self.volumes.delete(name)


def open_volumes(data_dir: str, blocks_url: str) -> Volumes:
    """The volumes an agent's disks live in (for the entry point, which may not import
    archipelago itself): those of `data_dir` over the block store at `blocks_url`. Agents on
    one machine share the data directory's volumes, so `pithos gc` there sees every disk."""
    return Volumes.at(data_dir, blocks_url, lease_wait_s=LEASE_WAIT_S)

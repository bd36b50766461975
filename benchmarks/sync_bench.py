"""Sync benchmark of issue 24: a ~1 GB mixed data set synced once, then an edit of it synced
again, by `pithos sync` against a live `pithos serve`, by plain Swift PUTs into a CDC
container, and by restic, borg, casync and rsync, in the same run on the same data.

```
.venv/bin/python benchmarks/sync_bench.py [--scale 1.0] [--tools pithos-sync,pithos-put,...]
                                          [--work DIR] [--keep] [--memory as-is|steady]
```

The data set (deterministic, from fixed seeds; `--scale` multiplies every size):
- random files of many sizes (log-uniform, 1 KiB to 24 MiB), ~420 MB;
- files made of shared segments cut at unaligned offsets, ~250 MB;
- compressible text and log files, ~170 MB;
- a 128 MiB VM-like image, ~45% of it zero extents.

The edit: 10% of the files (not the image) get a 1-100 byte insert in the middle, 20 files
are duplicated under new names, 20 renamed, and 64 random 4 KiB writes land in the image.

Figures per tool: the first sync's seconds and MB/s (data set bytes over wall time), and for
the edit: bytes sent and bytes the store grew by.  "Sent" is what crossed the wire for
`pithos sync` (a counting proxy between client and server), rsync's "Total bytes sent"
(delta transfer forced, `--no-whole-file`), the request bodies of the plain PUTs, and for the
backup tools (local repositories) the bytes added to the repository.  "Stored" is the growth
of the store's directory (file sizes): pithos keeps chunks uncompressed, restic, borg and
casync compress theirs.  CPU seconds of the first sync: the client's (the tool's processes,
reaped; pithos-put's client is this process and is not counted) and pithos serve's (every
worker's): on a shared machine the ratio of wall times moves with the load, CPU less so.

The peers are Debian packages (restic, borgbackup, casync, rsync), installed here as root if
absent.  Everything runs on loopback; the server and the proxy are stopped at the end.

`--memory steady` (root): as swift_bench.py's, the VM's free page reporting off and all free
memory host-backed before the first tool runs, restored at exit (vm_memory.py): otherwise
every tool pays a host fault for each page it first touches (~2.7 ms per MiB on the
development VM), the more the more memory it grows into.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import random
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PITHOS = ROOT / ".venv" / "bin" / "pithos"
MiB = 1 << 20
TOOLS = ("pithos-sync", "pithos-put", "restic", "borg", "casync", "rsync")
DEBIAN = {"restic": "restic", "borg": "borgbackup", "casync": "casync", "rsync": "rsync"}


# -- the data set and its edit --------------------------------------------------------------------

def _text(rng: random.Random, size: int) -> bytes:
    """Log-like lines: timestamps, hosts, levels and words from a small vocabulary."""
    words = [bytes(rng.choice("abcdefghijklmnopqrstuvwxyz") * rng.randint(2, 9), "ascii")
             for _ in range(400)]
    levels = (b"INFO", b"WARN", b"DEBUG", b"ERROR")
    out = bytearray()
    t = 1_700_000_000 + rng.randrange(10**6)
    while len(out) < size:
        t += rng.randrange(3)
        line = b" ".join(rng.choices(words, k=rng.randint(4, 14)))
        out += b"%d host%02d %s req=%08x %s\n" % (t, rng.randrange(40), rng.choice(levels),
                                                 rng.getrandbits(32), line)
    return bytes(out[:size])


def _image(rng: random.Random, size: int) -> bytes:
    """A VM-like image: extents of 64 KiB-4 MiB, ~45% of the bytes zero."""
    out = bytearray()
    while len(out) < size:
        n = min(rng.randint(16, 1024) * 4096, size - len(out))
        out += bytes(n) if rng.random() < 0.45 else rng.randbytes(n)
    return bytes(out)


def generate(root: Path, scale: float) -> int:
    """Write the data set under `root`; returns its bytes."""
    rng = random.Random(24)
    root.mkdir(parents=True)
    total = 0

    def write(rel: str, data: bytes) -> None:
        nonlocal total
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        total += len(data)

    budget = int(420e6 * scale)
    i = 0
    while budget > 0:
        n = min(int(2 ** rng.uniform(10, 24.6)), budget)
        write(f"random/{i % 8}/r{i:04d}.bin", rng.randbytes(n))
        budget -= n
        i += 1
    segments = [rng.randbytes(rng.randint(64 * 1024, 4 * MiB)) for _ in range(40)]
    budget = int(250e6 * scale)
    i = 0
    while budget > 0:
        parts = []
        for _ in range(rng.randint(2, 6)):
            seg = rng.choice(segments)
            a = rng.randrange(len(seg) // 2)
            parts.append(seg[a:a + rng.randint(len(seg) // 4, len(seg) - a)])
            parts.append(rng.randbytes(rng.randint(1, 5000)))  # unaligned joins
        data = b"".join(parts)[:budget]
        write(f"shared/s{i:04d}.dat", data)
        budget -= len(data)
        i += 1
    budget = int(170e6 * scale)
    i = 0
    while budget > 0:
        n = min(int(2 ** rng.uniform(12, 23)), budget)
        write(f"logs/{'app' if i % 2 else 'web'}/l{i:04d}.log", _text(rng, n))
        budget -= n
        i += 1
    write("vm/disk.img", _image(rng, int(128 * MiB * scale) // 4096 * 4096))
    return total


def edit(root: Path) -> int:
    """Apply the edit to the tree at `root` (deterministic: same tree, same result); returns
    the bytes of new content it wrote (inserts and image writes)."""
    rng = random.Random(2424)
    files = sorted(p for p in _files(root) if p.name != "disk.img")
    new = 0
    for path in rng.sample(files, len(files) // 10):
        data = path.read_bytes()
        insert = rng.randbytes(rng.randint(1, 100))
        path.write_bytes(data[:len(data) // 2] + insert + data[len(data) // 2:])
        new += len(insert)
    for path in rng.sample(files, min(20, len(files))):
        shutil.copyfile(path, path.with_name("copy-of-" + path.name))
    rest = [p for p in files if p.exists() and not p.name.startswith("copy-of-")]
    for path in rng.sample(rest, min(20, len(rest))):
        path.rename(path.with_name("renamed-" + path.name))
    image = root / "vm" / "disk.img"
    size = image.stat().st_size
    with open(image, "r+b") as f:
        for _ in range(64):
            f.seek(rng.randrange(size // 4096) * 4096)
            f.write(rng.randbytes(4096))
            new += 4096
    return new


def _files(root: Path) -> list[Path]:
    """The data set's files under `root`, without a sync client's hidden state."""
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()
            and not any(part.startswith(".") for part in p.relative_to(root).parts)]


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


# -- a counting proxy ---------------------------------------------------------------------------

class CountingProxy:
    """127.0.0.1:PORT -> 127.0.0.1:target, counting the bytes clients send (the server
    builds its storage URL from the Host header, so clients stay on the proxy)."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.sent = 0
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        # splice(2) through a pipe: the bytes never enter this process.  With a recv and a
        # sendall of each MB the proxy took ~0.3 s of CPU per first sync, on the cores the
        # measured client and server share (~0.1 s now).
        r, w = os.pipe()
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
        try:
            while n := os.splice(src.fileno(), w, 1 << 20):
                if count:
                    with self._lock:
                        self.sent += n
                while n:
                    n -= os.splice(r, dst.fileno(), n)
        except OSError:
            pass
        finally:
            os.close(r)
            os.close(w)
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target), timeout=600)
            server.settimeout(None)
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False),
                             daemon=True).start()

    def close(self) -> None:
        self._stop = True
        self._sock.close()


# -- the tools -----------------------------------------------------------------------------------

@dataclass
class Result:
    tool: str
    first_s: float = 0.0
    first_sent: int = 0
    first_stored: int = 0
    edit_s: float = 0.0
    edit_sent: int = 0
    edit_stored: int = 0
    first_cpu: float = 0.0  # the client's CPU seconds (a tool run as a process; else NaN)
    first_server_cpu: float = 0.0  # pithos serve's, every worker's
    note: str = ""


def run(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout_s: float = 3600) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, cwd=cwd,
                          env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} ...: exit {done.returncode}\n"
                           f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout + done.stderr


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def ensure_packages(tools: list[str]) -> None:
    missing = [DEBIAN[t] for t in tools if t in DEBIAN and shutil.which(t) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"install as root first: apt-get install -y {' '.join(missing)}")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], env)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env)


class Server:
    """`pithos serve` on loopback (benchmarks/pithos_peer.py) with a counting proxy."""

    def __init__(self, work: Path) -> None:
        sys.path.insert(0, str(HERE))
        from pithos_peer import PithosPeer
        from swift_peer import TEST_KEY, TEST_USER

        self.user, self.key = TEST_USER, TEST_KEY
        self.peer = PithosPeer(work, PITHOS, 2)
        self.url, self.token = self.peer.start()
        port = int(self.peer.auth_url.split(":")[2].split("/")[0])
        self.proxy = CountingProxy(port)
        self.auth_url = f"http://127.0.0.1:{self.proxy.port}/auth/v1.0"
        self.data = work / "data"

    def stored(self) -> int:
        """The block store's bytes: chunks and map pages, as files or packed records; not
        the catalog's rows nor the index of packed blocks (packs/index.sqlite*, whose WAL a
        checkpoint shrinks between two runs: the edit's growth came out negative).  The
        backup tools' repositories are counted whole, their indexes with them."""
        return sum(p.stat().st_size for p in (self.data / "blocks").rglob("*")
                   if p.is_file() and not p.name.startswith("index.sqlite"))

    def stop(self) -> None:
        self.proxy.close()
        self.peer.stop()


def pithos_sync(server: Server, folder: Path, container: str) -> None:
    run([str(PITHOS), "sync", str(folder), container, "--auth-url", server.auth_url,
         "--user", server.user, "--key", server.key, "--quiet"])


class PutClient:
    """Plain Swift PUTs (python-requests) of whole files into a CDC container, through
    the proxy; an edit PUTs the files whose size or mtime changed and the new names, and
    DELETEs the names gone."""

    def __init__(self, server: Server, container: str) -> None:
        import requests

        self.s = requests.Session()
        r = self.s.get(server.auth_url, headers={"X-Auth-User": server.user,
                                                 "X-Auth-Key": server.key}, timeout=30)
        r.raise_for_status()
        self.url = r.headers["X-Storage-Url"] + "/" + container
        self.s.headers["X-Auth-Token"] = r.headers["X-Auth-Token"]
        self.s.put(self.url, headers={"X-Container-Policy-Chunking": "cdc"},
                   timeout=30).raise_for_status()
        self.seen: dict[str, tuple[int, int]] = {}
        self.sent = 0

    def sync(self, root: Path) -> None:
        now: dict[str, tuple[int, int]] = {}
        for path in sorted(_files(root)):
            rel = path.relative_to(root).as_posix()
            st = path.stat()
            now[rel] = (st.st_size, st.st_mtime_ns)
            if self.seen.get(rel) != now[rel]:
                with open(path, "rb") as f:
                    self.s.put(f"{self.url}/{rel}", data=f, timeout=600).raise_for_status()
                self.sent += st.st_size
        for rel in set(self.seen) - set(now):
            self.s.delete(f"{self.url}/{rel}", timeout=60).raise_for_status()
        self.seen = now


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--tools", default=",".join(TOOLS))
    p.add_argument("--work", type=Path)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--memory", choices=["as-is", "steady"], default="as-is",
                   help="as-is: the VM's memory as found; steady (root): free page reporting "
                   "off and all free memory host-backed before the first tool, restored at "
                   "exit (vm_memory.py)")
    args = p.parse_args(argv)
    tools = [t for t in args.tools.split(",") if t]
    bad = set(tools) - set(TOOLS)
    if bad:
        p.error(f"unknown tools {sorted(bad)}")
    ensure_packages(tools)
    (HERE / ".bench-work").mkdir(exist_ok=True)
    sys.path.insert(0, str(HERE))
    import room

    # The data set, a copy of it per tool and each tool's store: ~1 GB each at scale 1.
    room.require_disk(args.work or HERE / ".bench-work",
                      int((2 + 2 * len(tools)) * 1.1e9 * args.scale), "sync_bench")
    work = args.work or Path(tempfile.mkdtemp(prefix="sync-", dir=HERE / ".bench-work"))
    servers: dict[str, Server] = {}
    import vm_memory

    memory = None
    try:
        if args.memory == "steady":
            memory = vm_memory.steady()
            print(f"memory: {memory.describe()}", flush=True)
        else:
            print(f"memory: as-is, {vm_memory.describe_order(vm_memory.read_order())}",
                  flush=True)
        data = work / "data"
        t = time.perf_counter()
        size = generate(data, args.scale)
        print(f"data set: {size / 1e6:.0f} MB in {sum(1 for _ in data.rglob('*.*'))} files "
              f"({time.perf_counter() - t:.0f} s to make)", flush=True)
        # Each tool syncs its own copy of the tree (a client keeps state beside or in its
        # folder); the edit is applied to every copy alike.
        copies = {tool: work / f"src-{tool}" for tool in tools}
        for copy in copies.values():
            shutil.copytree(data, copy)
        # A server each: what one stores must not dedup against the other's.
        servers = {tool: Server(work / tool) for tool in tools if tool.startswith("pithos")}
        results = {tool: Result(tool) for tool in tools}
        env = {"RESTIC_PASSWORD": "bench", "BORG_PASSPHRASE": "bench",
               "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes", "BORG_BASE_DIR":
               str(work / "borg-base")}
        put_client = (PutClient(servers["pithos-put"], "put") if "pithos-put" in servers
                      else None)

        def step(tool: str, phase: str) -> None:
            r = results[tool]
            src = copies[tool]
            # Every tool starts with nothing dirty in the page cache: the copies just made
            # (~1 GB each) are otherwise written back during the first tool's run, whose
            # syncs wait for them (a syncfs(2) or a journal commit), and not the later ones'.
            os.sync()
            # CPU of the processes run and reaped meanwhile (the tool), and of the server's.
            ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            server_cpu0 = servers[tool].peer.cpu_seconds() if tool in servers else 0.0
            if tool == "pithos-sync":
                server = servers[tool]
                sent0, stored0 = server.proxy.sent, server.stored()
                s = timed(lambda: pithos_sync(server, src, "sync"))
                sent, stored = server.proxy.sent - sent0, server.stored() - stored0
            elif tool == "pithos-put":
                server = servers[tool]
                assert put_client is not None
                sent0, stored0 = put_client.sent, server.stored()
                s = timed(lambda: put_client.sync(src))
                sent, stored = put_client.sent - sent0, server.stored() - stored0
            elif tool == "rsync":
                dst = work / "rsync-dst"
                out = ""

                def go() -> None:
                    nonlocal out
                    out = run(["rsync", "-a", "--delete", "--no-whole-file", "--stats",
                               f"{src}/", f"{dst}/"])
                stored0 = tree_bytes(dst) if dst.exists() else 0
                s = timed(go)
                m = re.search(r"Total bytes sent: ([\d,.]+)", out)
                sent = int(m.group(1).replace(",", "").replace(".", "")) if m else -1
                stored = tree_bytes(dst) - stored0
            else:
                repo = work / f"repo-{tool}"
                stored0 = tree_bytes(repo) if repo.exists() else 0
                if tool == "restic":
                    if phase == "first":
                        run(["restic", "init", "--repo", str(repo)], env)
                    s = timed(lambda: run(["restic", "backup", "--repo", str(repo), "-q",
                                           "."], env, cwd=src))
                elif tool == "borg":
                    if phase == "first":
                        run(["borg", "init", "--encryption", "none", str(repo)], env)
                    s = timed(lambda: run(["borg", "create", f"{repo}::{phase}", "."], env,
                                          cwd=src))
                else:  # casync: a chunk store shared by the two indexes
                    repo.mkdir(exist_ok=True)
                    s = timed(lambda: run(["casync", "make", f"--store={repo}/store",
                                           str(repo / f"{phase}.caidx"), str(src)]))
                stored = tree_bytes(repo) - stored0
                sent = stored  # a local repository: what is added is what a remote one gets
            ru = resource.getrusage(resource.RUSAGE_CHILDREN)
            # (pithos-put's client is this process, beside the counting proxy: not counted.)
            cpu = (float("nan") if tool == "pithos-put" else
                   ru.ru_utime + ru.ru_stime - ru0.ru_utime - ru0.ru_stime)
            server_cpu = (servers[tool].peer.cpu_seconds() - server_cpu0 if tool in servers
                          else 0.0)
            if phase == "first":
                r.first_s, r.first_sent, r.first_stored = s, sent, stored
                r.first_cpu, r.first_server_cpu = cpu, server_cpu
            else:
                r.edit_s, r.edit_sent, r.edit_stored = s, sent, stored
            print(f"{tool:12s} {phase:5s}: {s:7.1f} s  sent {sent / 1e6:9.2f} MB  "
                  f"stored {stored / 1e6:9.2f} MB  CPU client {cpu:.1f} s server "
                  f"{server_cpu:.1f} s", flush=True)

        for tool in tools:
            step(tool, "first")
        new = 0
        for copy in copies.values():
            new = edit(copy)
        print(f"edit: {new / 1e6:.2f} MB of new content", flush=True)
        for tool in tools:
            step(tool, "edit")
        print("\n| tool | first sync s | first sync MB/s | client CPU s | server CPU s "
              "| edit: sent MB | edit: stored MB |\n|---|---:|---:|---:|---:|---:|---:|")
        for r in results.values():
            print(f"| {r.tool} | {r.first_s:.1f} | {size / 1e6 / max(r.first_s, 1e-9):.0f} | "
                  f"{'n/a' if r.first_cpu != r.first_cpu else f'{r.first_cpu:.1f}'} | "
                  f"{r.first_server_cpu:.1f} | "
                  f"{r.edit_sent / 1e6:.2f} | {r.edit_stored / 1e6:.2f} |")
        if "borg" in results and "pithos-sync" in results:
            ratio = results["borg"].first_s / max(results["pithos-sync"].first_s, 1e-9)
            print(f"\nfirst sync: pithos-sync at {ratio:.2f}x borg's MB/s")
    finally:
        for server in servers.values():
            server.stop()
        if memory is not None:
            vm_memory.restore(memory)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

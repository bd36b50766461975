"""`pithos serve`: the object API (falcon) on gunicorn with gevent workers.

Each worker builds its own services after the fork (its own catalog connections and block store
handles) and does CPU and disk work (hashing, MD5, fsync) on gevent's pool of real threads, so
one request's hashing never stalls the other requests of its worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
from typing import Any

from pithos.catalog.space import RESERVE_BYTES
from pithos.cli.datadir import DataDir
from pithos.config import Storage
from pithos.core.errors import NoSpace
from pithos.core.offload import Offload

log = logging.getLogger("pithos.serve")
REAP_INTERVAL_S = 30.0
# A request body that sends nothing for this long ends in 408 (Swift's proxy client_timeout).
CLIENT_TIMEOUT_S = 60.0
# An idle keep-alive connection is closed after this long; gunicorn's gevent worker bounds the
# wait for a request and the reading of its line and headers by the same timer (so it must
# not be 0: that turns keep-alive off and leaves a half-sent request line unbounded).  Longer
# than a load balancer's usual 60 s idle timeout, so the balancer closes first.
KEEPALIVE_S = 75


def _redacted(url: str) -> str:
    """A database URL without its password, for logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split(":", 1)[0] + ":..."


def build_services(storage: Storage, io_threads: int = 32,
                   client_timeout_s: float | None = CLIENT_TIMEOUT_S,
                   offload: Offload | None = None) -> Any:
    """The API's services over a data directory, for a gevent worker (`offload`: where
    blocking work runs, if not a gevent worker's: a process without gevent's patch that
    calls the app in place, in tests, passes `Offload.threads()`)."""
    from pithos.api.context import Services
    from pithos.identity import Identity
    from pithos.objects.digest import LanePolicy
    from pithos.objects.hashmaps import Hashmaps
    from pithos.objects.names import Limits
    from pithos.objects.service import ObjectService
    from pithos.projects import Projects

    # The composition root's one choice of where blocking work runs: gevent's pool of real
    # threads, shared by the stores, the catalog, MD5 and logins (pithos.core.offload).
    if offload is None:
        offload = Offload.gevent(io_threads)
    data = DataDir(storage, offload=offload)
    catalog = data.catalog()
    # One worker, one event loop: its uploads' MD5s share the multi-buffer lanes.
    # Image uploads converted from qcow2 are spooled beside the data they join.
    objects = ObjectService(catalog, data.mapper, offload=offload, md5_lanes=LanePolicy(),
                            spool_dir=os.path.join(storage.data_dir, "images-tmp"),
                            **_inline_max())
    identity = Identity(catalog, offload=offload)
    return Services(identity=identity, objects=objects, projects=Projects(catalog, identity),
                    limits=Limits(), block_size=data.mapper.block_size,
                    hashmaps=Hashmaps(objects),
                    public_url=os.environ.get("PITHOS_PUBLIC_URL"),
                    ui_secure_cookies=os.environ.get("PITHOS_UI_SECURE_COOKIES") == "1",
                    client_timeout_s=client_timeout_s)


def _inline_max() -> dict[str, int]:
    """PITHOS_INLINE_MAX_BYTES: objects up to this size are kept in their version row
    (docs/design.md, "Small objects inline"; 0 turns it off; default the object service's).
    Checked by `serve` before any worker starts (a worker that cannot start is restarted
    for ever)."""
    from pithos.objects.service import INLINE_LIMIT

    value = os.environ.get("PITHOS_INLINE_MAX_BYTES")
    if value is None:
        return {}
    try:
        found = int(value)
        if not 0 <= found <= INLINE_LIMIT:
            raise ValueError
    except ValueError:
        raise SystemExit(f"pithos serve: PITHOS_INLINE_MAX_BYTES must be a number of bytes "
                         f"from 0 to {INLINE_LIMIT} (got {value!r})") from None
    return {"inline_max_bytes": found}


def _fast_reads() -> bool:
    """PITHOS_FAST_READS=0: every request through the full stack, none answered by the fast
    reads of small objects (pithos.api.fast_read), which answer as it does: for measuring
    them, or for an operator in doubt.  Checked by `serve` before any worker starts."""
    value = os.environ.get("PITHOS_FAST_READS", "1")
    if value not in ("0", "1"):
        raise SystemExit(f"pithos serve: PITHOS_FAST_READS must be 0 or 1 (got {value!r})")
    return value == "1"


def _reaper(services: Any) -> None:
    import gevent

    while True:
        gevent.sleep(REAP_INTERVAL_S)
        try:
            services.objects.reap_expired()
        except Exception:
            log.exception("reaping expired objects failed")
        try:
            # Commissions whose issuer died before resolving them (their lease is over):
            # their reservations go back (pithos.catalog.projects).
            if services.projects is not None:
                services.projects.catalog.reap_commissions()
        except Exception:
            log.exception("reaping expired commissions failed")


def open_catalog_once(storage: Storage) -> None:
    """Open (and create or upgrade) the catalog, and close it: a bad URL, a missing driver or an
    unreachable database is one line from `pithos serve` before gunicorn starts."""
    from pithos.catalog import Catalog

    os.makedirs(storage.data_dir, exist_ok=True)  # an SQLite catalog lives there
    # With its reserve: on a full disk, opening may need the room (pithos/catalog/space.py).
    catalog = Catalog(storage.catalog, reserve_bytes=RESERVE_BYTES)
    try:
        # A server that crashed left commissions nobody will resolve: past their lease, their
        # reservations go back before anyone charges again (the workers' reaper goes on).
        catalog.reap_commissions()
    finally:
        catalog.close()


def show_initial_key(storage: Storage, listen: str) -> None:
    """Once the server listens: on a catalog with no user, create the admin user admin:admin
    and print its key; while that key has never been used to log in, print a new one at each
    start (keys are stored hashed, so the old one cannot be shown again), so a first start
    that failed after printing, or whose output was lost, never leaves the operator without
    credentials.

    Runs in gunicorn's master, before it forks the workers, so it opens the catalog only,
    never the block store: librados in the master would hand its random state to every
    worker, which would then all draw the same RADOS client address, and the OSDs would keep
    resetting one worker's session in favour of another's (every read in flight sent again
    and again)."""
    from pithos.catalog import Catalog
    from pithos.identity import Identity

    catalog = Catalog(storage.catalog, reserve_bytes=RESERVE_BYTES)
    try:
        key = secrets.token_hex(16)  # hex: never starts with "-" (a CLI would read an option)
        try:
            if Identity(catalog).set_initial_key("admin", "admin", key, admin=True) is None:
                return  # the admin's key is in use, or the operator made users of their own
        except NoSpace as exc:
            # Serve anyway: the old key still works, and deletes are how a full disk is
            # emptied (README.md, "A full disk").
            print(f"pithos serve: no new admin key this time: {exc}", file=sys.stderr,
                  flush=True)
            return
        print(f"the admin user of account 'admin':\n"
              f"  auth URL:  http://{listen}/auth/v1.0  (Keystone v3: http://{listen}/v3)\n"
              f"  user:      admin:admin\n"
              f"  key:       {key}\n"
              f"  e.g.: swift -A http://{listen}/auth/v1.0 -U admin:admin -K {key} stat\n"
              f"(a new key is shown at each start until this one is used to log in; "
              f"`pithos user add admin:admin --key NEW --admin` sets one of your own)",
              flush=True)
    finally:
        catalog.close()


# Connections a worker serves at once.  A greenlet each (tens of KiB): many stalled clients
# (whose line, headers or body stop arriving; cut off by the keep-alive and client timeouts)
# must not leave a normal client waiting to be accepted.
WORKER_CONNECTIONS = 8192


def worker_connections() -> int:
    """A worker's cap on open connections: PITHOS_WORKER_CONNECTIONS, else
    WORKER_CONNECTIONS.  At the cap a worker logs one line (pithos.cli.serve_worker) and new
    clients wait in the listen backlog."""
    text = os.environ.get("PITHOS_WORKER_CONNECTIONS")
    if text is None:
        return WORKER_CONNECTIONS
    try:
        value = int(text)
        if value < 1:
            raise ValueError
    except ValueError:
        raise SystemExit(f"pithos serve: PITHOS_WORKER_CONNECTIONS must be a whole number "
                         f"of connections, 1 or more (got {text!r})") from None
    return value


def _raise_open_files_limit() -> None:
    """Each connection is a descriptor: take the hard limit (a shell's soft one is often
    1024, fewer than one worker's connections)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def mount_compute(app: Any, services: Any, storage: Storage, key: str) -> None:
    """The compute API (compute.api) on the object API's app, over compute's own tables and
    the object service's images. pithos.api never imports compute: this entry point joins
    them."""
    from compute.api import mount
    from compute.db import ComputeDb, database_url
    from compute.service import ComputeService, Quota

    db = ComputeDb(database_url(storage.catalog, storage.data_dir))
    # Per-account limits: PITHOS_COMPUTE_QUOTA="instances=20,cores=40,ram_mib=51200".
    quota = {}
    for item in filter(None, os.environ.get("PITHOS_COMPUTE_QUOTA", "").split(",")):
        name, _, value = item.partition("=")
        if name.strip() not in Quota.__dataclass_fields__ or not (
                value.strip().isascii() and value.strip().isdigit()):
            raise SystemExit(f"pithos serve: PITHOS_COMPUTE_QUOTA: bad item {item!r} (use "
                             "instances=N,cores=N,ram_mib=N)")
        quota[name.strip()] = int(value)
    # The projects' quotas on servers, vCPUs, RAM and disk, through the catalog's commissions
    # (compute never imports the catalog): the entry point hands them over.
    from pithos.projects import Commissions

    service = ComputeService(db, services.objects.images, key, Quota(**quota),
                             commissions=Commissions(services.objects.catalog))
    service.resolve_commissions()  # those a crashed server left (this server's are new)
    mount(app, service, services.public_url)


def start_local_agent(storage: Storage, listen: str, key_file: str) -> Any:
    """`pithos serve --compute`'s own agent: a child process on the same data directory,
    reporting to this server. Its VMs outlive it (and this server); the next start finds
    them again."""
    import subprocess

    cmd = [sys.executable, "-m", "pithos.cli.compute", "agent", "--api", f"http://{listen}",
           "--name", os.environ.get("PITHOS_COMPUTE_AGENT_NAME", "local"),
           "--key-file", key_file, "--data-dir", storage.data_dir, "--blocks", storage.blocks,
           "--catalog", storage.catalog]
    # More agent options (e.g. "--ram-mib 1024 --vcpus 4" to offer less than the machine).
    cmd += os.environ.get("PITHOS_COMPUTE_AGENT_ARGS", "").split()
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL)


def _stop_agent(agent: Any) -> None:
    import subprocess

    if agent.poll() is None:
        agent.terminate()
        try:
            agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait(timeout=10)


def serve(storage: Storage, listen: str, workers: int,
          client_timeout_s: float = CLIENT_TIMEOUT_S, keepalive_s: int = KEEPALIVE_S,
          compute: bool = False) -> int:
    """Run the object API until stopped.  A request body's read waits at most
    `client_timeout_s` for the client's next bytes (then 408, and whatever the upload held is
    released); `keepalive_s` bounds an idle connection's wait for its next request and the
    reading of a request's line and headers, together (whole seconds, gunicorn's unit).
    `compute`: the compute API too, and one local agent (a child process) on the data
    directory."""
    from gunicorn.app.base import BaseApplication

    from pithos.cli import serve_balance

    open_catalog_once(storage)
    _raise_open_files_limit()
    connections = worker_connections()
    serve_balance.make_board()  # (before the first fork: the workers share it)
    _inline_max()  # (refused here, not by every worker)
    fast_reads = _fast_reads()
    compute_key = None
    key_file = os.path.join(storage.data_dir, "compute.key")
    if compute:
        from pithos.cli.compute import ensure_key

        compute_key = ensure_key(key_file)
        # Made once here (its tables, its seeded flavors), not by each worker at once.
        from compute.db import ComputeDb, database_url
        ComputeDb(database_url(storage.catalog, storage.data_dir)).close()
    master = os.getpid()
    agent: Any = None

    def when_ready(server: Any) -> None:
        # The socket is bound and the worker class loaded: the server is able to serve.
        print(f"pithos serve: listening on http://{listen} (data directory "
              f"{os.path.abspath(storage.data_dir)}, blocks {storage.blocks}, catalog "
              f"{_redacted(storage.catalog)}, {workers} worker(s))", file=sys.stderr, flush=True)
        show_initial_key(storage, listen)
        nonlocal agent
        if compute:
            agent = start_local_agent(storage, listen, key_file)

    class Application(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in {
                "bind": listen, "workers": workers,
                # gunicorn's gevent worker, which logs when it reaches its cap.
                "worker_class": "pithos.cli.serve_worker.CappedGeventWorker",
                "worker_connections": connections, "timeout": 300,
                "graceful_timeout": 30,
                "keepalive": keepalive_s, "loglevel": "warning", "errorlog": "-",
                "limit_request_line": 8190, "limit_request_field_size": 8190,
                # Any token is a method (Swift answers 405 to one it does not know, and its
                # clients' tests send "GETorHEAD_base"); gunicorn would answer 400.
                "permit_unconventional_http_method": True,
                "proc_name": "pithos-serve", "when_ready": when_ready,
                # Each worker's slot on the board that spreads connections evenly.
                "pre_fork": serve_balance.pre_fork, "child_exit": serve_balance.child_exit,
            }.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            import gevent

            from pithos.api.app import create_app

            services = build_services(storage, client_timeout_s=client_timeout_s)
            if compute_key is not None:
                # `openstack server list` asks the catalog for the identity service too.
                services.endpoints = (*services.endpoints, ("compute", "nova", "/compute/v2.1"),
                                      ("identity", "keystone", "/v3"))
            gevent.spawn(_reaper, services)
            # ETags declared by hashmap uploads, confirmed while the worker's uploads rest.
            gevent.spawn(services.hashmaps.confirmer.run, gevent.sleep)
            app = create_app(services, fast_reads=fast_reads)
            if compute_key is not None:
                mount_compute(app, services, storage, compute_key)
            return app

    try:
        Application().run()
    finally:
        # gunicorn's workers leave through here too (they are forks of this process): only
        # the master stops the agent.
        if agent is not None and os.getpid() == master:
            _stop_agent(agent)
    return 0

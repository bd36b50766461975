"""The compute service: every rule of servers, flavors and key pairs, without HTTP.

The falcon resources (compute.api) translate to and from it. It keeps its rows in
compute.db, reads images through the images interface of the object service (with the
caller's rights: an image another account has not shared is NotFound), places servers with
compute.scheduler and drives agents with compute.agent_http.AgentClient. Agents report the
truth about their VMs; `report` writes it.

Server status (Nova's): BUILD -> ACTIVE <-> SHUTOFF, ACTIVE -> REBOOT / HARD_REBOOT -> ACTIVE,
any -> ERROR (with a fault), DELETED once the agent has removed it (the row goes).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from compute.agent_http import AgentClient
from compute.db import Agent, ComputeDb, Flavor, Keypair, Server, Usage
from compute.scheduler import choose_agent
from pithos.core.errors import (
    BackendError,
    Conflict,
    Forbidden,
    InvalidArgument,
    NotFound,
    PithosError,
)
from pithos.core.hashing import to_hex

log = logging.getLogger("compute.service")
GiB = 1 << 30
MAX_USER_DATA = 64 << 10
MAX_METADATA_ITEMS = 128
# An agent whose last report is older than this is down: no new server goes there.
AGENT_DOWN_S = 30.0
# A server in BUILD that its agent does not list after this long was lost by the agent.
LOST_AFTER_S = 60.0


# How long an issued commission may stay unresolved before the catalog's reaper rejects it:
# long, since compute resolves its own (resolve_commissions: it knows whether the server row
# was made or removed), and a server must not lose its charge to the generic reaper.
COMMISSION_LEASE_S = 24 * 3600.0
# A commission of compute's this old is resolved by resolve_commissions (its issuer died).
RESOLVE_AFTER_S = 15.0


class CommissionsApi(Protocol):
    """What compute needs of pithos.projects.Commissions: the project quota's two-step
    charge (the entry point hands it over; compute never imports the catalog)."""

    def issue(self, project_id: str, provisions: dict[str, int], name: str,
              lease_s: float = ...) -> int: ...

    def accept(self, serial: int) -> bool: ...

    def reject(self, serial: int) -> bool: ...

    def pending(self, name_prefix: str = ...) -> list[Any]: ...


@dataclass(frozen=True)
class Quota:
    """Per account (Nova's defaults, less RAM: one machine runs the try-out)."""

    instances: int = 20
    cores: int = 40
    ram_mib: int = 51200


class ImagesApi(Protocol):
    """What compute needs of pithos.objects.images.Images."""

    def get(self, user: Any, image_id: str) -> Any: ...

    def from_root(self, user: Any, name: str, root: bytes, size: int, *, min_disk: int,
                  min_ram: int, properties: dict[str, str], disk_format: str = "raw",
                  container_format: str = "bare") -> Any: ...


def _user_name(user: Any) -> str:
    return str(getattr(user, "name", None) or getattr(user, "user", ""))


class ComputeService:
    def __init__(self, db: ComputeDb, images: ImagesApi, key: str,
                 quota: Quota | None = None,
                 client: Callable[[str, str], AgentClient] = AgentClient,
                 commissions: CommissionsApi | None = None) -> None:
        """`commissions`: the projects' quotas (None: only the per-account Quota)."""
        self.db = db
        self.images = images
        self.key = key
        self.quota = quota or Quota()
        self._client = client
        self.commissions = commissions
        self._resolved_at = 0.0

    def client(self, agent: Agent | str) -> AgentClient:
        url = agent.url if isinstance(agent, Agent) else self.db.agent(agent).url
        return self._client(url, self.key)

    # -- access ------------------------------------------------------------------------------

    @staticmethod
    def require_user(user: Any) -> Any:
        if user is None:
            from pithos.core.errors import Unauthenticated
            raise Unauthenticated("The request you have made requires authentication.")
        return user

    def server(self, user: Any, server_id: str) -> Server:
        """A server of the caller's account (NotFound for another account's)."""
        self.require_user(user)
        server = self.db.server(server_id)
        if server.account != user.account:
            raise NotFound(f"Instance {server_id} could not be found.")
        return server

    def servers(self, user: Any, all_tenants: bool = False) -> list[Server]:
        self.require_user(user)
        if all_tenants and getattr(user, "admin", False) and user.account == "admin":
            return self.db.servers()
        return self.db.servers(account=user.account)

    # -- flavors -----------------------------------------------------------------------------

    def flavors(self, user: Any) -> list[Flavor]:
        self.require_user(user)
        return self.db.flavors()

    def flavor(self, user: Any, ref: str) -> Flavor:
        self.require_user(user)
        return self.db.flavor(ref)

    # -- key pairs ---------------------------------------------------------------------------

    def create_keypair(self, user: Any, name: str, public_key: str | None) -> Keypair:
        self.require_user(user)
        if not name or len(name) > 255 or not all(c.isalnum() or c in "._- @" for c in name):
            raise InvalidArgument("Keypair name must be 1-255 letters, digits, spaces, "
                                  "'.', '_', '-' or '@'")
        if not public_key:
            # Nova stopped generating key pairs (microversion 2.92): bring your own.
            raise InvalidArgument("a public key is required (openstack keypair create "
                                  "--public-key FILE NAME)")
        parts = public_key.strip().split()
        if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-")):
            raise InvalidArgument("Keypair data is invalid: not an OpenSSH public key")
        try:
            blob = base64.b64decode(parts[1], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgument("Keypair data is invalid: bad base64") from None
        digest = hashlib.md5(blob, usedforsecurity=False).hexdigest()
        fingerprint = ":".join(digest[i:i + 2] for i in range(0, 32, 2))
        return self.db.create_keypair(Keypair(user.account, _user_name(user), name,
                                              public_key.strip(), fingerprint, time.time()))

    def keypairs(self, user: Any) -> list[Keypair]:
        self.require_user(user)
        return self.db.keypairs(user.account, _user_name(user))

    def keypair(self, user: Any, name: str) -> Keypair:
        self.require_user(user)
        return self.db.keypair(user.account, _user_name(user), name)

    def delete_keypair(self, user: Any, name: str) -> None:
        self.require_user(user)
        self.db.delete_keypair(user.account, _user_name(user), name)

    # -- create ------------------------------------------------------------------------------

    def _image(self, user: Any, image_id: str, what: str = "Image") -> Any:
        try:
            image = self.images.get(user, image_id)
        except NotFound:
            raise InvalidArgument(f"{what} {image_id} could not be found.") from None
        if image.status != "active" or image.root is None:
            raise InvalidArgument(f"{what} {image_id} is not active.")
        return image

    def create_server(self, user: Any, name: str, image_ref: str, flavor_ref: str, *,
                      metadata: dict[str, str] | None = None, user_data: str | None = None,
                      key_name: str | None = None) -> Server:
        """Validate, place and start building a server; returns it in BUILD (or ERROR if its
        agent could not be reached). InvalidArgument (400) for bad input, Forbidden (403)
        over quota, Conflict (409) when no agent has room."""
        self.require_user(user)
        if not isinstance(name, str) or not name.strip() or len(name) > 255:
            raise InvalidArgument("Invalid input for field/attribute name.")
        metadata = dict(metadata or {})
        if len(metadata) > MAX_METADATA_ITEMS or not all(
                isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= 255
                and len(v) <= 255 for k, v in metadata.items()):
            raise InvalidArgument("metadata must be at most 128 string keys and values of "
                                  "up to 255 characters")
        try:
            flavor = self.db.flavor(flavor_ref.rstrip("/").rsplit("/", 1)[-1])
        except NotFound:
            raise InvalidArgument(f"Flavor {flavor_ref} could not be found.") from None
        image_id = image_ref.rstrip("/").rsplit("/", 1)[-1]
        image = self._image(user, image_id)
        if image.container_format in ("aki", "ari"):
            raise InvalidArgument(f"Image {image_id} is a kernel or ramdisk: it does not "
                                  "boot by itself")
        props = dict(image.properties or {})
        kernel = ramdisk = None
        if props.get("kernel_id"):
            kernel = self._image(user, props["kernel_id"], "Kernel image")
        if props.get("ramdisk_id"):
            ramdisk = self._image(user, props["ramdisk_id"], "Ramdisk image")
        disk_bytes = flavor.disk_gib * GiB
        size = int(image.size or 0)
        if flavor.disk_gib == 0:
            disk_bytes = -(-size // 512) * 512  # Nova: a 0 GB flavor takes the image's size
        elif size > disk_bytes:
            raise InvalidArgument(f"Flavor's disk is too small for requested image. Flavor "
                                  f"disk is {disk_bytes} bytes, image is {size} bytes.")
        if image.min_disk and flavor.disk_gib and flavor.disk_gib < image.min_disk:
            raise InvalidArgument(f"Flavor's disk is too small for requested image. Flavor "
                                  f"disk is {disk_bytes} bytes, minimum disk is "
                                  f"{image.min_disk * GiB} bytes.")
        if image.min_ram and flavor.ram_mib < image.min_ram:
            raise InvalidArgument("Flavor's memory is too small for requested image. Flavor "
                                  f"has {flavor.ram_mib} MiB, the image wants "
                                  f"{image.min_ram} MiB.")
        decoded = None
        if user_data is not None:
            try:
                decoded = base64.b64decode(user_data, validate=True).decode()
            except (binascii.Error, ValueError, UnicodeDecodeError):
                raise InvalidArgument("User data needs to be valid base 64.") from None
            if len(decoded) > MAX_USER_DATA:
                raise InvalidArgument(f"User data is over {MAX_USER_DATA} bytes.")
        public_keys = []
        if key_name:
            try:
                public_keys.append(self.db.keypair(user.account, _user_name(user),
                                                   key_name).public_key)
            except NotFound:
                raise InvalidArgument("Invalid key_name provided.") from None
        self._check_quota(user.account, flavor)
        now = time.time()
        server = Server(
            id=str(uuid.uuid4()), account=user.account, user=_user_name(user), name=name,
            image_id=image_id, flavor_id=flavor.id, vcpus=flavor.vcpus,
            ram_mib=flavor.ram_mib, disk_gib=flavor.disk_gib, host=None, status="BUILD",
            task_state="scheduling", fault=None, metadata=metadata, key_name=key_name,
            ssh_port=None, created=now, updated=now, launched=None,
            project=getattr(user, "project", None) or user.account)
        # The project's quota: reserved before the row is made, accepted once it is, given
        # back if it is not (a crash in between: resolve_commissions).
        serial = self._issue(server, "create")
        try:
            # The account's quota again, in the placement's transaction: concurrent creates
            # all passed the check above on the same count.
            server = self.db.place_server(server, lambda agents, usage: choose_agent(
                agents, usage, flavor, time.time() - AGENT_DOWN_S),
                admit=lambda mine: self._check_usage(mine, flavor))
        except BaseException:
            self._resolve(serial, False)
            raise
        self._resolve(serial, True)
        assert server.host is not None
        request = {
            "id": server.id, "name": name, "vcpus": flavor.vcpus, "ram_mib": flavor.ram_mib,
            "disk_bytes": max(disk_bytes, -(-size // 512) * 512),
            "image_id": image_id, "image_root": to_hex(image.root),
            "kernel_root": to_hex(kernel.root) if kernel is not None else None,
            "ramdisk_root": to_hex(ramdisk.root) if ramdisk is not None else None,
            # Nova's property for a direct kernel boot's command line.
            "cmdline": props.get("os_command_line", ""),
            "metadata": metadata, "user_data": decoded, "public_keys": public_keys}
        try:
            state = self.client(server.host).call("POST", "/vms", request)
            self._apply(server, state)
        except PithosError as exc:
            self.db.update_server(server.id, status="ERROR", task_state=None,
                                  fault=f"the compute agent refused the server: {exc}")
        return self.db.server(server.id)

    # -- project quotas (commissions) ---------------------------------------------------------

    def _issue(self, server: Server, kind: str) -> int | None:
        """A commission for a server being made (`create`: a charge, QuotaExceeded = 403
        past a limit) or removed (`delete`: a release), named after the server so that
        resolve_commissions can tell, after a crash, whether it happened.  Disk is the
        flavor's (a 0 GB flavor's server, sized to its image, is charged none)."""
        if self.commissions is None or server.project is None:
            return None
        sign = 1 if kind == "create" else -1
        provisions = {"servers": sign, "vcpus": sign * server.vcpus,
                      "ram_mib": sign * server.ram_mib, "disk_gib": sign * server.disk_gib}
        return self.commissions.issue(server.project, provisions,
                                      f"compute:{kind}:{server.id}", COMMISSION_LEASE_S)

    def _resolve(self, serial: int | None, done: bool) -> None:
        if serial is not None and self.commissions is not None:
            (self.commissions.accept if done else self.commissions.reject)(serial)

    def _forget(self, server: Server) -> None:
        """Remove a server's row and release what it held of its project's quota."""
        serial = self._issue(server, "delete")
        self._resolve(serial, self.db.delete_server(server.id))

    def resolve_commissions(self, older_than_s: float = RESOLVE_AFTER_S) -> int:
        """Resolve compute's commissions whose issuer died (older than `older_than_s`):
        a create is accepted if its server's row exists, a delete if it is gone; the other
        ones are rejected.  Returns how many.  Run at start and every RESOLVE_AFTER_S from
        the agents' reports."""
        if self.commissions is None:
            return 0
        done = 0
        for commission in self.commissions.pending("compute:"):
            if commission.created > time.time() - older_than_s:
                continue
            _, kind, server_id = commission.name.split(":", 2)
            try:
                self.db.server(server_id)
                exists = True
            except NotFound:
                exists = False
            self._resolve(commission.id, exists == (kind == "create"))
            done += 1
        return done

    def _check_quota(self, account: str, flavor: Flavor) -> None:
        self._check_usage(self.db.servers(account=account), flavor)

    def _check_usage(self, mine: list[Server], flavor: Flavor) -> None:
        """Forbidden if one more server of `flavor` passes the account's quota, `mine` being
        its servers."""
        used = Usage(sum(s.vcpus for s in mine), sum(s.ram_mib for s in mine))
        q = self.quota
        for what, have, want, limit in (
                ("instances", len(mine), 1, q.instances),
                ("cores", used.vcpus, flavor.vcpus, q.cores),
                ("ram", used.ram_mib, flavor.ram_mib, q.ram_mib)):
            if have + want > limit:
                raise Forbidden(f"Quota exceeded for {what}: Requested {want}, but already "
                                f"used {have} of {limit} {what}")

    # -- actions -----------------------------------------------------------------------------

    def _agent_call(self, server: Server, method: str, path: str,
                    body: dict[str, Any] | None = None, timeout_s: float | None = None) -> Any:
        if server.host is None:
            raise Conflict(f"Instance {server.id} has no host yet.")
        return self.client(server.host).call(method, path, body, timeout_s)

    def action(self, user: Any, server_id: str, action: str) -> Server:
        """start, stop, reboot, hard_reboot; Conflict (409) in a state that refuses it."""
        server = self.server(user, server_id)
        allowed = {"start": ("SHUTOFF",), "stop": ("ACTIVE", "ERROR"),
                   "reboot": ("ACTIVE", "SHUTOFF"), "hard_reboot": ("ACTIVE", "SHUTOFF",
                                                                    "ERROR")}
        if action not in allowed:
            raise InvalidArgument(f"unknown action {action}")
        if server.status not in allowed[action] or server.task_state is not None:
            raise Conflict(f"Cannot '{action}' instance {server_id} while it is in "
                           f"vm_state {server.status.lower()}"
                           + (f", task_state {server.task_state}" if server.task_state
                              else ""))
        state = self._agent_call(server, "POST", f"/vms/{server.id}/action",
                                 {"action": action})
        self._apply(server, state)
        return self.db.server(server.id)

    def console(self, user: Any, server_id: str, length: int | None) -> str:
        server = self.server(user, server_id)
        if server.status == "BUILD" and server.host is None:
            raise Conflict(f"Instance {server_id} is not ready yet.")
        path = f"/vms/{server.id}/console" + (f"?length={length}" if length is not None
                                                else "")
        out = self._agent_call(server, "GET", path)
        return out if isinstance(out, str) else ""

    def delete_server(self, user: Any, server_id: str) -> None:
        server = self.server(user, server_id)
        self.db.update_server(server.id, task_state="deleting")
        if server.host is None:
            self._forget(server)
            return
        try:
            self._agent_call(server, "DELETE", f"/vms/{server.id}")
        except NotFound:
            self._forget(server)  # the agent has none: nothing to clean up
        except BackendError:
            agent = self.db.agent(server.host)
            if agent.heartbeat < time.time() - AGENT_DOWN_S:
                # Its host is down: Nova's local delete. The disk stays on that host until an
                # operator removes it.
                log.warning("server %s deleted while its agent %s is down", server.id,
                            server.host)
                self._forget(server)
                return
            raise

    def snapshot(self, user: Any, server_id: str, name: str,
                 metadata: dict[str, str] | None = None) -> Any:
        """A new image of the server's disk as it is now (no data copied: the image names
        the snapshot's map). Returns the image."""
        server = self.server(user, server_id)
        if not isinstance(name, str) or not name.strip():
            raise InvalidArgument("createImage needs a name")
        if server.status not in ("ACTIVE", "SHUTOFF") or server.task_state is not None:
            raise Conflict(f"Cannot 'createImage' instance {server_id} while it is in "
                           f"vm_state {server.status.lower()}")
        base = None
        with contextlib.suppress(PithosError):
            base = self.images.get(user, server.image_id)
        snap_name = f"server-{server.id}-snap-{uuid.uuid4().hex[:12]}"
        self.db.update_server(server.id, task_state="image_snapshot")
        try:
            snap = self._agent_call(server, "POST", f"/vms/{server.id}/snapshot",
                                    {"name": snap_name}, timeout_s=600)
        finally:
            self.db.update_server(server.id, task_state=None)
        props = {k: v for k, v in (metadata or {}).items() if isinstance(v, str)}
        if base is not None:
            for key in ("kernel_id", "ramdisk_id", "os_command_line"):
                if key in (base.properties or {}):
                    props.setdefault(key, base.properties[key])
        props.update({"image_type": "snapshot", "instance_uuid": server.id,
                      "base_image_ref": server.image_id})
        try:
            image = self.images.from_root(
                user, name, bytes.fromhex(snap["root"]), int(snap["size"]),
                min_disk=server.disk_gib, min_ram=int(getattr(base, "min_ram", 0) or 0),
                properties=props)
        finally:
            # The image names the root now (or failed to): the snapshot head is not needed.
            with contextlib.suppress(PithosError):
                self._agent_call(server, "DELETE", f"/snapshots/{snap['name']}")
        return image

    # -- reports -----------------------------------------------------------------------------

    def report(self, name: str, doc: dict[str, Any]) -> None:
        """An agent's heartbeat: its address, capacity and the state of its VMs."""
        try:
            url = str(doc["url"])
            vcpus, ram = int(doc["vcpus"]), int(doc["ram_mib"])
            vms = {str(v["id"]): v for v in doc.get("vms") or []}
        except (KeyError, TypeError, ValueError):
            raise InvalidArgument("a report needs url, vcpus, ram_mib and vms") from None
        if not url.startswith(("http://", "https://")):
            raise InvalidArgument("the agent's url must be http(s)")
        self.db.put_agent(name, url, vcpus, ram)
        now = time.time()
        if now - self._resolved_at > RESOLVE_AFTER_S:
            self._resolved_at = now
            self.resolve_commissions()
        for server in self.db.servers(host=name):
            state = vms.get(server.id)
            if state is not None:
                self._apply(server, state)
            elif server.task_state == "deleting":
                self._forget(server)
            elif server.status not in ("ERROR",) and now - server.created > LOST_AFTER_S:
                self.db.update_server(server.id, status="ERROR", task_state=None,
                                      fault="the compute agent does not know this server")

    def _apply(self, server: Server, state: dict[str, Any]) -> None:
        """Write what the agent says of a server, if it changed anything."""
        agent_state, task = state.get("state"), state.get("task")
        status = {"building": "BUILD", "active": "ACTIVE", "shutoff": "SHUTOFF",
                  "error": "ERROR"}.get(str(agent_state), server.status)
        if agent_state == "deleting":
            task = "deleting"
        elif server.task_state == "deleting":
            task = "deleting"  # asked of the agent, not yet begun there
        if task in ("rebooting", "rebooting_hard"):
            status = "REBOOT" if task == "rebooting" else "HARD_REBOOT"
        if server.task_state == "image_snapshot" and task is None:
            task = "image_snapshot"
        if agent_state == "building" and task is None:
            task = "spawning"
        fault = state.get("fault") if status == "ERROR" else None
        new = replace(server, status=status, task_state=task, fault=fault,
                      ssh_port=state.get("ssh_port") or server.ssh_port)
        if status == "ACTIVE" and server.launched is None:
            new = replace(new, launched=time.time())
        if new != server:
            self.db.update_server(server.id, status=new.status, task_state=new.task_state,
                                  fault=new.fault, ssh_port=new.ssh_port,
                                  launched=new.launched)

"""The OpenStack Compute API v2.1 subset (Nova) that python-openstackclient uses, on falcon.

Mounted by the entry point onto the object API's app (`mount`); pithos.api never imports
compute. Resources only translate between HTTP and compute.service. The token middleware of
the app has already put the caller (or None) on `req.context.user` for paths under
/compute/.

Microversions: this is the base API, 2.1 (min = max = 2.1). A request asking for another
version gets 406 as from Nova; "latest" is 2.1. Every answer carries
`OpenStack-API-Version: compute 2.1`.

Errors are Nova's JSON: {"itemNotFound": {"message": ..., "code": 404}} and so on; bad input
is a 4xx with a reason, never a 5xx (an agent that cannot be reached is 503, "retry").
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import falcon

from compute.agent_http import KEY_HEADER, check_key
from compute.db import Flavor, Keypair, Server
from compute.service import ComputeService
from pithos.core import errors as e
from pithos.core import json_text

log = logging.getLogger("compute.api")

PREFIX = "/compute"
BASE = "/compute/v2.1"
VERSION = "2.1"
MAX_BODY = 1 << 20

_KINDS = {400: "badRequest", 401: "unauthorized", 403: "forbidden", 404: "itemNotFound",
          405: "badMethod", 406: "notAcceptable", 409: "conflictingRequest",
          413: "overLimit", 503: "serviceUnavailable", 500: "computeFault"}


class NovaError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _status(exc: e.PithosError) -> int:
    for cls, status in ((e.NotFound, 404), (e.Conflict, 409), (e.Forbidden, 403),
                        (e.Unauthenticated, 401), (e.QuotaExceeded, 403),
                        (e.InvalidArgument, 400), (e.BackendError, 503)):
        if isinstance(exc, cls):
            return status
    return 503


def _error(resp: falcon.Response, status: int, message: str) -> None:
    resp.status = falcon.code_to_http_status(status)
    resp.content_type = "application/json"
    resp.text = json.dumps({_KINDS.get(status, "computeFault"):
                            {"message": message, "code": status}})


def _microversion(req: falcon.Request) -> None:
    asked = None
    header = req.get_header("OpenStack-API-Version")
    if header:
        service, _, value = header.strip().partition(" ")
        if service.lower() == "compute":
            asked = value.strip()
    asked = asked or req.get_header("X-OpenStack-Nova-API-Version")
    if asked and asked.lower() != "latest" and asked not in ("2.1", "2.01"):
        raise NovaError(406, f"Version {asked} is not supported by the API. Minimum is 2.1 "
                             "and maximum is 2.1.")


def nova(fn: Callable[..., None]) -> Callable[..., None]:
    """A responder with Nova's headers and errors."""

    @functools.wraps(fn)
    def responder(self: Any, req: falcon.Request, resp: falcon.Response, **kw: Any) -> None:
        resp.set_header("OpenStack-API-Version", f"compute {VERSION}")
        resp.set_header("X-OpenStack-Nova-API-Version", VERSION)
        resp.set_header("Vary", "OpenStack-API-Version, X-OpenStack-Nova-API-Version")
        try:
            _microversion(req)
            fn(self, req, resp, **kw)
        except NovaError as exc:
            _error(resp, exc.status, exc.message)
        except e.PithosError as exc:
            status = _status(exc)
            if status >= 500:
                log.warning("%s %s: %s", req.method, req.path, exc)
            _error(resp, status, str(exc))

    return responder


def _body(req: falcon.Request) -> dict[str, Any]:
    try:
        raw = req.bounded_stream.read(MAX_BODY + 1)
    except e.PithosError:
        raise
    if len(raw) > MAX_BODY:
        raise NovaError(413, "Request is too large.")
    try:
        body = json_text.loads(raw or b"{}")
    except (ValueError, RecursionError):
        raise NovaError(400, "Malformed request body") from None
    if not isinstance(body, dict):
        raise NovaError(400, "The request body must be a JSON object")
    return body


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class Context:
    """What the resources share: the service and where clients reach us."""

    def __init__(self, service: ComputeService, public_url: str | None = None) -> None:
        self.service = service
        self.public_url = public_url

    def base(self, req: falcon.Request) -> str:
        return (self.public_url or req.prefix).rstrip("/") + BASE

    def images_base(self, req: falcon.Request) -> str:
        return (self.public_url or req.prefix).rstrip("/") + "/image"

    def links(self, req: falcon.Request, kind: str, ident: str) -> list[dict[str, str]]:
        base = self.base(req)
        return [{"rel": "self", "href": f"{base}/{kind}/{ident}"},
                {"rel": "bookmark", "href": f"{base.removesuffix('/v2.1')}/{kind}/{ident}"}]


def version_doc(base: str) -> dict[str, Any]:
    return {"id": "v2.1", "status": "CURRENT", "version": VERSION, "min_version": "2.1",
            "updated": "2013-07-23T11:33:21Z",
            "links": [{"rel": "self", "href": f"{base}/v2.1/"}],
            "media-types": [{"base": "application/json",
                             "type": "application/vnd.openstack.compute+json;version=2.1"}]}


class Versions:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    @nova
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"versions": [version_doc(self.ctx.base(req).removesuffix("/v2.1"))]}


class Version:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    @nova
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"version": version_doc(self.ctx.base(req).removesuffix("/v2.1"))}


# -- flavors ---------------------------------------------------------------------------------


def flavor_doc(ctx: Context, req: falcon.Request, f: Flavor, detail: bool = True
               ) -> dict[str, Any]:
    out: dict[str, Any] = {"id": f.id, "name": f.name, "links": ctx.links(req, "flavors", f.id)}
    if detail:
        out.update({"vcpus": f.vcpus, "ram": f.ram_mib, "disk": f.disk_gib, "swap": "",
                    "OS-FLV-EXT-DATA:ephemeral": 0, "OS-FLV-DISABLED:disabled": False,
                    "os-flavor-access:is_public": f.is_public, "rxtx_factor": 1.0})
    return out


class Flavors:
    def __init__(self, ctx: Context, detail: bool) -> None:
        self.ctx, self.detail = ctx, detail

    @nova
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        flavors = self.ctx.service.flavors(req.context.user)
        resp.media = {"flavors": [flavor_doc(self.ctx, req, f, self.detail) for f in flavors]}


class FlavorItem:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    @nova
    def on_get(self, req: falcon.Request, resp: falcon.Response, flavor_id: str) -> None:
        resp.media = {"flavor": flavor_doc(
            self.ctx, req, self.ctx.service.flavor(req.context.user, flavor_id))}


# -- servers ---------------------------------------------------------------------------------

_VM_STATE = {"BUILD": "building", "ACTIVE": "active", "SHUTOFF": "stopped",
             "REBOOT": "active", "HARD_REBOOT": "active", "ERROR": "error"}
_POWER = {"ACTIVE": 1, "REBOOT": 1, "HARD_REBOOT": 1, "SHUTOFF": 4}


def server_doc(ctx: Context, req: falcon.Request, s: Server, detail: bool = True
               ) -> dict[str, Any]:
    out: dict[str, Any] = {"id": s.id, "name": s.name, "links": ctx.links(req, "servers", s.id)}
    if not detail:
        return out
    user = req.context.user
    out.update({
        "status": s.status, "tenant_id": s.account, "user_id": s.user,
        "metadata": s.metadata, "hostId": "", "created": _iso(s.created),
        "updated": _iso(s.updated),
        "image": {"id": s.image_id, "links": [
            {"rel": "bookmark", "href": f"{ctx.images_base(req)}/v2/images/{s.image_id}"}]},
        "flavor": {"id": s.flavor_id, "links": ctx.links(req, "flavors", s.flavor_id)[1:]},
        # User-mode networking: the guest's address is qemu's fixed one; the host reaches its
        # port 22 at 127.0.0.1:<pithos:ssh_port> on the server's host.
        "addresses": ({"user": [{"version": 4, "addr": "10.0.2.15",
                                 "OS-EXT-IPS:type": "fixed"}]}
                      if s.status in ("ACTIVE", "REBOOT", "HARD_REBOOT") else {}),
        "accessIPv4": "", "accessIPv6": "", "progress": 100 if s.status == "ACTIVE" else 0,
        "OS-DCF:diskConfig": "MANUAL", "OS-EXT-AZ:availability_zone": "nova",
        "OS-EXT-STS:task_state": s.task_state,
        "OS-EXT-STS:vm_state": _VM_STATE.get(s.status, "error"),
        "OS-EXT-STS:power_state": _POWER.get(s.status, 0),
        "OS-SRV-USG:launched_at": _iso(s.launched), "OS-SRV-USG:terminated_at": None,
        "key_name": s.key_name, "security_groups": [{"name": "default"}],
        "os-extended-volumes:volumes_attached": [], "config_drive": "",
        "pithos:ssh_port": s.ssh_port,
    })
    if getattr(user, "admin", False):
        out["OS-EXT-SRV-ATTR:host"] = s.host
        out["OS-EXT-SRV-ATTR:hypervisor_hostname"] = s.host
        out["OS-EXT-SRV-ATTR:instance_name"] = f"server-{s.id}"
    if s.status == "ERROR" and s.fault:
        out["fault"] = {"code": 500, "message": s.fault[:255], "created": _iso(s.updated)}
    return out


def _filtered(req: falcon.Request, servers: list[Server]) -> list[Server]:
    name = req.get_param("name")
    status = req.get_param("status")
    image = req.get_param("image")
    flavor = req.get_param("flavor")
    out = []
    for s in servers:
        # Nova matches `name` as a regular expression; a plain substring is what clients
        # (find by name, then exact match on their side) rely on.
        if name and name not in s.name:
            continue
        if status and s.status != status.upper():
            continue
        if image and s.image_id != image:
            continue
        if flavor and s.flavor_id != flavor:
            continue
        out.append(s)
    limit = req.get_param("limit")
    marker = req.get_param("marker")
    if marker:
        ids = [s.id for s in out]
        if marker not in ids:
            raise NovaError(400, f"marker [{marker}] not found")
        out = out[ids.index(marker) + 1:]
    if limit:
        try:
            n = int(limit)
            if n < 0:
                raise ValueError
        except ValueError:
            raise NovaError(400, "limit must be a non-negative integer") from None
        out = out[:n]
    return out


def _image_from_bdm(body: dict[str, Any]) -> None:
    """The one block device mapping supported: the image as the local root disk (what
    `openstack server create --image` sends beside imageRef). Anything else (volumes, swap,
    blank disks) is refused with a reason."""
    if body.get("block_device_mapping"):
        raise NovaError(400, "Block device mappings (v1) are not supported")
    bdms = body.get("block_device_mapping_v2")
    if bdms is None:
        return
    if not isinstance(bdms, list) or len(bdms) > 1:
        raise NovaError(400, "Only one block device mapping is supported: the image as the "
                             "local root disk")
    for bdm in bdms:
        if not isinstance(bdm, dict) or bdm.get("source_type") != "image" \
                or bdm.get("destination_type", "local") != "local" \
                or str(bdm.get("boot_index", 0)) != "0" or not isinstance(bdm.get("uuid"), str):
            raise NovaError(400, "Only the image as the local root disk is supported "
                                 "(source_type image, destination_type local, boot_index 0); "
                                 "volumes and extra disks are not")
        if body.get("imageRef") in (None, ""):
            body["imageRef"] = bdm["uuid"]
        elif str(body["imageRef"]).rstrip("/").rsplit("/", 1)[-1] != bdm["uuid"]:
            raise NovaError(400, "imageRef and the block device mapping name different images")


class ServersDetail:
    """GET /servers/detail (and, through Servers, GET /servers: ids, names and links)."""

    detail = True

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    @nova
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        all_tenants = (req.get_param("all_tenants") or "0").lower() in ("1", "true", "")
        servers = self.ctx.service.servers(req.context.user, all_tenants=all_tenants
                                           if req.get_param("all_tenants") is not None
                                           else False)
        resp.media = {"servers": [server_doc(self.ctx, req, s, self.detail)
                                  for s in _filtered(req, servers)]}



class Servers(ServersDetail):
    detail = False

    @nova
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.ctx.service.require_user(req.context.user)
        body = _body(req).get("server")
        if not isinstance(body, dict):
            raise NovaError(400, "Invalid input: the body needs a 'server' object")
        _image_from_bdm(body)
        for key in ("name", "imageRef", "flavorRef"):
            if not isinstance(body.get(key), str) or not body[key]:
                raise NovaError(400, f"Invalid input for field/attribute {key}: a non-empty "
                                     "string is required")
        count = body.get("min_count", 1)
        if count not in (1, "1") or body.get("max_count", 1) not in (1, "1"):
            raise NovaError(400, "one server per request (min_count and max_count 1)")
        meta = body.get("metadata") or {}
        if not isinstance(meta, dict):
            raise NovaError(400, "Invalid input for field/attribute metadata")
        user_data = body.get("user_data")
        if user_data is not None and not isinstance(user_data, str):
            raise NovaError(400, "User data needs to be valid base 64.")
        key_name = body.get("key_name")
        if key_name is not None and not isinstance(key_name, str):
            raise NovaError(400, "Invalid key_name provided.")
        server = self.ctx.service.create_server(
            req.context.user, body["name"], body["imageRef"], body["flavorRef"],
            metadata=meta, user_data=user_data, key_name=key_name)
        resp.status = falcon.HTTP_202
        resp.set_header("Location", f"{self.ctx.base(req)}/servers/{server.id}")
        resp.media = {"server": {"id": server.id,
                                 "links": self.ctx.links(req, "servers", server.id),
                                 "OS-DCF:diskConfig": "MANUAL",
                                 "security_groups": [{"name": "default"}],
                                 "adminPass": ""}}


class ServerItem:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    @nova
    def on_get(self, req: falcon.Request, resp: falcon.Response, server_id: str) -> None:
        server = self.ctx.service.server(req.context.user, server_id)
        resp.media = {"server": server_doc(self.ctx, req, server)}

    @nova
    def on_delete(self, req: falcon.Request, resp: falcon.Response, server_id: str) -> None:
        self.ctx.service.delete_server(req.context.user, server_id)
        resp.status = falcon.HTTP_204


class ServerAction:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    @nova
    def on_post(self, req: falcon.Request, resp: falcon.Response, server_id: str) -> None:
        service = self.ctx.service
        service.require_user(req.context.user)
        body = _body(req)
        if len(body) != 1:
            raise NovaError(400, "An action body names exactly one action")
        (name, arg), = body.items()
        user = req.context.user
        resp.status = falcon.HTTP_202
        if name in ("os-start", "os-stop"):
            service.action(user, server_id, name[3:])
        elif name == "reboot":
            kind = (arg or {}).get("type", "SOFT") if isinstance(arg, dict) else None
            if not isinstance(kind, str) or kind.upper() not in ("SOFT", "HARD"):
                raise NovaError(400, "reboot type must be SOFT or HARD")
            service.action(user, server_id,
                           "hard_reboot" if kind.upper() == "HARD" else "reboot")
        elif name == "os-getConsoleOutput":
            length = (arg or {}).get("length") if isinstance(arg, dict) else None
            if length is not None:
                try:
                    length = int(length)
                except (TypeError, ValueError, OverflowError):
                    raise NovaError(400, "length must be an integer") from None
                if length < -1:
                    raise NovaError(400, "length must be -1 or more")
                if length == -1:
                    length = None
            resp.status = falcon.HTTP_200
            resp.media = {"output": service.console(user, server_id, length)}
        elif name == "createImage":
            if not isinstance(arg, dict) or not isinstance(arg.get("name"), str):
                raise NovaError(400, "createImage needs a name")
            meta = arg.get("metadata") or {}
            if not isinstance(meta, dict):
                raise NovaError(400, "Invalid input for field/attribute metadata")
            image = service.snapshot(user, server_id, arg["name"], meta)
            resp.set_header("Location", f"{self.ctx.images_base(req)}/v2/images/{image.id}")
            resp.media = {"image_id": image.id}
        else:
            raise NovaError(400, f"There is no such action: {name}")


# -- key pairs -------------------------------------------------------------------------------


def keypair_doc(kp: Keypair, detail: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"name": kp.name, "public_key": kp.public_key,
                           "fingerprint": kp.fingerprint}
    if detail:
        out.update({"user_id": kp.user, "created_at": _iso(kp.created), "deleted": False,
                    "deleted_at": None, "updated_at": None, "id": 0})
    return out


class Keypairs:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    @nova
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"keypairs": [{"keypair": keypair_doc(kp)}
                                   for kp in self.ctx.service.keypairs(req.context.user)]}

    @nova
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.ctx.service.require_user(req.context.user)
        body = _body(req).get("keypair")
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise NovaError(400, "Invalid input: the body needs a 'keypair' with a name")
        public_key = body.get("public_key")
        if public_key is not None and not isinstance(public_key, str):
            raise NovaError(400, "public_key must be a string")
        kp = self.ctx.service.create_keypair(req.context.user, body["name"], public_key)
        resp.media = {"keypair": keypair_doc(kp) | {"user_id": kp.user}}


class KeypairItem:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    @nova
    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        kp = self.ctx.service.keypair(req.context.user, name)
        resp.media = {"keypair": keypair_doc(kp, detail=True)}

    @nova
    def on_delete(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        self.ctx.service.delete_keypair(req.context.user, name)
        resp.status = falcon.HTTP_202


# -- agents' reports -------------------------------------------------------------------------


class AgentReport:
    """PUT /compute/internal/agents/NAME: an agent's registration and heartbeat, with the
    deployment's compute key (not a user's token)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    @nova
    def on_put(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        if not check_key(req.get_header(KEY_HEADER), self.ctx.service.key):
            raise NovaError(401, "a valid X-Compute-Key is required")
        if not name or len(name) > 255:
            raise NovaError(400, "bad agent name")
        self.ctx.service.report(name, _body(req))
        resp.media = {"agent": name}


def mount(app: falcon.App[Any, Any], service: ComputeService,
          public_url: str | None = None) -> None:
    """Add the compute routes to `app` (the object API's, with its token middleware)."""
    ctx = Context(service, public_url)
    app.add_route(PREFIX, Versions(ctx))
    app.add_route(PREFIX + "/", Versions(ctx))
    app.add_route(BASE, Version(ctx))
    app.add_route(BASE + "/", Version(ctx))
    app.add_route(BASE + "/flavors", Flavors(ctx, detail=False))
    app.add_route(BASE + "/flavors/detail", Flavors(ctx, detail=True))
    app.add_route(BASE + "/flavors/{flavor_id}", FlavorItem(ctx))
    app.add_route(BASE + "/servers", Servers(ctx))
    app.add_route(BASE + "/servers/detail", ServersDetail(ctx))
    app.add_route(BASE + "/servers/{server_id}", ServerItem(ctx))
    app.add_route(BASE + "/servers/{server_id}/action", ServerAction(ctx))
    app.add_route(BASE + "/os-keypairs", Keypairs(ctx))
    app.add_route(BASE + "/os-keypairs/{name}", KeypairItem(ctx))
    app.add_route(PREFIX + "/internal/agents/{name}", AgentReport(ctx))

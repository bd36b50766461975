"""The Keystone v3 subset python-openstackclient needs with projects, and Astakos' quota view.

- `POST /v3/auth/tokens`: password login, scoped to a project by name or id (domain
  "Default"), or to the user's home project; the token's catalog lists object-store (the
  user's account), image and compute.  `GET`/`HEAD` validate a token (X-Subject-Token) for
  its own user or a cloud admin; `DELETE` revokes one.
- `GET /v3/projects` (a member's projects; every project for a cloud admin), `POST` (a cloud
  admin makes one), `GET /v3/projects/{id}`, `GET /v3/auth/projects`,
  `GET /v3/users/{id}/projects`, `GET /v3/users` and `/v3/users/{id}` (oneself; anyone for
  a cloud admin), `POST /v3/users/{id}/password`, and member assignment as Keystone's role
  assignment: `PUT`/`DELETE /v3/projects/{id}/users/{user}/roles/{role}`.
- `GET /account/v1.0/quotas`: per project of the caller, each resource's limit, usage and
  pending charges (Astakos); `PUT /account/v1.0/projects/{id}/quotas` sets limits.

These resources read the token themselves (X-Auth-Token): what another user, another
project's member or nobody asks for answers 401 (no or a bad token), 403 (not a cloud admin)
or 404 (not visible), naming nothing.  The rules live in pithos.projects.
"""

from __future__ import annotations

import time
from typing import Any

import falcon

from pithos.api.context import Services
from pithos.api.errors import HTTPStatusError
from pithos.api.http import iso_date, json_body
from pithos.api.paths import base_url, storage_url
from pithos.core.errors import InvalidArgument
from pithos.projects import Holding, Project, Projects, UserInfo, is_cloud_admin, user_ref

DOMAIN = {"id": "default", "name": "Default"}
MAX_BODY = 65536


def _projects(services: Services) -> Projects:
    found = getattr(services, "projects", None)
    if found is None:  # Services made without one (tests): the same rules over the catalog
        found = Projects(services.identity.catalog, services.identity)
    return found


def _caller(services: Services, req: falcon.Request) -> UserInfo:
    token = req.get_header("X-Auth-Token")
    if not token and req.context.user is not None:
        return req.context.user  # the web UI's session (TokenMiddleware checked its CSRF)
    if not token:
        raise HTTPStatusError(401, "The request you have made requires authentication.")
    user = services.identity.authenticate(token)
    if user is None:
        raise HTTPStatusError(401, "The request you have made requires authentication.")
    return user


def _body(req: falcon.Request) -> dict[str, Any]:
    body = json_body(req, MAX_BODY)
    if not isinstance(body, dict):
        raise HTTPStatusError(400, "the body must be a JSON object")
    return body


def _default_domain(doc: Any) -> bool:
    """Whether a user's or project's domain is absent or the one domain, Default."""
    if doc is None:
        return True
    if not isinstance(doc, dict):
        raise TypeError
    return bool(doc.get("id", "default") == "default" and doc.get("name", "Default") == "Default")


def project_doc(services: Services, req: falcon.Request, project: Project) -> dict[str, Any]:
    return {"id": project.id, "name": project.name, "description": project.description,
            "domain_id": "default", "enabled": True, "is_domain": False, "parent_id": "default",
            "tags": [], "options": {},
            "links": {"self": f"{base_url(services, req)}/v3/projects/{project.id}"}}


def user_doc(services: Services, req: falcon.Request, user: UserInfo) -> dict[str, Any]:
    ident = user_ref(user)
    return {"id": ident, "name": user.name, "domain_id": "default", "enabled": True,
            "default_project_id": user.account, "password_expires_at": None, "options": {},
            "links": {"self": f"{base_url(services, req)}/v3/users/{ident}"}}


def _catalog_entry(kind: str, name: str, url: str) -> dict[str, Any]:
    """One service of a Keystone token's catalog, reached at `url` on every interface."""
    return {"type": kind, "name": name, "id": f"pithos-{kind}",
            "endpoints": [{"id": f"pithos-{kind}-{iface}", "interface": iface,
                           "region": "RegionOne", "region_id": "RegionOne", "url": url}
                          for iface in ("public", "internal", "admin")]}


def token_doc(services: Services, req: falcon.Request, user: UserInfo, expires: float,
              issued: float) -> dict[str, Any]:
    project = user.project or user.account
    found = _projects(services).lookup(project)
    name = found.name if found is not None else project
    role = "admin" if user.admin and user.project is None else "member"
    base = base_url(services, req)
    return {"token": {
        "methods": ["password"], "expires_at": iso_date(expires) + "Z",
        "issued_at": iso_date(issued) + "Z",
        "user": {"id": user_ref(user), "name": user.name, "domain": DOMAIN,
                 "password_expires_at": None},
        "project": {"id": project, "name": name, "domain": DOMAIN},
        "roles": [{"id": role, "name": role}],
        "catalog": [
            _catalog_entry("object-store", "swift", storage_url(services, req, user.account)),
            *(_catalog_entry(kind, kind_name, base + path)
              for kind, kind_name, path in services.endpoints),
            _catalog_entry("identity", "keystone", base + "/v3")]}}


class KeystoneTokens:
    """/v3/auth/tokens: log in (POST), validate (GET, HEAD) and revoke (DELETE)."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def _credentials(self, body: dict[str, Any]) -> tuple[str, str, str, str | None]:
        """(account, user, password, project ref or None) of a login; 401 for what names
        no user we can find, 400 for a malformed body."""
        try:
            ident = body["auth"]["identity"]
            if "password" not in ident.get("methods", []):
                raise HTTPStatusError(401, "only the password method is supported")
            doc = ident["password"]["user"]
            password = doc["password"]
            name, user_id = doc.get("name"), doc.get("id")
            scope = body["auth"].get("scope") or {}
            if not isinstance(scope, dict):
                raise TypeError
            project = scope.get("project") or {}
            ref = project.get("id") or project.get("name")
            if not all(isinstance(v, str) for v in (password, name or "", user_id or "",
                                                    ref or "")):
                raise TypeError  # (a list here reached the catalog as a parameter: a 503)
            if not (_default_domain(doc.get("domain"))
                    and _default_domain(project.get("domain"))):
                raise HTTPStatusError(401, "The request you have made requires "
                                           "authentication.")
        except (KeyError, TypeError, AttributeError):
            raise HTTPStatusError(400, "malformed auth request") from None
        spec = user_id or name or ""
        if ":" in spec:
            account, user = spec.split(":", 1)
            return account, user, password, ref
        if not ref:
            # Nothing says which account the user is of (no "account:user", no project).
            raise HTTPStatusError(401, "The request you have made requires authentication.")
        projects = _projects(self.services)
        found = projects.lookup(ref)
        if found is None:
            return "", spec, password, ref
        if found.home:
            return found.id, spec, password, ref
        member = projects.user_in(found, spec)
        return (member.account if member else ""), spec, password, ref

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        account, user, password, ref = self._credentials(_body(req))
        found = (_projects(self.services).login(account, user, password, ref)
                 if account else None)
        if found is None:
            raise HTTPStatusError(401, "The request you have made requires authentication.")
        info, token, expires = found
        resp.status = falcon.HTTP_201
        resp.set_header("X-Subject-Token", token)
        resp.media = token_doc(self.services, req, info, expires, time.time())

    def _subject(self, req: falcon.Request) -> tuple[UserInfo, float, str]:
        caller = _caller(self.services, req)
        subject = req.get_header("X-Subject-Token")
        if not subject:
            raise HTTPStatusError(400, "X-Subject-Token is required")
        found = _projects(self.services).token(subject)
        if found is None or (found.user.id != caller.id and not is_cloud_admin(caller)):
            raise HTTPStatusError(404, "Could not find token.")
        return found.user, found.expires, subject

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        user, expires, subject = self._subject(req)
        resp.set_header("X-Subject-Token", subject)
        resp.media = token_doc(self.services, req, user, expires, time.time())

    def on_head(self, req: falcon.Request, resp: falcon.Response) -> None:
        _, _, subject = self._subject(req)
        resp.set_header("X-Subject-Token", subject)
        resp.status = falcon.HTTP_200

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        _, _, subject = self._subject(req)
        self.services.identity.revoke(subject)
        resp.status = falcon.HTTP_204


class ProjectsResource:
    """/v3/projects: list (?name= filters) and create."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        caller = _caller(self.services, req)
        found = _projects(self.services).projects(caller)
        name = req.get_param("name")
        if name is not None:
            found = [p for p in found if p.name == name]
        resp.media = {"projects": [project_doc(self.services, req, p) for p in found],
                      "links": {"self": f"{base_url(self.services, req)}/v3/projects",
                                "next": None, "previous": None}}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        caller = _caller(self.services, req)
        doc = _body(req).get("project")
        if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
            raise InvalidArgument("expected {\"project\": {\"name\": ...}}")
        description = doc.get("description") or ""
        if not isinstance(description, str):
            raise InvalidArgument("the description must be a string")
        project = _projects(self.services).create_project(caller, doc["name"], description)
        resp.status = falcon.HTTP_201
        resp.media = {"project": project_doc(self.services, req, project)}


class ProjectResource:
    """/v3/projects/{project_id}."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def on_get(self, req: falcon.Request, resp: falcon.Response, project_id: str) -> None:
        caller = _caller(self.services, req)
        project = _projects(self.services).project(caller, project_id)
        resp.media = {"project": project_doc(self.services, req, project)}


class ProjectMemberResource:
    """/v3/projects/{project_id}/users/{user_id}/roles/{role_id}: a role assignment makes
    the user a member (every role is membership here); DELETE ends it."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def on_put(self, req: falcon.Request, resp: falcon.Response, project_id: str,
               user_id: str, role_id: str) -> None:
        caller = _caller(self.services, req)
        _projects(self.services).set_member(caller, project_id, user_id, True)
        resp.status = falcon.HTTP_204

    def on_delete(self, req: falcon.Request, resp: falcon.Response, project_id: str,
                  user_id: str, role_id: str) -> None:
        caller = _caller(self.services, req)
        _projects(self.services).set_member(caller, project_id, user_id, False)
        resp.status = falcon.HTTP_204


class UsersResource:
    """/v3/users: the users the caller may see (itself; all, for a cloud admin) named by
    ?name=, as openstackclient asks when a user is given by name."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        caller = _caller(self.services, req)
        name = req.get_param("name")
        found = _projects(self.services).visible_users(caller, name)
        resp.media = {"users": [user_doc(self.services, req, u) for u in found],
                      "links": {"self": f"{base_url(self.services, req)}/v3/users",
                                "next": None, "previous": None}}


def _user(services: Services, caller: UserInfo, user_id: str) -> UserInfo:
    """A user by "account:user", its number, or a name of the caller's account."""
    ref = user_id if (":" in user_id or user_id.isdigit()) else f"{caller.account}:{user_id}"
    return _projects(services).user(caller, ref)


class UserResource:
    """/v3/users/{user_id}."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def on_get(self, req: falcon.Request, resp: falcon.Response, user_id: str) -> None:
        caller = _caller(self.services, req)
        resp.media = {"user": user_doc(self.services, req, _user(self.services, caller,
                                                                 user_id))}


class UserProjectsResource:
    """/v3/users/{user_id}/projects, and /v3/auth/projects (the caller's)."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def on_get(self, req: falcon.Request, resp: falcon.Response, user_id: str = "") -> None:
        caller = _caller(self.services, req)
        user = _user(self.services, caller, user_id) if user_id else caller
        found = _projects(self.services).projects(caller, user)
        resp.media = {"projects": [project_doc(self.services, req, p) for p in found],
                      "links": {"self": req.url, "next": None, "previous": None}}


class UserPasswordResource:
    """/v3/users/{user_id}/password: a user changes its own password."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def on_post(self, req: falcon.Request, resp: falcon.Response, user_id: str) -> None:
        caller = _caller(self.services, req)
        doc = _body(req).get("user")
        if not isinstance(doc, dict) or not all(
                isinstance(doc.get(k), str) for k in ("password", "original_password")):
            raise InvalidArgument("expected {\"user\": {\"password\": ..., "
                                  "\"original_password\": ...}}")
        target = _user(self.services, caller, user_id)
        if target.id != caller.id:
            raise HTTPStatusError(403, "a user changes only its own password")
        _projects(self.services).change_password(caller, target.id, doc["original_password"],
                                                 doc["password"])
        resp.status = falcon.HTTP_204


def _holding(h: Holding) -> dict[str, int | None]:
    return {"limit": h.limit, "usage": h.usage, "pending": h.pending}


class QuotasResource:
    """/account/v1.0/quotas: {project id: {resource: {limit, usage, pending}}} for each
    project of the caller (Astakos)."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        caller = _caller(self.services, req)
        resp.media = {project: {r: _holding(h) for r, h in held.items()}
                      for project, held in _projects(self.services).quotas(caller).items()}


class ProjectQuotasResource:
    """/account/v1.0/projects/{project_id}/quotas: GET a project's holdings (a member's
    view), PUT {resource: limit or null} (a cloud admin)."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def on_get(self, req: falcon.Request, resp: falcon.Response, project_id: str) -> None:
        caller = _caller(self.services, req)
        held = _projects(self.services).holdings(caller, project_id)
        resp.media = {r: _holding(h) for r, h in held.items()}

    def on_put(self, req: falcon.Request, resp: falcon.Response, project_id: str) -> None:
        caller = _caller(self.services, req)
        limits = _body(req)
        held = _projects(self.services).set_quota(caller, project_id, limits)
        resp.media = {r: _holding(h) for r, h in held.items()}


def add_routes(app: falcon.App, services: Services) -> None:
    app.add_route("/v3/auth/tokens", KeystoneTokens(services))
    app.add_route("/v3/auth/projects", UserProjectsResource(services))
    app.add_route("/v3/projects", ProjectsResource(services))
    app.add_route("/v3/projects/{project_id}", ProjectResource(services))
    app.add_route("/v3/projects/{project_id}/users/{user_id}/roles/{role_id}",
                  ProjectMemberResource(services))
    app.add_route("/v3/users", UsersResource(services))
    app.add_route("/v3/users/{user_id}", UserResource(services))
    app.add_route("/v3/users/{user_id}/projects", UserProjectsResource(services))
    app.add_route("/v3/users/{user_id}/password", UserPasswordResource(services))
    app.add_route("/account/v1.0/quotas", QuotasResource(services))
    app.add_route("/account/v1.0/projects/{project_id}/quotas", ProjectQuotasResource(services))

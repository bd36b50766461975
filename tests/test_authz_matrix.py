"""The authorization matrix of `pithos serve` (issue 26): every route the app registers, every
method it answers, the query variants that change what a request does, against every kind of
caller, with the expected status of each cell written out below as data.

Callers (the columns):
  anon    no token                              bad     a token nobody issued
  other   another account's admin (test2)       user    a non-admin user of the account
                                                        (test:reader), no ACL names it
  reader  that user, named by X-Container-Read  writer  that user, named by X-Container-Write
  owner   the account's admin (test:tester)     public  no token, on a `.r:*` container
                                                        (but for the referrer bad.example.com)
  sharee  test2, with `d/` (everything the rows touch) shared with it for reading
            (X-Object-Sharing: read=test2)
  wsharee test2, with `d/` shared with it for writing (write=test2; writing implies reading)

A write (PUT, POST, DELETE, COPY) runs against a container of its cell's own, made for it
(with its column's ACL or sharing, and the objects its row needs), so a write in one cell
changes no other; reads share one such container per column.  A write's row may add the
owner's look afterwards (`after`): what the write did, or that a refused one left nothing.

`test_every_route_and_method_has_rows` walks falcon's router, and the /v1 sink's handlers,
and fails when the app answers a (route, method) the table has no row for: a new route or
method cannot ship without its row here.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import re
import tarfile
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from tests.conftest import ROOMY_COMPUTE, PithosServer

T = 30
COLUMNS = ("anon", "bad", "other", "user", "reader", "writer", "owner", "public", "sharee",
           "wsharee")
ACCOUNT = "AUTH_test"
# Who each column is: (user, key) to log in with (None: no token), and for "bad" a token
# nobody issued.
CALLERS: dict[str, tuple[str, str] | None] = {
    "anon": None, "bad": None, "other": ("test2:tester2", "testing2"),
    "user": ("test:reader", "reading"), "reader": ("test:reader", "reading"),
    "writer": ("test:reader", "reading"), "owner": ("test:tester", "testing"),
    "public": None, "sharee": ("test2:tester2", "testing2"),
    "wsharee": ("test2:tester2", "testing2")}
BAD_TOKEN = "PTK_" + "0" * 64
# The container ACL each column's containers carry.
CONTAINER_ACL = {"reader": {"X-Container-Read": "test:reader"},
                 "writer": {"X-Container-Write": "test:reader"},
                 # Any referrer but one (a request without a Referer is let in).
                 "public": {"X-Container-Read": ".r:*,.r:-bad.example.com"}}
# The sharing of `d/` in each column's containers.
SHARING = {"sharee": "read=test2", "wsharee": "write=test2"}

# The routes, as the coverage test names them: falcon's URI templates, and the /v1 sink's
# four shapes (the sink parses the path itself).
V1 = "/v1"
V1_ACCOUNT = "/v1/{account}"
V1_CONTAINER = "/v1/{account}/{container}"
V1_OBJECT = "/v1/{account}/{container}/{object}"
IMAGES = "/image/v2/images"
IMAGE = "/image/v2/images/{image_id}"
NOVA = "/compute/v2.1"
PUBLIC_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmVtDVp0RzLb0rAYm6TDfBCs6tAVdxsD0Gc"
              "cDgG1DhF matrix@example")


@dataclass(frozen=True)
class Row:
    """One request shape against every column.  `path` and the values of `headers` and
    `body` are formatted with the cell's fields: {c} its container, {acct} the account,
    {vid} the first version of d/o, {ptoken} d/o's public token, {hashmap} d/o's hashmap
    document, {hash} its first block's hash, {img} its image's id, {user} / {key} the
    column's credentials.
    `needs` names what the cell's container must hold beyond d/o (see `_make_cell`).
    `expect`: the statuses, one per column in COLUMNS' order."""
    id: str
    route: str
    method: str
    path: str
    expect: str
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None
    needs: frozenset[str] = frozenset()
    credentials: bool = False  # send the column's X-Auth-User/Key instead of a token
    # A check by the owner after the request, (method, path, expect): what the request did,
    # or that a refused one left nothing behind.  A GET's cell is "status:body" when 200.
    after: tuple[str, str, str] | None = None
    # A Swift temporary URL: (method, path) it is signed for with the account's Temp-URL key
    # (TEMPURL_KEY); its temp_url_sig and temp_url_expires go on the row's path.
    signed: tuple[str, str] | None = None


def row(id: str, route: str, method: str, path: str, expect: str, *,
        headers: dict[str, str] | None = None, body: str | None = None,
        needs: str = "", credentials: bool = False,
        after: tuple[str, str, str] | None = None,
        signed: tuple[str, str] | None = None) -> Row:
    return Row(id, route, method, path, expect, headers or {}, body,
               frozenset(needs.split()), credentials, after, signed)


OBJ = "/v1/{acct}/{c}/d/o"  # the object every cell's container holds (b"hello")
C = "/v1/{acct}/{c}"
A = "/v1/{acct}"
KEYSTONE = json.dumps({"auth": {"identity": {"methods": ["password"], "password": {
    "user": {"name": "{user}", "password": "{key}"}}}}}).replace("{", "{{").replace(
    "}", "}}").replace("{{user}}", "{user}").replace("{{key}}", "{key}")

TEMPURL_KEY = "matrix-tempurl-key"

# The owner's looks after a write (Row.after) that several rows share, one status (or
# "status:body") per column in COLUMNS' order.
# d/o as it was: nobody's write changed it.
O_UNCHANGED = ("GET", OBJ, "200:hello 200:hello 200:hello 200:hello 200:hello "
                           "200:hello 200:hello 200:hello 200:hello 200:hello")
# d/o rewritten to "new" by those who may write it: writer, owner, wsharee.
O_NEW_BY_WRITERS = ("GET", OBJ, "200:hello 200:hello 200:hello 200:hello 200:hello "
                                "200:new 200:new 200:hello 200:hello 200:new")
# d/o deleted by those who may delete it: writer, owner (a write sharing does not let
# test2 delete).
O_DELETED = ("GET", OBJ, "200:hello 200:hello 200:hello 200:hello 200:hello "
                              "404 404 200:hello 200:hello 200:hello")
# d/new made by the owner alone, or by writer, owner and wsharee.
NEW_BY_OWNER = ("HEAD", "/v1/{acct}/{c}/d/new", "404 404 404 404 404 404 200 404 404 404")
NEW_BY_WRITERS = ("HEAD", "/v1/{acct}/{c}/d/new", "404 404 404 404 404 200 200 404 404 200")


def _tar(name: str) -> str:
    """A tar archive of one file `name` (b"x"), as a row's body (ASCII: braces doubled)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    return out.getvalue().decode("ascii").replace("{", "{{").replace("}", "}}")


# The web UI's sign-in body (account:user and key), formatted as KEYSTONE.
UI_SIGNIN = json.dumps({"user": "{user}", "key": "{key}"}).replace("{", "{{").replace(
    "}", "}}").replace("{{user}}", "{user}").replace("{{key}}", "{key}")

# Statuses by column:  anon bad other user reader writer owner public sharee wsharee
ROWS: tuple[Row, ...] = (
    # -- the web UI: its pages for anyone; its session by cookie only (an API token is not a
    # session: 401), tests/test_ui_security.py has the cookie callers ---------------------------
    row("root-browser", "/", "GET", "/", "303 303 303 303 303 303 303 303 303 303",
        headers={"Accept": "text/html"}),
    row("root-head", "/", "HEAD", "/", "303 303 303 303 303 303 303 303 303 303",
        headers={"Accept": "text/html"}),
    row("ui-get", "/ui/", "GET", "/ui/", "200 200 200 200 200 200 200 200 200 200"),
    row("ui-head", "/ui/", "HEAD", "/ui/", "200 200 200 200 200 200 200 200 200 200"),
    row("ui-file-get", "/ui/{name}", "GET", "/ui/app.js",
        "200 200 200 200 200 200 200 200 200 200"),
    row("ui-file-head", "/ui/{name}", "HEAD", "/ui/nope.js",
        "404 404 404 404 404 404 404 404 404 404"),
    row("ui-signin", "/ui/api/session", "POST", "/ui/api/session",
        "401 401 200 200 200 200 200 401 200 200", body=UI_SIGNIN, credentials=True,
        headers={"Content-Type": "application/json"}),
    row("ui-session-get", "/ui/api/session", "GET", "/ui/api/session",
        "401 401 401 401 401 401 401 401 401 401"),
    row("ui-signout", "/ui/api/session", "DELETE", "/ui/api/session",
        "401 401 401 401 401 401 401 401 401 401"),
    row("ui-shared", "/ui/api/shared", "GET", "/ui/api/shared",
        "401 401 401 401 401 401 401 401 401 401"),
    # -- Swift temporary URLs: the signature decides, whoever sends it (a token that is not
    # valid is still refused); objects of the signed path only, never a container's, no
    # rights, no other object, no other method ----------------------------------------------
    row("tu-o-get", V1_OBJECT, "GET", OBJ, "200 401 200 200 200 200 200 200 200 200",
        signed=("GET", OBJ)),
    row("tu-o-head-by-get", V1_OBJECT, "HEAD", OBJ, "200 401 200 200 200 200 200 200 200 200",
        signed=("GET", OBJ)),
    row("tu-o-get-other-object", V1_OBJECT, "GET", "/v1/{acct}/{c}/d/slo",
        "401 401 401 401 401 401 401 401 401 401", signed=("GET", OBJ), needs="slo"),
    row("tu-o-get-other-container", V1_OBJECT, "GET", "/v1/{acct}/{c}-empty/d/o",
        "401 401 401 401 401 401 401 401 401 401", signed=("GET", OBJ), needs="empty"),
    row("tu-o-get-hashmap-dropped", V1_OBJECT, "GET", OBJ + "?hashmap",
        "200 401 200 200 200 200 200 200 200 200", signed=("GET", OBJ)),
    row("tu-o-put", V1_OBJECT, "PUT", OBJ, "201 401 201 201 201 201 201 201 201 201",
        body="new", signed=("PUT", OBJ),
        after=("GET", OBJ, "200:new 200:hello 200:new 200:new 200:new 200:new 200:new "
                           "200:new 200:new 200:new")),
    row("tu-o-put-signed-get", V1_OBJECT, "PUT", OBJ, "401 401 401 401 401 401 401 401 401 401",
        body="new", signed=("GET", OBJ),
        after=O_UNCHANGED),
    row("tu-o-put-sharing", V1_OBJECT, "PUT", OBJ, "400 401 400 400 400 400 400 400 400 400",
        body="new", signed=("PUT", OBJ), headers={"X-Object-Sharing": "read=test2"}),
    row("tu-o-post-public", V1_OBJECT, "POST", OBJ, "400 401 400 400 400 400 400 400 400 400",
        signed=("POST", OBJ), headers={"X-Object-Public": "true"}),
    row("tu-o-put-copy-from", V1_OBJECT, "PUT", "/v1/{acct}/{c}/d/copy",
        "400 401 400 400 400 400 400 400 400 400", signed=("PUT", "/v1/{acct}/{c}/d/copy"),
        headers={"X-Copy-From": "{c}/d/o"}),
    row("tu-o-delete", V1_OBJECT, "DELETE", OBJ, "204 401 204 204 204 204 204 204 204 204",
        signed=("DELETE", OBJ)),
    row("tu-c-get", V1_CONTAINER, "GET", C, "401 401 401 401 401 401 401 401 401 401",
        signed=("GET", C + "/")),
    row("tu-c-post-keys", V1_CONTAINER, "POST", C, "401 401 401 401 401 401 401 401 401 401",
        signed=("POST", C + "/"), headers={"X-Container-Meta-Temp-URL-Key": "mine"}),
    row("tu-a-post", V1_ACCOUNT, "POST", A, "401 401 401 401 401 401 401 401 401 401",
        signed=("POST", A + "//"), headers={"X-Account-Meta-Temp-URL-Key": "mine"}),
    # -- outside /v1: no token is read; credentials decide the logins -------------------------
    row("info-get", "/info", "GET", "/info", "200 200 200 200 200 200 200 200 200 200"),
    row("info-head", "/info", "HEAD", "/info", "200 200 200 200 200 200 200 200 200 200"),
    row("auth-get", "/auth/v1.0", "GET", "/auth/v1.0", "401 401 200 200 200 200 200 401 200 200",
        credentials=True),
    row("auth-head", "/auth/v1.0", "HEAD", "/auth/v1.0",
        "401 401 200 200 200 200 200 401 200 200", credentials=True),
    row("auth1-get", "/auth/v1", "GET", "/auth/v1", "401 401 200 200 200 200 200 401 200 200",
        credentials=True),
    row("auth1-head", "/auth/v1", "HEAD", "/auth/v1", "401 401 200 200 200 200 200 401 200 200",
        credentials=True),
    row("v3-get", "/v3", "GET", "/v3", "200 200 200 200 200 200 200 200 200 200"),
    row("openapi-get", "/openapi.json", "GET", "/openapi.json",
        "200 200 200 200 200 200 200 200 200 200"),
    row("openapi-head", "/openapi.json", "HEAD", "/openapi.json",
        "200 200 200 200 200 200 200 200 200 200"),
    row("v3-tokens", "/v3/auth/tokens", "POST", "/v3/auth/tokens",
        "401 401 201 201 201 201 201 401 201 201", body=KEYSTONE, credentials=True,
        headers={"Content-Type": "application/json"}),
    # -- projects (Keystone v3 and Astakos' quotas): the home project `test` is the owner's,
    # the user's (test:reader) too; test2's users are members of another project (their
    # own home): 404, naming nothing.  Only a cloud admin (admin:...) changes projects, and
    # no column is one: 403 ----------------------------------------------------------------
    row("v3-token-validate", "/v3/auth/tokens", "GET", "/v3/auth/tokens",
        "401 401 404 404 404 404 404 401 404 404", headers={"X-Subject-Token": BAD_TOKEN}),
    row("v3-token-check", "/v3/auth/tokens", "HEAD", "/v3/auth/tokens",
        "401 401 404 404 404 404 404 401 404 404", headers={"X-Subject-Token": BAD_TOKEN}),
    row("v3-token-revoke", "/v3/auth/tokens", "DELETE", "/v3/auth/tokens",
        "401 401 404 404 404 404 404 401 404 404", headers={"X-Subject-Token": BAD_TOKEN}),
    row("v3-auth-projects", "/v3/auth/projects", "GET", "/v3/auth/projects",
        "401 401 200 200 200 200 200 401 200 200"),
    row("v3-projects", "/v3/projects", "GET", "/v3/projects",
        "401 401 200 200 200 200 200 401 200 200"),
    row("v3-projects-create", "/v3/projects", "POST", "/v3/projects",
        "401 401 403 403 403 403 403 401 403 403", body='{{"project": {{"name": "m-{c}"}}}}',
        headers={"Content-Type": "application/json"}),
    row("v3-project", "/v3/projects/{project_id}", "GET", "/v3/projects/test",
        "401 401 404 200 200 200 200 401 404 404"),
    row("v3-project-member-add", "/v3/projects/{project_id}/users/{user_id}/roles/{role_id}",
        "PUT", "/v3/projects/test/users/test2:tester2/roles/member",
        "401 401 403 403 403 403 403 401 403 403"),
    row("v3-project-member-del", "/v3/projects/{project_id}/users/{user_id}/roles/{role_id}",
        "DELETE", "/v3/projects/test/users/test:reader/roles/member",
        "401 401 403 403 403 403 403 401 403 403"),
    row("v3-users", "/v3/users", "GET", "/v3/users?name=tester",
        "401 401 200 200 200 200 200 401 200 200"),
    row("v3-user", "/v3/users/{user_id}", "GET", "/v3/users/test:tester",
        "401 401 404 404 404 404 200 401 404 404"),
    row("v3-user-projects", "/v3/users/{user_id}/projects", "GET",
        "/v3/users/test:tester/projects", "401 401 404 404 404 404 200 401 404 404"),
    row("v3-user-password", "/v3/users/{user_id}/password", "POST",
        "/v3/users/test:tester/password", "401 401 404 404 404 404 401 401 404 404",
        body='{{"user": {{"original_password": "wrong", "password": "long enough"}}}}',
        headers={"Content-Type": "application/json"}),
    row("quotas", "/account/v1.0/quotas", "GET", "/account/v1.0/quotas",
        "401 401 200 200 200 200 200 401 200 200"),
    row("project-quotas", "/account/v1.0/projects/{project_id}/quotas", "GET",
        "/account/v1.0/projects/test/quotas", "401 401 404 200 200 200 200 401 404 404"),
    row("project-quotas-set", "/account/v1.0/projects/{project_id}/quotas", "PUT",
        "/account/v1.0/projects/test/quotas", "401 401 403 403 403 403 403 401 403 403",
        body='{{"bytes": 1}}', headers={"Content-Type": "application/json"}),
    row("public-get", "/public/{token}", "GET", "/public/{ptoken}",
        "200 200 200 200 200 200 200 200 200 200", needs="publish"),
    row("public-head", "/public/{token}", "HEAD", "/public/{ptoken}",
        "200 200 200 200 200 200 200 200 200 200", needs="publish"),
    row("public-unknown", "/public/{token}", "GET", "/public/no-such-token",
        "404 404 404 404 404 404 404 404 404 404"),
    # -- /v1: the accounts that share with the caller ------------------------------------------
    row("v1-get", V1, "GET", "/v1", "401 401 200 204 204 204 204 401 200 200"),
    row("v1-post", V1, "POST", "/v1", "412 401 412 412 412 412 412 412 412 412"),
    # -- an account: its admin only (no account ACL is set) ---------------------------------
    row("a-head", V1_ACCOUNT, "HEAD", A, "401 401 403 403 403 403 204 401 403 403"),
    row("a-get", V1_ACCOUNT, "GET", A, "401 401 403 403 403 403 200 401 403 403"),
    row("a-get-shared", V1_ACCOUNT, "GET", A + "?shared",
        "401 401 403 403 403 403 200 401 403 403"),
    row("a-get-until", V1_ACCOUNT, "GET", A + "?until=9999999999",
        "401 401 403 403 403 403 200 401 403 403"),
    row("a-post-meta", V1_ACCOUNT, "POST", A, "401 401 403 403 403 403 204 401 403 403",
        headers={"X-Account-Meta-Color": "blue"}),
    row("a-post-acl", V1_ACCOUNT, "POST", A, "401 401 403 403 403 403 204 401 403 403",
        headers={"X-Account-Access-Control": "{{}}"}),
    row("a-post-group", V1_ACCOUNT, "POST", A, "401 401 403 403 403 403 204 401 403 403",
        headers={"X-Account-Group-Friends": "test2"}),
    # Bulk deletes answer 200 with a status per name (Swift's): the owner's look after
    # says which went.
    # Swift's bulk middleware takes ?bulk-delete on any path of the account: the body's paths
    # are the account's, with the caller's rights, whatever the path names.
    *(row(id, route, method, path + "?bulk-delete", "401 401 200 200 200 200 200 401 200 200",
          body="/{c}/d/o\n", headers={"Content-Type": "text/plain", "Accept": accept},
          after=O_DELETED)
      for id, route, method, path, accept in (
          ("a-post-bulk-delete", V1_ACCOUNT, "POST", A, "application/json"),
          ("a-delete-bulk-delete", V1_ACCOUNT, "DELETE", A, "application/json"),
          ("o-delete-bulk-delete", V1_OBJECT, "DELETE", OBJ, "application/xml"),
          ("c-post-bulk-delete", V1_CONTAINER, "POST", C, "application/json"))),
    row("a-delete", V1_ACCOUNT, "DELETE", A, "405 401 405 405 405 405 405 405 405 405"),
    row("a-put", V1_ACCOUNT, "PUT", A, "405 401 405 405 405 405 405 405 405 405"),
    # Extraction answers 200 with a status per file (Swift's): here a top-level file, which
    # names no container (listed 400), for every caller who logged in.
    row("a-put-extract-archive", V1_ACCOUNT, "PUT", A + "?extract-archive=tar",
        "401 401 200 200 200 200 200 401 200 200", body=_tar("toplevel")),
    row("a-copy", V1_ACCOUNT, "COPY", A, "405 401 405 405 405 405 405 405 405 405"),
    # -- a container: listing needs a read ACL (or .rlistings), changes the account's admin;
    # a sharee lists what is shared with it -------------------------------------------------
    row("c-head", V1_CONTAINER, "HEAD", C, "401 401 403 403 204 403 204 401 204 204"),
    row("c-get", V1_CONTAINER, "GET", C, "401 401 403 403 200 403 200 401 200 200"),
    # (A referrer that an ACL lets in lists only with .rlistings, which none has here.)
    row("c-get-good-referer", V1_CONTAINER, "GET", C, "401 401 403 403 200 403 200 401 200 200",
        headers={"Referer": "http://www.example.com/"}),
    # (?shared: only what carries sharing, and only the sharee's container has any.)
    row("c-get-shared", V1_CONTAINER, "GET", C + "?shared",
        "401 401 403 403 204 403 204 401 200 200"),
    row("c-get-until", V1_CONTAINER, "GET", C + "?until=9999999999",
        "401 401 403 403 403 403 200 401 403 403"),
    # Swift's object versioning's listing: the container's history, as ?until=.
    row("c-get-versions", V1_CONTAINER, "GET", C + "?versions&format=json",
        "401 401 403 403 403 403 200 401 403 403"),
    # The change feed (issue 24): who may list the container; a sharee's view has none (it
    # would name what is not shared).
    row("c-get-changes", V1_CONTAINER, "GET", C + "?changes_since=0",
        "401 401 403 403 200 403 200 401 403 403"),
    row("c-get-changes-bad", V1_CONTAINER, "GET", C + "?changes_since=nonsense",
        "401 401 403 403 400 403 400 401 403 403"),
    row("c-get-path", V1_CONTAINER, "GET", C + "?path=d",
        "401 401 403 403 200 403 200 401 200 200"),
    # A container that does not exist: refused alike to who could not list it if it did.
    row("c-head-missing", V1_CONTAINER, "HEAD", C + "-none",
        "401 401 403 403 403 403 404 401 403 403"),
    row("c-get-delimiter", V1_CONTAINER, "GET", C + "?delimiter=/&format=json",
        "401 401 403 403 200 403 200 401 200 200"),
    row("c-put", V1_CONTAINER, "PUT", C, "401 401 403 403 403 403 202 401 403 403",
        headers={"X-Container-Meta-Color": "blue"}),
    row("c-put-new", V1_CONTAINER, "PUT", C + "-new", "401 401 403 403 403 403 201 401 403 403",
        after=("HEAD", C + "-new", "404 404 404 404 404 404 204 404 404 404")),
    # Each file is written with the caller's rights: refused ones are listed in the 200.
    row("c-put-extract-archive", V1_CONTAINER, "PUT", C + "?extract-archive=tar",
        "401 401 200 200 200 200 200 401 200 200", body=_tar("tar-new"),
        after=("HEAD", C + "/tar-new", "404 404 404 404 404 200 200 404 404 404")),
    row("c-put-acl", V1_CONTAINER, "PUT", C, "401 401 403 403 403 403 202 401 403 403",
        headers={"X-Container-Read": "*"}),
    row("c-post-meta", V1_CONTAINER, "POST", C, "401 401 403 403 403 403 204 401 403 403",
        headers={"X-Container-Meta-Color": "blue"}),
    row("c-post-acl", V1_CONTAINER, "POST", C, "401 401 403 403 403 403 204 401 403 403",
        headers={"X-Container-Write": "*"}),
    row("c-post-blocks", V1_CONTAINER, "POST", C + "?blocks",
        "401 401 403 403 403 200 200 401 403 403", body="some block"),
    row("c-post-missing", V1_CONTAINER, "POST", C + "?missing",
        "401 401 403 403 403 200 200 401 403 403", body='["{hash}"]', needs="hashmap"),
    row("c-delete", V1_CONTAINER, "DELETE", C, "401 401 403 403 403 403 409 401 403 403",
        after=("HEAD", C, "204 204 204 204 204 204 204 204 204 204")),
    row("c-delete-empty", V1_CONTAINER, "DELETE", C + "-empty",
        "401 401 403 403 403 403 204 401 403 403", needs="empty",
        after=("HEAD", C + "-empty", "204 204 204 204 204 204 404 204 204 204")),
    row("c-delete-until", V1_CONTAINER, "DELETE", C + "?until=9999999999",
        "401 401 403 403 403 403 204 401 403 403",
        after=("GET", OBJ + "?version=list", "200 200 200 200 200 200 200 200 200 200")),
    row("c-copy", V1_CONTAINER, "COPY", C, "405 401 405 405 405 405 405 405 405 405"),
    # -- an object ------------------------------------------------------------------------
    row("o-get", V1_OBJECT, "GET", OBJ, "401 401 403 403 200 403 200 200 200 200"),
    row("o-head", V1_OBJECT, "HEAD", OBJ, "401 401 403 403 200 403 200 200 200 200"),
    # The shapes the owner's plain reads of a small object take the fast way in
    # (pithos.api.fast_read; everyone else's go through the full stack): the account named
    # without its prefix, the token beside a bad X-Storage-Token (X-Auth-Token decides), and
    # an object kept as blocks (over the inline bound: never the fast way).
    row("o-get-bare-account", V1_OBJECT, "GET", "/v1/test/{c}/d/o",
        "401 401 403 403 200 403 200 200 200 200"),
    row("o-head-bare-account", V1_OBJECT, "HEAD", "/v1/test/{c}/d/o",
        "401 401 403 403 200 403 200 200 200 200"),
    row("o-get-beside-storage-token", V1_OBJECT, "GET", OBJ,
        "401 401 403 403 200 403 200 401 200 200", headers={"X-Storage-Token": BAD_TOKEN}),
    row("o-get-blocks", V1_OBJECT, "GET", "/v1/{acct}/{c}/d/hm",
        "401 401 403 403 200 403 200 200 200 200", needs="hashmap"),
    row("o-head-blocks", V1_OBJECT, "HEAD", "/v1/{acct}/{c}/d/hm",
        "401 401 403 403 200 403 200 200 200 200", needs="hashmap"),
    # Swift's referrer ACL: the designation that names the Referer's host decides (a token's
    # own rights are untouched); a referrer never opens a write.
    row("o-get-bad-referer", V1_OBJECT, "GET", OBJ, "401 401 403 403 200 403 200 401 200 200",
        headers={"Referer": "http://bad.example.com/page"}),
    row("o-head-bad-referer", V1_OBJECT, "HEAD", OBJ,
        "401 401 403 403 200 403 200 401 200 200",
        headers={"Referer": "https://bad.example.com/"}),
    row("o-get-good-referer", V1_OBJECT, "GET", OBJ, "401 401 403 403 200 403 200 200 200 200",
        headers={"Referer": "http://www.example.com/page"}),
    row("o-put-good-referer", V1_OBJECT, "PUT", OBJ, "401 401 403 403 403 201 201 401 403 201",
        body="new", headers={"Referer": "http://www.example.com/page"},
        after=O_NEW_BY_WRITERS),
    row("o-get-hashmap", V1_OBJECT, "GET", OBJ + "?hashmap",
        "401 401 403 403 200 403 200 401 200 200"),
    row("o-get-version-list", V1_OBJECT, "GET", OBJ + "?version=list",
        "401 401 403 403 403 403 200 401 403 200"),
    row("o-get-version-id", V1_OBJECT, "GET", OBJ + "?version={vid}",
        "401 401 403 403 403 403 200 401 403 200"),
    row("o-get-until", V1_OBJECT, "GET", OBJ + "?until=9999999999",
        "401 401 403 403 403 403 200 401 403 200"),
    # Swift's object versioning: a version by id is history too; this container was never
    # versioned, so only 'null' (the current object) is asked for, any other id is 400.
    row("o-get-swift-version-null", V1_OBJECT, "GET", OBJ + "?version-id=null",
        "401 401 403 403 403 403 200 401 403 200"),
    row("o-get-swift-version-id", V1_OBJECT, "GET", OBJ + "?version-id={vid}",
        "401 401 403 403 403 403 400 401 403 400"),
    row("o-get-no-container", V1_OBJECT, "GET", "/v1/{acct}/{c}-none/d/o",
        "401 401 403 403 403 403 404 401 403 403"),
    row("o-get-missing", V1_OBJECT, "GET", "/v1/{acct}/{c}/d/none",
        "401 401 403 403 404 403 404 404 404 404"),
    row("o-get-slo", V1_OBJECT, "GET", "/v1/{acct}/{c}/d/slo",
        "401 401 403 403 200 403 200 200 200 200", needs="slo"),
    row("o-get-slo-manifest", V1_OBJECT, "GET", "/v1/{acct}/{c}/d/slo?multipart-manifest=get",
        "401 401 403 403 200 403 200 200 200 200", needs="slo"),
    row("o-get-dlo", V1_OBJECT, "GET", "/v1/{acct}/{c}/d/dlo",
        "401 401 403 403 200 403 200 200 403 403", needs="dlo"),
    row("o-get-dlo-manifest", V1_OBJECT, "GET", "/v1/{acct}/{c}/d/dlo?multipart-manifest=get",
        "401 401 403 403 200 403 200 200 200 200", needs="dlo"),
    row("o-put", V1_OBJECT, "PUT", OBJ, "401 401 403 403 403 201 201 401 403 201", body="new",
        after=O_NEW_BY_WRITERS),
    row("o-put-new", V1_OBJECT, "PUT", "/v1/{acct}/{c}/d/new",
        "401 401 403 403 403 201 201 401 403 201", body="new",
        after=NEW_BY_WRITERS),
    # (A non-admin writer names by hash only blocks it sent or read itself: 409.)
    row("o-put-hashmap", V1_OBJECT, "PUT", "/v1/{acct}/{c}/d/new?hashmap",
        "401 401 403 403 403 409 201 401 403 409", body="{hashmap}", needs="hashmap",
        after=NEW_BY_OWNER),
    row("o-put-slo", V1_OBJECT, "PUT", "/v1/{acct}/{c}/d/new?multipart-manifest=put",
        "401 401 403 403 403 400 201 401 403 400", body='[{{"path": "/{c}/d/seg"}}]',
        needs="slo",
        after=NEW_BY_OWNER),
    row("o-put-copy-from", V1_OBJECT, "PUT", "/v1/{acct}/{c}/d/new",
        "401 401 403 403 403 403 201 401 403 201", body="", headers={"X-Copy-From": "{c}/d/o"},
        after=("HEAD", "/v1/{acct}/{c}/d/new", "404 404 404 404 404 404 200 404 404 200")),
    # A move (issue 24) needs to read and to write the source: a write ACL alone cannot.
    row("o-put-move-from", V1_OBJECT, "PUT", "/v1/{acct}/{c}/d/new",
        "401 401 403 403 403 403 201 401 403 201", body="", headers={"X-Move-From": "{c}/d/o"},
        after=("HEAD", OBJ, "200 200 200 200 200 200 404 200 200 404")),
    # Conditional writes (issue 24): a failed precondition writes nothing (412).
    row("o-put-if-match", V1_OBJECT, "PUT", OBJ, "401 401 403 403 403 412 412 401 403 412",
        body="new", headers={"If-Match": '"0123456789abcdef0123456789abcdef"'},
        after=O_UNCHANGED),
    row("o-put-dlo", V1_OBJECT, "PUT", "/v1/{acct}/{c}/d/new",
        "401 401 403 403 403 201 201 401 403 201", body="",
        headers={"X-Object-Manifest": "{c}/d/"},
        after=NEW_BY_WRITERS),
    row("o-put-sharing", V1_OBJECT, "PUT", "/v1/{acct}/{c}/d/new",
        "401 401 403 403 403 403 201 401 403 403", body="new",
        headers={"X-Object-Sharing": "read=*"},
        after=NEW_BY_OWNER),
    row("o-put-public", V1_OBJECT, "PUT", "/v1/{acct}/{c}/d/new",
        "401 401 403 403 403 403 201 401 403 403", body="new",
        headers={"X-Object-Public": "true"},
        after=NEW_BY_OWNER),
    row("o-post-meta", V1_OBJECT, "POST", OBJ, "401 401 403 403 403 202 202 401 403 202",
        headers={"X-Object-Meta-Color": "blue"}),
    row("o-post-if-match", V1_OBJECT, "POST", OBJ, "401 401 403 403 403 412 412 401 403 412",
        headers={"X-Object-Meta-Color": "blue", "If-Match": "nomatch"}),
    row("o-post-public", V1_OBJECT, "POST", OBJ, "401 401 403 403 403 403 202 401 403 403",
        headers={"X-Object-Public": "true"}),
    row("o-post-sharing", V1_OBJECT, "POST", OBJ, "401 401 403 403 403 403 202 401 403 403",
        headers={"X-Object-Sharing": "read=*"}),
    row("o-post-range", V1_OBJECT, "POST", OBJ, "401 401 403 403 403 204 204 401 403 204",
        body="J", headers={"Content-Range": "bytes 0-0/*"},
        after=("GET", OBJ, "200:hello 200:hello 200:hello 200:hello 200:hello "
                         "200:Jello 200:Jello 200:hello 200:hello 200:Jello")),
    row("o-post-append", V1_OBJECT, "POST", OBJ, "401 401 403 403 403 204 204 401 403 204",
        body="!", headers={"Content-Range": "bytes */*"},
        after=("GET", OBJ, "200:hello 200:hello 200:hello 200:hello 200:hello "
                         "200:hello! 200:hello! 200:hello 200:hello 200:hello!")),
    row("o-post-truncate", V1_OBJECT, "POST", OBJ, "401 401 403 403 403 204 204 401 403 204",
        headers={"X-Object-Bytes": "2"},
        after=("GET", OBJ, "200:hello 200:hello 200:hello 200:hello 200:hello "
                         "200:he 200:he 200:hello 200:hello 200:he")),
    row("o-post-source", V1_OBJECT, "POST", OBJ, "401 401 403 403 403 403 204 401 403 204",
        headers={"Content-Range": "bytes 0-2/*", "X-Source-Object": "/{c}/d/seg"},
        needs="slo",
        after=("GET", OBJ, "200:hello 200:hello 200:hello 200:hello 200:hello "
                         "200:hello 200:seglo 200:hello 200:hello 200:seglo")),
    row("o-delete", V1_OBJECT, "DELETE", OBJ, "401 401 403 403 403 204 204 401 403 403",
        after=O_DELETED),
    row("o-delete-if-match", V1_OBJECT, "DELETE", OBJ, "401 401 403 403 403 412 412 401 403 403",
        headers={"If-Match": "nomatch"},
        after=O_UNCHANGED),
    row("o-delete-until", V1_OBJECT, "DELETE", OBJ + "?until=9999999999",
        "401 401 403 403 403 204 204 401 403 403",
        after=("GET", OBJ + "?version={vid}", "200:hell 200:hell 200:hell 200:hell 200:hell "
                                            "404 404 200:hell 200:hell 200:hell")),
    row("o-delete-slo", V1_OBJECT, "DELETE", "/v1/{acct}/{c}/d/slo?multipart-manifest=delete",
        "401 401 403 403 403 200 200 401 403 403", needs="slo",
        headers={"Accept": "application/json"},
        after=("HEAD", "/v1/{acct}/{c}/d/seg", "200 200 200 200 200 404 404 200 200 200")),
    row("o-copy", V1_OBJECT, "COPY", OBJ, "401 401 403 403 403 403 201 401 403 403",
        headers={"Destination": "{c}/d/copy"},
        after=("HEAD", "/v1/{acct}/{c}/d/copy", "404 404 404 404 404 404 200 404 404 404")),
    row("o-patch", V1_OBJECT, "PATCH", OBJ, "405 401 405 405 405 405 405 405 405 405"),
    # -- images (Glance v2 under /image): each cell's image is the owner's, private, but
    # shared with test2 (a pending member) in the sharee columns.  Who cannot see an image
    # gets 404 (never 403: ids are not probed); the account's users see it, its admin alone
    # changes it. ------------------------------------------------------------------------
    row("img-versions", "/image", "GET", "/image", "200 200 200 200 200 200 200 200 200 200"),
    row("img-versions-slash", "/image/", "GET", "/image/",
        "200 401 200 200 200 200 200 200 200 200"),
    row("img-list", IMAGES, "GET", IMAGES, "401 401 200 200 200 200 200 401 200 200"),
    row("img-create", IMAGES, "POST", IMAGES, "401 401 201 403 403 403 201 401 201 201",
        body='{{"name": "new"}}', headers={"Content-Type": "application/json"}),
    row("img-get", IMAGE, "GET", "/image/v2/images/{img}",
        "401 401 404 200 200 200 200 401 200 200", needs="image"),
    row("img-get-unknown", IMAGE, "GET", "/image/v2/images/00000000-0000-4000-8000-000000000000",
        "401 401 404 404 404 404 404 401 404 404"),
    row("img-patch", IMAGE, "PATCH", "/image/v2/images/{img}",
        "401 401 404 403 403 403 200 401 403 403", needs="image",
        body='[{{"op": "replace", "path": "/name", "value": "renamed"}}]',
        headers={"Content-Type": "application/openstack-images-v2.1-json-patch"}),
    row("img-delete", IMAGE, "DELETE", "/image/v2/images/{img}",
        "401 401 404 403 403 403 204 401 403 403", needs="image",
        after=("GET", "/image/v2/images/{img}/file",
               "200:imagedata 200:imagedata 200:imagedata 200:imagedata 200:imagedata "
               "200:imagedata 404 200:imagedata 200:imagedata 200:imagedata")),
    row("img-file-get", IMAGE + "/file", "GET", "/image/v2/images/{img}/file",
        "401 401 404 200 200 200 200 401 200 200", needs="image"),
    # (The owner's image has its data already: an image takes one upload.)
    row("img-file-put", IMAGE + "/file", "PUT", "/image/v2/images/{img}/file",
        "401 401 404 403 403 403 409 401 403 403", needs="image", body="data",
        headers={"Content-Type": "application/octet-stream"}),
    row("img-members-get", IMAGE + "/members", "GET", "/image/v2/images/{img}/members",
        "401 401 404 200 200 200 200 401 200 200", needs="image"),
    # (A private image has no members: only a shared one takes them.)
    row("img-members-post", IMAGE + "/members", "POST", "/image/v2/images/{img}/members",
        "401 401 404 403 403 403 403 401 403 403", needs="image",
        body='{{"member": "carol"}}', headers={"Content-Type": "application/json"}),
    row("img-member-get", IMAGE + "/members/{member_id}", "GET",
        "/image/v2/images/{img}/members/test2", "401 401 404 404 404 404 404 401 200 200",
        needs="image"),
    row("img-member-put", IMAGE + "/members/{member_id}", "PUT",
        "/image/v2/images/{img}/members/test2", "401 401 404 404 404 404 404 401 200 200",
        needs="image", body='{{"status": "accepted"}}',
        headers={"Content-Type": "application/json"}),
    row("img-member-delete", IMAGE + "/members/{member_id}", "DELETE",
        "/image/v2/images/{img}/members/test2", "401 401 404 403 403 403 404 401 403 403",
        needs="image"),
    row("img-schema", "/image/v2/schemas/{name}", "GET", "/image/v2/schemas/image",
        "401 401 200 200 200 200 200 401 200 200"),
    # -- compute (Nova v2.1 under /compute, served with --compute): an account's servers are
    # its users' (any of them acts on them, as a Nova project's members); other accounts get
    # 404; key pairs are each user's own. Each cell's server is the owner's, booted from an
    # image whose kernel qemu refuses, so it is in ERROR at once and no VM runs. ------------
    row("cmp-versions", "/compute", "GET", "/compute",
        "200 200 200 200 200 200 200 200 200 200"),
    row("cmp-versions-slash", "/compute/", "GET", "/compute/",
        "200 401 200 200 200 200 200 200 200 200"),
    row("cmp-version", NOVA, "GET", NOVA, "200 401 200 200 200 200 200 200 200 200"),
    row("cmp-version-slash", NOVA + "/", "GET", NOVA + "/",
        "200 401 200 200 200 200 200 200 200 200"),
    row("cmp-flavors", NOVA + "/flavors", "GET", NOVA + "/flavors",
        "401 401 200 200 200 200 200 401 200 200"),
    row("cmp-flavors-detail", NOVA + "/flavors/detail", "GET", NOVA + "/flavors/detail",
        "401 401 200 200 200 200 200 401 200 200"),
    row("cmp-flavor", NOVA + "/flavors/{flavor_id}", "GET", NOVA + "/flavors/1",
        "401 401 200 200 200 200 200 401 200 200"),
    row("cmp-servers", NOVA + "/servers", "GET", NOVA + "/servers",
        "401 401 200 200 200 200 200 401 200 200"),
    row("cmp-servers-detail", NOVA + "/servers/detail", "GET", NOVA + "/servers/detail",
        "401 401 200 200 200 200 200 401 200 200"),
    # (The image is the owner account's and private: another account cannot name it.)
    row("cmp-servers-post", NOVA + "/servers", "POST", NOVA + "/servers",
        "401 401 400 202 202 202 202 401 400 400", needs="server",
        body='{{"server": {{"name": "{c}", "imageRef": "{simg}", "flavorRef": "1"}}}}',
        headers={"Content-Type": "application/json"}),
    row("cmp-server", NOVA + "/servers/{server_id}", "GET", NOVA + "/servers/{srv}",
        "401 401 404 200 200 200 200 401 404 404", needs="server"),
    row("cmp-server-delete", NOVA + "/servers/{server_id}", "DELETE", NOVA + "/servers/{srv}",
        "401 401 404 204 204 204 204 401 404 404", needs="server"),
    row("cmp-server-action", NOVA + "/servers/{server_id}/action", "POST",
        NOVA + "/servers/{srv}/action", "401 401 404 200 200 200 200 401 404 404",
        needs="server", body='{{"os-getConsoleOutput": {{}}}}',
        headers={"Content-Type": "application/json"}),
    row("cmp-keypairs", NOVA + "/os-keypairs", "GET", NOVA + "/os-keypairs",
        "401 401 200 200 200 200 200 401 200 200"),
    row("cmp-keypairs-post", NOVA + "/os-keypairs", "POST", NOVA + "/os-keypairs",
        "401 401 200 200 200 200 200 401 200 200",
        body='{{"keypair": {{"name": "{c}", "public_key": "' + PUBLIC_KEY + '"}}}}',
        headers={"Content-Type": "application/json"}),
    row("cmp-keypair", NOVA + "/os-keypairs/{name}", "GET", NOVA + "/os-keypairs/{kp}",
        "401 401 404 404 404 404 200 401 404 404", needs="keypair"),
    row("cmp-keypair-delete", NOVA + "/os-keypairs/{name}", "DELETE",
        NOVA + "/os-keypairs/{kp}", "401 401 404 404 404 404 202 401 404 404",
        needs="keypair"),
    # Agents report with the deployment's compute key, never a user's token.
    row("cmp-agent-report", "/compute/internal/agents/{name}", "PUT",
        "/compute/internal/agents/rogue", "401 401 401 401 401 401 401 401 401 401",
        body='{{"url": "http://127.0.0.1:9", "vcpus": 1, "ram_mib": 1, "vms": []}}',
        headers={"Content-Type": "application/json"}),
)


def _fields(server: PithosServer, cell: dict[str, Any], column: str) -> dict[str, str]:
    creds = CALLERS[column]
    user, key = creds if creds else ("nobody:none", "none")
    if column == "bad":
        user, key = "test:tester", "wrong"
    return {"c": cell["container"], "acct": ACCOUNT, "vid": cell.get("vid", ""),
            "ptoken": cell.get("ptoken", ""), "hashmap": cell.get("hashmap", ""),
            "hash": cell.get("hash", ""), "img": cell.get("img", ""), "user": user,
            "key": key, "simg": cell.get("simg", ""), "srv": cell.get("srv", ""),
            "kp": cell.get("kp", "")}


@dataclass
class Matrix:
    server: PithosServer
    tokens: dict[str, str]
    cells: dict[tuple[str, str], dict[str, Any]]


def _login(server: PithosServer, user: str, key: str) -> str:
    r = requests.get(server.auth_url, headers={"X-Auth-User": user, "X-Auth-Key": key},
                     timeout=T)
    assert r.status_code == 200, r.text
    return r.headers["X-Auth-Token"]


def _ok(r: requests.Response) -> requests.Response:
    assert r.status_code < 300, (r.request.method, r.request.url, r.status_code, r.text)
    return r


def _make_cell(s: requests.Session, server: PithosServer, owner: dict[str, str],
               row: Row, column: str) -> dict[str, Any]:
    """A container of the cell's own: its column's ACL or sharing, d/o (two versions), and
    what the row `needs`: "publish" (d/o's public link), "slo" / "dlo" (d/slo, d/dlo over
    d/seg), "hashmap" (the hashmap document and first block of d/hm, of content no other
    cell holds), "empty" (an empty container beside it, with the same ACL), "image" (an
    image of the owner with data: private, or shared with test2 in the sharee columns)."""
    name = re.sub(r"[^a-z0-9-]", "-", f"{row.id}-{column}".lower())
    base = f"{server.url}/v1/{ACCOUNT}/{name}"
    _ok(s.put(base, headers={**owner, **CONTAINER_ACL.get(column, {})}, timeout=T))
    cell: dict[str, Any] = {"container": name}
    first = _ok(s.put(f"{base}/d/o", data=b"hell", headers=owner, timeout=T))
    cell["vid"] = first.headers["X-Object-Version"]
    _ok(s.put(f"{base}/d/o", data=b"hello", headers=owner, timeout=T))
    if column in SHARING:
        _ok(s.put(f"{base}/d/", data=b"", timeout=T,
                  headers={**owner, "Content-Type": "application/directory"}))
        _ok(s.post(f"{base}/d/", headers={**owner, "X-Object-Sharing": SHARING[column]},
                   timeout=T))
    if "empty" in row.needs:
        _ok(s.put(base + "-empty", headers={**owner, **CONTAINER_ACL.get(column, {})},
                  timeout=T))
    if "publish" in row.needs:
        r = _ok(s.post(f"{base}/d/o", headers={**owner, "X-Object-Public": "true"},
                       timeout=T))
        cell["ptoken"] = r.headers["X-Object-Public"].rsplit("/", 1)[1]
    if "slo" in row.needs or "dlo" in row.needs:
        _ok(s.put(f"{base}/d/seg", data=b"segment", headers=owner, timeout=T))
        _ok(s.put(f"{base}/d/slo?multipart-manifest=put", headers=owner, timeout=T,
                  data=json.dumps([{"path": f"/{name}/d/seg"}])))
        _ok(s.put(f"{base}/d/dlo", data=b"", timeout=T,
                  headers={**owner, "X-Object-Manifest": f"{name}/d/seg"}))
    if "hashmap" in row.needs:
        # Content of the cell's own: no other cell's caller has sent or read its block.  Over
        # the inline bound (16 KiB), so that its block is in the store to be named.
        _ok(s.put(f"{base}/d/hm", data=f"blocks of {name}".encode() * 4096, headers=owner,
                  timeout=T))
        doc = _ok(s.get(f"{base}/d/hm?hashmap", headers=owner, timeout=T)).json()
        cell["hashmap"] = json.dumps(doc)
        cell["hash"] = doc["hashes"][0]
    if "image" in row.needs:
        images = f"{server.url}/image/v2/images"
        shared = column in SHARING
        made = _ok(s.post(images, headers=owner, timeout=T, json={
            "name": name, "disk_format": "raw", "container_format": "bare",
            "visibility": "shared" if shared else "private"})).json()
        _ok(s.put(f"{images}/{made['id']}/file", data=b"imagedata", headers=owner,
                  timeout=T))
        if shared:
            _ok(s.post(f"{images}/{made['id']}/members", json={"member": "test2"},
                       headers=owner, timeout=T))
        cell["img"] = made["id"]
    if "server" in row.needs:
        # A disk image naming a "kernel" qemu refuses: the owner's server of it goes to ERROR
        # at once (no VM runs), and is a real server for every row to aim at.
        images = f"{server.url}/image/v2/images"
        ids = []
        for fields, data in (({"disk_format": "aki", "container_format": "aki"}, b"no kernel"),
                             ({"disk_format": "raw", "container_format": "bare"}, b"disk")):
            if ids:
                fields = {**fields, "kernel_id": ids[0]}
            made = _ok(s.post(images, headers=owner, timeout=T,
                              json={"name": f"{name}-srv", **fields})).json()
            _ok(s.put(f"{images}/{made['id']}/file", data=data, headers=owner, timeout=T))
            ids.append(made["id"])
        cell["simg"] = ids[1]
        created = _ok(s.post(f"{server.url}{NOVA}/servers", headers=owner, timeout=T, json={
            "server": {"name": name, "imageRef": ids[1], "flavorRef": "1"}})).json()
        cell["srv"] = created["server"]["id"]
    if "keypair" in row.needs:
        _ok(s.post(f"{server.url}{NOVA}/os-keypairs", headers=owner, timeout=T, json={
            "keypair": {"name": name, "public_key": PUBLIC_KEY}}))
        cell["kp"] = name
    return cell


@pytest.fixture(scope="module")
def matrix(tmp_path_factory) -> Any:
    # With the compute API; its local agent offers room for every cell's server (each in
    # ERROR, no VM), and the account's quota takes them all.
    server = PithosServer(tmp_path_factory.mktemp("authz-matrix"), serve_args=("--compute",),
                          env=ROOMY_COMPUTE)
    try:
        tokens = {u: _login(server, u, k) for u, k in {c for c in CALLERS.values() if c}}
        owner = {"X-Auth-Token": tokens["test:tester"]}
        _ok(requests.post(f"{server.url}/v1/{ACCOUNT}", timeout=T,
                          headers={**owner, "X-Account-Meta-Temp-URL-Key": TEMPURL_KEY}))
        cells: dict[tuple[str, str], dict[str, Any]] = {}
        with requests.Session() as s:
            # Reads share a container per column (holding what every read row needs); each
            # write (PUT, POST, DELETE, COPY) has its own; a row that names no container
            # has none.
            every = Row("reads", "", "GET", "", "", needs=frozenset(
                n for r in ROWS for n in r.needs))
            shared = {column: _make_cell(s, server, owner, every, column)
                      for column in COLUMNS}
            for r in ROWS:
                for column in COLUMNS:
                    if "{c}" not in r.path + (r.body or "") + "".join(r.headers.values()) \
                            and not r.needs & {"publish", "image", "server", "keypair"}:
                        cells[r.id, column] = {"container": ""}
                    elif r.method in ("GET", "HEAD"):
                        cells[r.id, column] = shared[column]
                    else:
                        cells[r.id, column] = _make_cell(s, server, owner, r, column)
        yield Matrix(server, tokens, cells)
    finally:
        server.stop()


def _send(m: Matrix, s: requests.Session, r: Row, column: str) -> requests.Response:
    f = _fields(m.server, m.cells[r.id, column], column)
    headers = {k: v.format(**f) for k, v in r.headers.items()}
    creds = CALLERS[column]
    if r.credentials:
        if creds or column == "bad":
            headers.update({"X-Auth-User": f["user"], "X-Auth-Key": f["key"]})
    elif column == "bad":
        headers["X-Auth-Token"] = BAD_TOKEN
    elif creds:
        headers["X-Auth-Token"] = m.tokens[creds[0]]
    body = r.body.format(**f).encode() if r.body is not None else None
    path = r.path.format(**f)
    if r.signed is not None:
        method, signed = r.signed[0], r.signed[1].format(**f)
        expires = int(time.time()) + 3600
        sig = hmac.new(TEMPURL_KEY.encode(), f"{method}\n{expires}\n{signed}".encode(),
                       hashlib.sha256).hexdigest()
        path += ("&" if "?" in path else "?") + f"temp_url_sig={sig}&temp_url_expires={expires}"
    return s.request(r.method, m.server.url + path, headers=headers, data=body,
                     timeout=T, allow_redirects=False)


def _after(m: Matrix, r: Row, column: str) -> str:
    """The owner's look, after the cell's request, at what it should have changed."""
    assert r.after is not None
    method, path, _ = r.after
    f = _fields(m.server, m.cells[r.id, column], column)
    reply = requests.request(method, m.server.url + path.format(**f), timeout=T,
                             headers={"X-Auth-Token": m.tokens["test:tester"]})
    if method == "GET" and reply.status_code == 200 and "version=list" not in path:
        return f"{reply.status_code}:{reply.text}"
    return str(reply.status_code)


@pytest.mark.parametrize("r", ROWS, ids=[r.id for r in ROWS])
def test_matrix_row(matrix: Matrix, r: Row) -> None:
    expected = r.expect.split()
    assert len(expected) == len(COLUMNS), f"{r.id}: one status per column"
    got = []
    with requests.Session() as s:
        for column in COLUMNS:
            reply = _send(matrix, s, r, column)
            got.append(str(reply.status_code))
            if reply.status_code >= 400 and r.method != "HEAD":
                # Every refusal says why.
                assert reply.text.strip(), (r.id, column, reply.status_code)
    if r.after is not None:
        got.append("|")
        expected = [*expected, "|", *r.after[2].split()]
        for column in COLUMNS:
            got.append(_after(matrix, r, column))
    assert " ".join(got) == " ".join(expected), (
        f"{r.id} ({r.method} {r.path}):\n  expected {' '.join(expected)}\n"
        f"  got      {' '.join(got)}\n  columns  {' '.join(COLUMNS)}")


# -- the route table --------------------------------------------------------------------------

def _falcon_routes(app: Any) -> set[tuple[str, str]]:
    """(URI template, method) of every responder a resource defines, from falcon's router
    (not falcon's own defaults: 405 for other methods, OPTIONS)."""
    found = set()
    stack = list(app._router._roots)
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.resource is None:
            continue
        for method in node.method_map:
            if callable(getattr(node.resource, f"on_{method.lower()}", None)):
                found.add((node.uri_template, method))
    return found


def _sink_routes() -> set[tuple[str, str]]:
    """What the /v1 sink answers: GET /v1 (the accounts sharing with the caller), and each
    handler SwiftSink (account_<method>, container_<method>) and ObjectHandlers
    (on_<method>) define: the sink dispatches on these names."""
    from pithos.api.objects import ObjectHandlers
    from pithos.api.swift import SwiftSink

    found = {(V1, "GET")}
    for owner, pattern, route in ((SwiftSink, r"account_([a-z]+)", V1_ACCOUNT),
                                  (SwiftSink, r"container_([a-z]+)", V1_CONTAINER),
                                  (ObjectHandlers, r"on_([a-z]+)", V1_OBJECT)):
        for name in dir(owner):
            m = re.fullmatch(pattern, name)
            if m and callable(getattr(owner, name)):
                found.add((route, m.group(1).upper()))
    return found


def test_every_route_and_method_has_rows(tmp_path) -> None:
    from pithos.api.app import create_app
    from pithos.catalog import local_url
    from pithos.cli.serve import build_services, mount_compute
    from pithos.config import Storage

    data = str(tmp_path / "data")
    storage = Storage(data, "file://" + data + "/blocks", local_url(data))
    services = build_services(storage)
    app = create_app(services)
    mount_compute(app, services, storage, key="not-used-here")  # as with --compute
    sinks = [sink for sink in app._sinks]
    assert len(sinks) == 1, "a new sink: add its routes to _sink_routes and rows to ROWS"
    served = _falcon_routes(app) | _sink_routes()
    tabled = {(r.route, r.method) for r in ROWS}
    missing = sorted(served - tabled)
    assert not missing, f"routes and methods the app answers without a row in ROWS: {missing}"
    # And no row for something the app no longer answers (a stale row tests nothing).
    refusing = {(r.route, r.method) for r in ROWS
                if set(r.expect.split()) <= {"400", "401", "405", "412"}}
    stale = sorted(tabled - served - refusing)
    assert not stale, f"rows for routes or methods the app does not answer: {stale}"

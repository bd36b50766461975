"""GET /openapi.json: the OpenAPI 3.1 description of this HTTP API (pithos/api/openapi.json,
package data), served as Swift serves /info: without a token.  tests/test_openapi.py keeps
it true to the routes the app registers."""

from __future__ import annotations

from importlib import resources

import falcon

DOCUMENT = "openapi.json"


def document() -> bytes:
    """The description, as shipped in the package."""
    return resources.files("pithos.api").joinpath(DOCUMENT).read_bytes()


class OpenAPIDocument:
    def __init__(self) -> None:
        # Read once: it is part of the installed code, not of the data.
        self.body = document()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "application/json"
        resp.data = self.body

    on_head = on_get

"""The WSGI application."""

from __future__ import annotations

import falcon

from pithos.api import errors
from pithos.api.auth import AuthV1, Info, KeystoneTokens, KeystoneVersion, TokenMiddleware
from pithos.api.context import Services
from pithos.api.swift import SwiftSink


class PublicLinks:
    """/public/TOKEN: published objects, served without authentication."""

    def __init__(self, sink: SwiftSink) -> None:
        self.sink = sink

    def on_get(self, req: falcon.Request, resp: falcon.Response, token: str) -> None:
        self.sink.objects.public(req, resp, token)

    on_head = on_get


def create_app(services: Services) -> falcon.App:
    app = falcon.App(middleware=[TokenMiddleware(services)], cors_enable=False)
    app.req_options.keep_blank_qs_values = True
    app.req_options.auto_parse_qs_csv = False
    app.req_options.strip_url_path_trailing_slash = False
    app.resp_options.default_media_type = "application/json"
    errors.install(app)
    app.add_route("/info", Info(services))
    app.add_route("/auth/v1.0", AuthV1(services))
    app.add_route("/auth/v1", AuthV1(services))
    app.add_route("/v3", KeystoneVersion(services))
    app.add_route("/v3/auth/tokens", KeystoneTokens(services))
    sink = SwiftSink(services)
    app.add_route("/public/{token}", PublicLinks(sink))
    app.add_sink(sink, r"/v1")
    return app

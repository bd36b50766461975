"""The keep-alive loop of `pithos serve`'s worker for a plain HTTP/1.x connection.

gunicorn's gevent worker serves each connection in `AsyncWorker.handle`: per request it makes a
new keep-alive `Timeout`, asks whether the request upgrades to HTTP/2 (h2c), carries the PROXY
protocol's addresses over, and builds the WSGI environ in `wsgi.create` (a second dict from
`default_environ`, the `SCRIPT_NAME` of the process environment looked up, the path unquoted);
`handle_request` then times the request and asks the hooks and the access log, which do nothing
here.  A small GET paid about a tenth of a worker's CPU for that layer.

A connection that can hold nothing else (no TLS, no HTTP/2 by prior knowledge or by upgrade, no
PROXY protocol, keep-alive on) is served here by the same steps in the same order, with what
never changes in a worker decided once, and the environ built in one pass (the keep-alive
`Timeout` is still a new one around each request head: see `handle`).  gunicorn's parser
still reads each head (pithos.cli.serve_parse, which hands any unusual head to gunicorn's
own), its body readers frame each body, its Response writes each answer, its hooks and
access log run when they are set, and each error ends as gunicorn ends it: the bytes on the
wire are the same.  Any other connection goes through gunicorn's `handle`, unchanged.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import ssl
import sys
from datetime import datetime
from typing import Any

import gevent
from gunicorn import http, util
from gunicorn.config import PostRequest, PreRequest
from gunicorn.glogging import Logger
from gunicorn.http import wsgi
from gunicorn.http2 import negotiation

from pithos.cli import serve_parse


class Plan:
    """What a worker decides once for all its plain connections (its settings are frozen:
    serve_worker.freeze_config)."""

    def __init__(self, worker: Any, base: dict[str, Any]) -> None:
        cfg = worker.cfg
        self.cfg = cfg
        self.base = base  # the environ every request starts from (keep_base_environ)
        self.keepalive = cfg.keepalive
        # gunicorn's default hooks: the pre-request one logs at debug level only, the
        # post-request one does nothing.  Either, when set otherwise, runs as before.
        self.pre_request = cfg.pre_request
        if self.pre_request is PreRequest.default and type(worker.log) is Logger and \
                not worker.log.error_log.isEnabledFor(logging.DEBUG):
            self.pre_request = None
        self.post_request = None if cfg.post_request is PostRequest.default else \
            cfg.post_request
        # The access log: gunicorn's logger writes none without a destination; another
        # logger class is asked for every request.
        self.access = type(worker.log) is not Logger or worker.log.access_log_enabled
        self.script_name = os.environ.get("SCRIPT_NAME", "")

    def plain(self, client: Any, addr: Any) -> bool:
        """Whether this connection can only carry plain HTTP/1.x requests."""
        cfg = self.cfg
        return (bool(self.keepalive) and not isinstance(client, ssl.SSLSocket)
                and cfg.proxy_protocol in ("off", False, None)
                and not negotiation.prior_knowledge_allowed(cfg, addr)
                and not negotiation.upgrade_allowed(cfg, addr)
                and http.RequestParser is serve_parse.SwiftRequestParser)


def handle(worker: Any, plan: Plan, listener: Any, client: Any, addr: Any) -> None:
    """GeventWorker.handle and AsyncWorker.handle's keep-alive branch, for a plain
    connection (Plan.plain)."""
    client.setblocking(1)  # (as GeventWorker.handle: the socket's default timeout)
    req = None
    try:
        parser = http.get_parser(plan.cfg, client, addr)
        try:
            listener_name = listener.getsockname()
            fixed = addresses(addr, listener_name)
            while True:
                req = None
                # gunicorn's `with worker.timeout_ctx()`: an idle connection ends quietly.
                # A new Timeout for each wait, as gunicorn's: one Timeout cancelled and
                # started again resumed with what was left of its time (libev's timer), so
                # a busy connection was cut `keepalive` seconds after its first request.
                with gevent.Timeout(plan.keepalive, False):
                    req = next(parser)
                if not req:
                    break
                handle_request(worker, plan, listener_name, req, client, addr, fixed)
        except http.errors.NoMoreData as e:
            worker.log.debug("Ignored premature client disconnection. %s", e)
        except StopIteration as e:
            worker.log.debug("Closing connection. %s", e)
        except ssl.SSLError:
            util.reraise(*sys.exc_info())
        except OSError:
            util.reraise(*sys.exc_info())
        except Exception as e:
            worker.handle_error(req, client, addr, e)
    except ssl.SSLError as e:
        if e.args[0] == ssl.SSL_ERROR_EOF:
            worker.log.debug("ssl connection closed")
            client.close()
        else:
            worker.log.debug("Error processing SSL request.")
            worker.handle_error(req, client, addr, e)
    except OSError as e:
        if e.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
            worker.log.exception("Socket error processing request.")
        elif e.errno == errno.ECONNRESET:
            worker.log.debug("Ignoring connection reset")
        elif e.errno == errno.ENOTCONN:
            worker.log.debug("Ignoring socket not connected")
        else:
            worker.log.debug("Ignoring EPIPE")
    except BaseException as e:
        worker.handle_error(req, client, addr, e)
    finally:
        util.close(client)


def handle_request(worker: Any, plan: Plan, listener_name: Any, req: Any, sock: Any,
                   addr: Any, fixed: dict[str, str] | None = None) -> None:
    """AsyncWorker.handle_request, as GeventWorker calls it (a GreenletExit or SystemExit
    of the request ends it quietly)."""
    try:
        _handle_request(worker, plan, listener_name, req, sock, addr, fixed)
    except gevent.GreenletExit:
        pass
    except SystemExit:
        pass


def _handle_request(worker: Any, plan: Plan, listener_name: Any, req: Any, sock: Any,
                    addr: Any, fixed: dict[str, str] | None) -> None:
    request_start = datetime.now() if plan.access else None
    environ: dict[str, Any] = {}
    resp = None
    try:
        if plan.pre_request is not None:
            plan.pre_request(worker, req)
        resp, environ = create(plan, req, sock, addr, listener_name, fixed)
        environ["wsgi.multithread"] = True
        worker.nr += 1
        if worker.nr >= worker.max_requests and worker.alive:
            worker.log.info("Autorestarting worker after current request.")
            worker.alive = False
        if not worker.alive:  # (keep-alive is on: Plan.plain)
            resp.force_close()
        respiter = worker.wsgi(environ, resp.start_response)
        if worker.is_already_handled(respiter):
            return
        try:
            if isinstance(respiter, environ["wsgi.file_wrapper"]):
                resp.write_file(respiter)
            else:
                for item in respiter:
                    resp.write(item)
            resp.close()
        finally:
            if plan.access:
                worker.log.access(resp, req, environ, datetime.now() - request_start)
            if hasattr(respiter, "close"):
                respiter.close()
        if resp.should_close():
            raise StopIteration()
    except StopIteration:
        raise
    except OSError:
        util.reraise(*sys.exc_info())
    except Exception:
        if resp and resp.headers_sent:
            worker.log.exception("Error handling request")
            try:
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            except OSError:
                pass
            raise StopIteration() from None
        raise
    finally:
        if plan.post_request is not None:
            try:
                plan.post_request(worker, req, environ, resp)
            except Exception:
                worker.log.exception("Exception in post_request hook")


# Request header names (as the parser gives them) -> their environ keys, but the four create
# treats apart (bounded: clients make names many).
ENVIRON_KEYS_MAX = 4096
_environ_keys: dict[str, str] = {}


def addresses(client: Any, server: Any) -> dict[str, str] | None:
    """The environ's REMOTE_* and SERVER_* of a TCP connection's every request, as create
    sets them (None for others: a unix socket's SERVER_* come from each request's Host)."""
    if type(client) is not tuple or type(server) is not tuple:
        return None
    return {"REMOTE_ADDR": client[0], "REMOTE_PORT": str(client[1]),
            "SERVER_NAME": server[0], "SERVER_PORT": str(server[1])}


def _addresses(environ: dict[str, Any], req: Any, client: Any, server: Any,
               host: str | None) -> None:
    """gunicorn's REMOTE_* and SERVER_* (a unix socket's server name from the Host)."""
    if isinstance(client, str):
        environ["REMOTE_ADDR"] = client
    elif isinstance(client, bytes):
        environ["REMOTE_ADDR"] = client.decode()
    else:
        environ["REMOTE_ADDR"] = client[0]
        environ["REMOTE_PORT"] = str(client[1])
    if isinstance(server, str):
        server = server.split(":")
        if len(server) == 1:  # a unix socket: the Host header's name, as gunicorn's
            if host:
                server = host.split(":")
                if len(server) == 1:
                    server.append(80 if req.scheme == "http" else
                                  443 if req.scheme == "https" else "")
            else:
                server.append("")
    environ["SERVER_NAME"] = server[0]
    environ["SERVER_PORT"] = str(server[1])


def create(plan: Plan, req: Any, sock: Any, client: Any, server: Any,
           fixed: dict[str, str] | None = None) -> tuple[Any, dict[str, Any]]:
    """gunicorn.http.wsgi.create for an HTTP/1.x request: the same response and environ,
    built in one dict.  A request it does not expect (100-continue, PROXY protocol, a
    SCRIPT_NAME in the process environment or in a header) goes to gunicorn's.  `fixed`:
    the connection's `addresses`."""
    if req._expected_100_continue or req.proxy_protocol_info or plan.script_name or \
            req.version not in ((1, 0), (1, 1)):
        return wsgi.create(req, sock, client, server, plan.cfg)  # type: ignore[no-any-return]
    resp = wsgi.Response(req, sock, plan.cfg)
    environ = {**plan.base, "wsgi.input": req.body, "gunicorn.socket": sock,
               "REQUEST_METHOD": req.method, "QUERY_STRING": req.query, "RAW_URI": req.uri,
               "SERVER_PROTOCOL": "HTTP/1.1" if req.version == (1, 1) else "HTTP/1.0"}
    host = None
    keys = _environ_keys
    for hdr_name, hdr_value in req.headers:
        key = keys.get(hdr_name)
        if key is None:
            if hdr_name == "HOST":
                host = hdr_value
            elif hdr_name == "SCRIPT_NAME":
                return wsgi.create(req, sock, client, server, plan.cfg)  # type: ignore[no-any-return]
            elif hdr_name == "CONTENT-TYPE":
                environ["CONTENT_TYPE"] = hdr_value
                continue
            elif hdr_name == "CONTENT-LENGTH":
                environ["CONTENT_LENGTH"] = hdr_value
                continue
            key = "HTTP_" + hdr_name.replace("-", "_")
            if hdr_name != "HOST" and len(keys) < ENVIRON_KEYS_MAX:
                keys[hdr_name] = key
        if key in environ:
            hdr_value = f"{environ[key]},{hdr_value}"
        environ[key] = hdr_value
    environ["wsgi.url_scheme"] = req.scheme
    if fixed is not None:
        environ.update(fixed)
    else:
        _addresses(environ, req, client, server, host)
    path = req.path
    # util.unquote_to_wsgi_str, which changes nothing in a path of ASCII without '%'.
    environ["PATH_INFO"] = path if path.isascii() and "%" not in path else \
        util.unquote_to_wsgi_str(path)
    environ["SCRIPT_NAME"] = ""
    environ["wsgi.early_hints"] = wsgi._make_early_hints_callback(req, sock, resp)
    return resp, environ

"""The gunicorn worker: slow clients cost a greenlet, never a worker (API.md 10).

``StatWorker`` is gunicorn's gevent worker with the HTTP/1.1 connection loop
replaced. For each request on a connection it:

1. waits for the first byte (up to ``GUNICORN_KEEPALIVE`` between requests,
   up to the read deadline for a connection's first request); a connection
   that sends nothing is closed;
2. reads the headers **and the whole body** (up to ``MAX_BODY_BYTES``)
   under one deadline, ``REQUEST_READ_TIMEOUT`` seconds from the accept or
   the previous response; bytes trickling in do not extend it. Past it the
   client gets a MetaX ``408`` and the connection is closed; the app never
   saw the request, so nothing of it was written;
3. runs the app only then, for at most ``MAX_IN_FLIGHT`` requests at a time
   per worker. The others wait for a turn; one that waited ``QUEUE_TIMEOUT``
   seconds (a random half to all of it) is answered ``503`` with
   ``Retry-After`` without running.
   ``/healthz`` and ``/readyz`` never wait for a turn, so load balancers'
   probes are answered under any load.

A worker holding many connections accepts up to MAX_ACCEPT of them per
wake-up, where gunicorn's gevent worker always takes one when there are
several workers (a flood then kept probes in the listen backlog for seconds).
TLS and HTTP/2 connections go through gunicorn's own loop, unchanged.
"""

from __future__ import annotations

import io
import logging
import random
import select
import time
import uuid
import warnings

import gevent
import orjson
from gevent import monkey
from gevent import socket as gsocket
from gevent.lock import Semaphore
from gevent.pool import Pool
from gevent.server import StreamServer
from gevent.socket import wait_read
from gunicorn import http, util
from gunicorn.workers.ggevent import GeventWorker

from ..config import load_settings
from ..ops.metrics import (
    CONNECTIONS_OPEN,
    METHOD_LABELS,
    READ_TIMEOUTS,
    REQUESTS,
    REQUESTS_IN_FLIGHT,
    REQUESTS_QUEUED,
    SHED,
)

access_log = logging.getLogger("stat_service.access")

# Probes a load balancer sends: answered without waiting for a turn.
PROBE_PATHS = frozenset(("/healthz", "/readyz"))
# The route label of answers the worker gives without running the app.
SERVER_ROUTE = "<server>"
# Connections accepted per wake-up. One at a time spreads connections evenly
# over the workers (each wake-up of every worker takes one; a worker taking
# many at once would hold all of a load balancer's few keep-alive
# connections and leave the other cores idle). But under a flood a busy
# worker wakes up seldom, and new connections, probes included, waited in the
# listen backlog for seconds (gunicorn's gevent worker always takes one): so a
# worker already holding FLOOD_CONNECTIONS connections takes up to MAX_ACCEPT.
MAX_ACCEPT = 100
FLOOD_CONNECTIONS = 64
# Past the deadline, how long the closing handshake may take.
CLOSE_LINGER = 0.5


class _Expired(BaseException):
    """The read deadline of a request passed (raised by our gevent.Timeout).

    A BaseException, so that no ``except Exception`` on the way (gunicorn's
    body readers, ours) mistakes it for a malformed request.
    """


class Gate:
    """At most ``limit`` requests in the app; the others wait their turn.

    A request that has waited ``timeout`` seconds is refused. The wait is
    the only queue: requests waiting are bounded by the connections a worker
    holds (one request read at a time per connection, GUNICORN_WORKER_CONNECTIONS),
    and refusing them sooner only makes busy clients retry sooner.
    """

    def __init__(self, limit: int, timeout: float):
        self._slots = Semaphore(limit)
        self._timeout = timeout

    def enter(self) -> bool:
        """True when admitted (call ``leave`` after), False after the timeout."""
        if self._slots.acquire(blocking=False):
            return True
        REQUESTS_QUEUED.inc()
        try:
            # Between half the timeout and all of it: requests that came in
            # together (a flood's first burst) are not all refused together,
            # then back together, in waves that stall the worker.
            return self._slots.acquire(timeout=self._timeout * random.uniform(0.5, 1))
        finally:
            REQUESTS_QUEUED.dec()

    def leave(self) -> None:
        self._slots.release()


class _ReadBody:
    """A request body already read: what the socket gave, then its error."""

    def __init__(self, data: bytes, error: Exception | None):
        self._buf = io.BytesIO(data)
        self._error = error

    def _check(self, data: bytes, size) -> bytes:
        if not data and size != 0 and self._error is not None:
            raise self._error
        return data

    def read(self, size=None):
        if size is None or size < 0:
            size = -1
        return self._check(self._buf.read(size), size)

    def readline(self, size=None):
        if size is None or size < 0:
            size = -1
        return self._check(self._buf.readline(size), size)

    def readlines(self, hint=None):
        return list(iter(self.readline, b""))

    def __iter__(self):
        return iter(self.readline, b"")


def error_bytes(
    status: int, reason: str, message: str, detail: str, *, close: bool, extra=()
) -> bytes:
    """A MetaX error response, head and body (API.md section 5)."""
    body = orjson.dumps({"result": "error", "message": message, "reason": detail})
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        f"X-Request-ID: {uuid.uuid4().hex}",
        *(f"{name}: {value}" for name, value in extra),
    ]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class StatWorker(GeventWorker):
    """gunicorn's gevent worker, reading whole requests under one deadline."""

    def init_process(self):
        settings = load_settings()
        self.read_timeout = settings.REQUEST_READ_TIMEOUT
        self.max_body = settings.MAX_BODY_BYTES
        self.retry_after = str(settings.RETRY_AFTER_SECONDS)
        # TLS and HTTP/2 connections: gunicorn's own connection loop.
        self.gunicorn_loop = self.cfg.is_ssl or self.cfg.http2_cleartext != "off"
        self.keepalive = self.cfg.keepalive
        self.gate_settings = (settings.MAX_IN_FLIGHT, settings.QUEUE_TIMEOUT)
        super().init_process()  # patches, then loads the app, then run()

    def patch(self):
        # As GeventWorker.patch, but select stays the standard library's:
        # redis-py polls its connection with a zero timeout before every
        # command, which gevent's select turns into a watcher and a trip
        # through the event loop. Nothing here waits in select.
        logging.captureWarnings(True)  # as JSON log lines, like the rest
        with warnings.catch_warnings():
            # "ssl was imported before patching": the master imported the
            # app's libraries. Only jwt.jwks_client (a type annotation) and
            # redis.asyncio (unused) hold ssl names of their own; urllib and
            # redis-py look ssl up when they connect, and get gevent's.
            warnings.filterwarnings("ignore", category=monkey.MonkeyPatchWarning)
            monkey.patch_all(select=False)
        self.sockets = [
            gsocket.socket(s.FAMILY, gsocket.SOCK_STREAM, fileno=s.sock.detach())
            for s in self.sockets
        ]

    def run(self):
        # As GeventWorker.run, but for max_accept (and always our handler).
        self.gate = Gate(*self.gate_settings)
        self.open_connections = 0
        self.servers = servers = []
        for sock in self.sockets:
            sock.setblocking(1)
            server = StreamServer(
                sock, handle=self._handler(sock), spawn=Pool(self.worker_connections)
            )
            server.max_accept = 1
            server.start()
            servers.append(server)

        while self.alive:
            self.notify()
            gevent.sleep(1.0)

        try:
            for server in servers:  # stop accepting
                server.close()
            started = time.time()
            while time.time() - started <= self.cfg.graceful_timeout:
                if all(s.pool.free_count() == s.pool.size for s in servers):
                    return
                self.notify()
                gevent.sleep(1.0)
            self.log.warning("Worker graceful timeout (pid:%s)", self.pid)
            for server in servers:
                server.stop(timeout=1)
        except Exception:
            pass

    def _handler(self, listener):
        def handle(client, addr):
            self.handle(listener, client, addr)

        return handle

    def handle(self, listener, client, addr):
        if self.gunicorn_loop:
            return super().handle(listener, client, addr)
        accepted = time.monotonic()
        client.setblocking(1)
        self._opened(1)
        try:
            self._serve(listener, client, addr, accepted)
        except OSError as exc:
            self.log.debug("connection ended: %s", exc)
        except Exception as exc:
            self.handle_error(None, client, addr, exc)
        finally:
            self._opened(-1)
            util.close(client)

    def _opened(self, change: int) -> None:
        CONNECTIONS_OPEN.inc(change)
        self.open_connections += change
        flooded = self.open_connections >= FLOOD_CONNECTIONS
        for server in self.servers:
            server.max_accept = MAX_ACCEPT if flooded else 1

    # --- one connection --------------------------------------------------------

    def _serve(self, listener, client, addr, since: float) -> None:
        parser = http.get_parser(self.cfg, client, addr)
        listener_name = listener.getsockname()
        keepalive = self.keepalive
        proxy_protocol_info = {}
        first = True
        while True:
            deadline = since + self.read_timeout
            if not self._has_buffered(parser):
                idle_until = deadline if first else since + keepalive
                if not self._wait_first_byte(client, min(idle_until, deadline), first):
                    if first and self.alive:
                        READ_TIMEOUTS.labels("closed").inc()
                    return
                if not first and keepalive >= self.read_timeout:
                    # Idle time allowed by a long keep-alive is not charged
                    # to the request (docs/behaviour.md).
                    deadline = time.monotonic() + self.read_timeout
            req = self._read_request(parser, client, addr, deadline)
            if req is None:
                return
            if req.proxy_protocol_info:
                proxy_protocol_info = req.proxy_protocol_info
            else:
                req.proxy_protocol_info = proxy_protocol_info
            if not self._dispatch(listener_name, req, client, addr):
                return
            since = time.monotonic()
            first = False

    @staticmethod
    def _has_buffered(parser) -> bool:
        buf = parser.unreader.buf
        return buf.seek(0, io.SEEK_END) > 0

    def _wait_first_byte(self, client, until: float, first: bool) -> bool:
        """True once something (a byte, or the peer's close) can be read."""
        if first:
            # A new connection's request (a probe's) is usually there
            # already: read it without a trip through the event loop. Not
            # between requests: a keep-alive client sending back to back
            # would then keep the worker from its other connections.
            poller = select.poll()  # the standard library's: it never waits
            poller.register(client.fileno(), select.POLLIN)
            if poller.poll(0):
                return True
        while self.alive:
            remaining = until - time.monotonic()
            if remaining <= 0:
                return False
            try:
                # In slices, so that a stopping worker closes idle connections.
                wait_read(client.fileno(), timeout=min(remaining, 1.0))
                return True
            except TimeoutError:
                continue
        return False

    def _read_request(self, parser, client, addr, deadline: float):
        """The next request, its body read whole; None when the connection ends."""
        req = None
        timer = gevent.Timeout(max(0.0, deadline - time.monotonic()), _Expired)
        timer.start()
        try:
            try:
                req = next(parser)
                self._read_body(req, client)
                return req
            finally:
                timer.close()  # before any answer below is written
        except _Expired:
            self._timed_out(client, req)
        except StopIteration:
            pass  # the client closed the connection between requests
        except http.errors.NoMoreData:
            self.log.debug("client went away in the middle of a request")
        except OSError:
            raise
        except Exception as exc:  # malformed request line or headers
            self.handle_error(req, client, addr, exc)
        return None

    def _read_body(self, req, client) -> None:
        """Replace the request's body stream by the body, read now."""
        length = None
        for name, value in req.headers:
            if name == "CONTENT-LENGTH":
                length = int(value)  # gunicorn checked it is a number
        if length is not None and length > self.max_body:
            req.force_close()  # the app answers 413 without reading
            return
        if req._expected_100_continue:
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            req._expected_100_continue = False
        chunks, size, error = [], 0, None
        try:
            while size <= self.max_body:
                data = req.body.read(min(65536, self.max_body + 1 - size))
                if not data:
                    break
                chunks.append(data)
                size += len(data)
            else:
                req.force_close()  # over the limit: the rest is never read
        except Exception as exc:  # a malformed chunk: the app answers 400
            error = exc
            req.force_close()
        req.body = _ReadBody(b"".join(chunks), error)

    def _timed_out(self, client, req) -> None:
        READ_TIMEOUTS.labels("408").inc()
        method = req.method if req is not None else "OTHER"
        self._count(method, 408)
        answer = error_bytes(
            408,
            "Request Timeout",
            "REQUEST_TIMEOUT",
            f"the request did not arrive within {self.read_timeout:g} seconds",
            close=True,
        )
        try:
            util.write_nonblock(client, answer)
        except OSError:
            return
        util.close_graceful(client, timeout=CLOSE_LINGER)

    # --- one request -------------------------------------------------------------

    def _dispatch(self, listener_name, req, client, addr) -> bool:
        """Answer ``req``; True when the connection may carry another request."""
        if req.path in PROBE_PATHS and req.method in ("GET", "HEAD"):
            return self._run_app(listener_name, req, client, addr)
        if not self.gate.enter():
            return self._shed(req, client)
        REQUESTS_IN_FLIGHT.inc()
        try:
            return self._run_app(listener_name, req, client, addr)
        finally:
            REQUESTS_IN_FLIGHT.dec()
            self.gate.leave()

    def _run_app(self, listener_name, req, client, addr) -> bool:
        try:
            self.handle_request(listener_name, req, client, addr)
        except StopIteration:
            return False  # the response said the connection closes
        return self.alive and bool(self.keepalive)

    def _shed(self, req, client) -> bool:
        SHED.inc()
        self._count(req.method, 503)
        close = req.should_close() or not self.alive or not self.keepalive
        client.sendall(
            error_bytes(
                503,
                "Service Unavailable",
                "SERVICE_UNAVAILABLE",
                "too many requests in progress; retry later",
                close=close,
                extra=(("Retry-After", self.retry_after),),
            )
        )
        return not close

    @staticmethod
    def _count(method: str, status: int) -> None:
        if method not in METHOD_LABELS:
            method = "OTHER"
        REQUESTS.labels(SERVER_ROUTE, method, str(status)).inc()
        if access_log.isEnabledFor(logging.INFO):
            fields = {"method": method, "route": SERVER_ROUTE, "status": status}
            access_log.info("request", extra={"fields": fields})

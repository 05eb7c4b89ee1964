"""A small threaded TCP proxy in front of a Redis server, with switchable faults.

Modes (``proxy.mode = ...``; every mode applies to open connections as well
as new ones):

``pass``
    Bytes are forwarded both ways.
``blackhole``
    Connections are accepted and the client's bytes are read, but nothing is
    forwarded and nothing comes back: the client sees a hung server.
``reset_after_send``
    A client chunk is forwarded to Redis (so the command runs), the proxy waits
    for Redis to start answering, drops the answer and resets the client
    connection (SO_LINGER 0, then close: the client gets an RST). Only chunks
    containing ``proxy.match`` count (``b""``: every chunk, the connection
    handshake included).
``refuse``
    Open connections are reset; new ones are accepted and reset at once.

``proxy.reset_next(n, match=...)`` applies ``reset_after_send`` to the next
``n`` matching chunks only, whatever the mode, so a client's retry can succeed.

A "request" here is one ``recv`` from the client: redis-py sends each command
in one write, small commands arrive in one chunk.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time

MODES = ("pass", "blackhole", "reset_after_send", "refuse")
_TICK = 0.05  # how often idle threads look at the mode and the stop flag
_REPLY_WAIT = 2.0  # how long a doomed request waits for Redis to answer


def _reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class NetProxy:
    """``with NetProxy(redis_port) as proxy:`` then point a client at proxy.url."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self._mode = "pass"
        self.match = b""
        self.resets = 0  # client connections reset after their bytes were sent
        self.accepted = 0
        self._pending = 0  # reset_next budget
        self._pending_match = b""
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"unknown mode {value!r}, expected one of {MODES}")
        self._mode = value
        if value == "refuse":  # return once every open connection is reset
            deadline = time.monotonic() + 5
            while self._pumps() and time.monotonic() < deadline:
                time.sleep(_TICK / 5)

    def _pumps(self) -> list[threading.Thread]:
        return [t for t in self._threads if t.name == "pump" and t.is_alive()]

    def reset_next(self, n: int = 1, match: bytes = b"") -> None:
        """Reset the connection after each of the next ``n`` matching chunks."""
        with self._lock:
            self._pending, self._pending_match = n, match

    def start(self) -> NetProxy:
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        """Stop every thread and close every socket (idempotent)."""
        self._stopping.set()
        # The acceptor first: once it is gone no connection thread is added.
        for thread in sorted(self._threads, key=lambda t: t.name != "accept_loop"):
            thread.join(timeout=5)
        self._listener.close()
        alive = [t for t in self._threads if t.is_alive()]
        assert not alive, f"proxy threads still running: {alive}"

    def __enter__(self) -> NetProxy:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # --- internals ---------------------------------------------------------------

    def _spawn(self, target, *args) -> None:
        name = target.__name__.strip("_")
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            ready, _, _ = select.select([self._listener], [], [], _TICK)
            if not ready:
                continue
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            self.accepted += 1
            if self.mode == "refuse":
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=1)
            except OSError:
                _reset(client)
                continue
            self._spawn(self._pump, client, upstream)

    def _doom(self, data: bytes) -> bool:
        """Whether this chunk is one whose connection is reset after sending."""
        with self._lock:
            if self._pending and self._pending_match in data:
                self._pending -= 1
                return True
        return self.mode == "reset_after_send" and self.match in data

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        doomed_at = None  # when a doomed chunk was sent to Redis
        try:
            while not self._stopping.is_set():
                overdue = (
                    doomed_at is not None and time.monotonic() - doomed_at > _REPLY_WAIT
                )
                if self.mode == "refuse" or overdue:
                    _reset(client)
                    return
                ready, _, _ = select.select([client, upstream], [], [], _TICK)
                if client in ready:
                    data = client.recv(65536)
                    if not data:
                        return
                    if self.mode == "blackhole":
                        continue
                    if doomed_at is None and self._doom(data):
                        doomed_at = time.monotonic()
                    upstream.sendall(data)
                if upstream in ready:
                    data = upstream.recv(65536)
                    if not data:
                        return
                    if doomed_at is not None:  # Redis ran it: drop the answer
                        with self._lock:
                            self.resets += 1
                        _reset(client)
                        return
                    if self.mode != "blackhole":
                        client.sendall(data)
        except OSError:
            pass  # the client or Redis went away: so does this connection
        finally:
            client.close()  # no-op after _reset
            upstream.close()

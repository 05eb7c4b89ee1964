"""Slow clients, probes and floods on loopback, for tests and bench/slow_clients.py.

- ``SlowClients``: a thread holding many slow connections on one selector:
  trickling headers, trickling a body, sending nothing, idle after one
  keep-alive answer. Each is reopened when the server closes it, and every
  one is recorded (what it received and when) for the caller to check.
- ``Prober``: ``GET`` a path every 100 ms, each on a new connection.
- ``flood``: many keep-alive connections sending PUTs as fast as they are
  answered, in a subprocess (``python -m tests.loadgen flood ...``) so that
  its work does not share the caller's GIL; it counts the answers by status
  and checks each 503 is the MetaX shape with ``Retry-After``.

Everything is bounded in time and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATH = "/metax/3.0/ui/user/stat/"
KINDS = ("trickle-headers", "trickle-body", "silent", "idle-keepalive")


def status_of(data: bytes) -> int | None:
    """The status of an HTTP response that starts ``data``, if any."""
    if not data.startswith(b"HTTP/1."):
        return None
    try:
        return int(data.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def split_response(data: bytes) -> tuple[dict[str, str], bytes]:
    """(headers, body) of one complete response."""
    head, _, body = data.partition(b"\r\n\r\n")
    headers = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers, body


# --- slow connections ---------------------------------------------------------------


@dataclasses.dataclass
class SlowConnection:
    kind: str
    opened: float  # monotonic, when the connection was established
    to_send: bytes = b""  # what is trickled, one byte per tick
    received: bytes = b""
    first_byte_at: float | None = None  # when the first response byte came
    answered_at: float | None = None  # when the answer's head was complete
    closed_at: float | None = None  # when the server closed (EOF or reset)
    reset: bool = False
    sock: socket.socket | None = None

    @property
    def status(self) -> int | None:
        return status_of(self.received)


class SlowClients(threading.Thread):
    """``count`` slow connections of the KINDS, round robin, until ``stop()``.

    ``interval`` is the time between two trickled bytes of one connection;
    the connections are opened evenly over ``ramp`` seconds.
    ``trickle_path`` is the PUT target of the trickling kinds and ``token``
    authorizes it, so that a server that wrongly ran them would write there.
    """

    def __init__(
        self,
        port: int,
        count: int,
        *,
        token: str,
        trickle_path: str,
        interval: float = 0.5,
        ramp: float = 0.0,
        reopen: bool = True,
    ):
        super().__init__(daemon=True)
        self.port = port
        self.count = count
        self.token = token
        self.trickle_path = trickle_path
        self.interval = interval
        self.ramp = ramp
        self.reopen = reopen
        self.done: list[SlowConnection] = []  # closed by the server
        self.failed_connects = 0
        self._open: dict[int, SlowConnection] = {}
        self._selector = selectors.DefaultSelector()
        self._halt = threading.Event()
        self.started_all = threading.Event()

    # what each kind sends
    def _plan(self, kind: str) -> tuple[bytes, bytes]:
        """(sent at once, trickled afterwards)."""
        body = b'{"favorites": ["slow"]}' + b" " * 2000
        if kind == "trickle-headers":
            head = f"PUT {self.trickle_path} HTTP/1.1\r\nHost: x\r\n"
            return head.encode(), b"X-Pad: " + b"a" * 2000
        if kind == "trickle-body":
            head = (
                f"PUT {self.trickle_path} HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {self.token}\r\n"
                "Content-Type: application/json\r\n"
                # 10 bytes more than will ever come
                f"Content-Length: {len(body) + 10}\r\n\r\n"
            )
            return head.encode(), body
        if kind == "idle-keepalive":
            return b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b""
        return b"", b""  # silent

    def _connect(self, kind: str) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        except OSError:
            self.failed_connects += 1
            return
        conn = SlowConnection(kind, time.monotonic(), sock=sock)
        now, conn.to_send = self._plan(kind)
        try:
            if now:
                sock.sendall(now)
        except OSError:
            conn.reset = True
        sock.setblocking(False)
        self._open[sock.fileno()] = conn
        self._selector.register(sock, selectors.EVENT_READ, conn)

    def _closed(self, conn: SlowConnection, *, reset: bool = False) -> None:
        conn.closed_at = time.monotonic()
        conn.reset = conn.reset or reset
        self._selector.unregister(conn.sock)
        del self._open[conn.sock.fileno()]
        conn.sock.close()
        conn.sock = None
        self.done.append(conn)
        if self.reopen and not self._halt.is_set():
            self._connect(conn.kind)

    def run(self) -> None:
        # Opened over ``ramp`` seconds, so that their deadlines do not all
        # fall at once (then each is reopened as soon as the server closes it).
        start = time.monotonic()
        opened = 0
        next_tick = start
        while not self._halt.is_set():
            due = self.count
            if self.ramp > 0:
                due = min(
                    self.count,
                    int(self.count * (time.monotonic() - start) / self.ramp) + 1,
                )
            while opened < due:
                self._connect(KINDS[opened % len(KINDS)])
                opened += 1
            if opened == self.count:
                self.started_all.set()
            timeout = max(0.0, min(next_tick - time.monotonic(), 0.01))
            for key, _ in self._selector.select(timeout):
                conn = key.data
                try:
                    data = conn.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    self._closed(conn, reset=True)
                    continue
                if not data:
                    self._closed(conn)
                    continue
                now = time.monotonic()
                if conn.first_byte_at is None:
                    conn.first_byte_at = now
                conn.received += data
                answer_done = b"\r\n\r\n" in conn.received
                if conn.answered_at is None and answer_done:
                    conn.answered_at = now
                conn.to_send = b""  # an answer came: stop sending
            if time.monotonic() >= next_tick:
                next_tick += self.interval
                for conn in list(self._open.values()):
                    if conn.to_send:
                        try:
                            conn.sock.send(conn.to_send[:1])
                            conn.to_send = conn.to_send[1:]
                        except BlockingIOError:
                            pass
                        except OSError:
                            self._closed(conn, reset=True)
        for conn in list(self._open.values()):
            self._selector.unregister(conn.sock)
            conn.sock.close()
        self._open.clear()
        self._selector.close()

    @property
    def open_count(self) -> int:
        return len(self._open)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


# --- probes -------------------------------------------------------------------------


def one_shot(port: int, data: bytes, timeout: float = 10.0) -> tuple[int, float]:
    """(status, or -1 without an answer; seconds) of one request, new connection."""
    started = time.monotonic()
    raw = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(data)
            while chunk := sock.recv(65536):
                raw += chunk
    except OSError:
        pass
    return status_of(raw) or -1, time.monotonic() - started


def get_bytes(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()


class Prober(threading.Thread):
    """GET ``paths`` in turn every ``interval`` seconds, each on a new connection."""

    def __init__(self, port: int, paths=("/healthz",), interval: float = 0.1):
        super().__init__(daemon=True)
        self.port = port
        self.requests = [get_bytes(p) for p in paths]
        self.interval = interval
        self.results: list[tuple[int, float]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        n = 0
        while not self._halt.is_set():
            started = time.monotonic()
            self.results.append(
                one_shot(self.port, self.requests[n % len(self.requests)])
            )
            n += 1
            self._halt.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def stop(self) -> list[tuple[int, float]]:
        self._halt.set()
        self.join(timeout=30)
        return self.results


def percentile(values, q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def put_bytes(token: str, subscriber: str, n: int, *, keep_alive=False) -> bytes:
    body = json.dumps(
        {"favorites": [f"f{n % 7}"], "view_data": [{"asset_id": "a1", "view_time": n}]}
    ).encode()
    head = (
        f"PUT {PATH}{subscriber} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        + ("" if keep_alive else "Connection: close\r\n")
        + "\r\n"
    )
    return head.encode() + body


# --- flood (in a subprocess) --------------------------------------------------------


async def _read_response(reader) -> tuple[int, dict, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    headers, _ = split_response(head)
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status_of(head) or -1, headers, body


def _shape_ok(status: int, headers: dict, body: bytes) -> bool:
    """A 503 of the contract: MetaX JSON and Retry-After."""
    try:
        payload = json.loads(body)
    except ValueError:
        return False
    return (
        status == 503
        and headers.get("retry-after", "").isdigit()
        and headers.get("content-type", "").startswith("application/json")
        and payload.get("message") == "SERVICE_UNAVAILABLE"
    )


async def _flood(
    port: int, connections: int, seconds: float, token: str, keep_alive: bool = True
) -> dict:
    counts: Counter = Counter()
    deadline = time.monotonic() + seconds

    async def one(i: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                counts["connect-error"] += 1
                await asyncio.sleep(0.05)
                continue
            try:
                while time.monotonic() < deadline:
                    n += 1
                    sub = f"flood-{i}-{n % 50}@example.org"
                    writer.write(put_bytes(token, sub, n, keep_alive=keep_alive))
                    status, headers, body = await asyncio.wait_for(
                        _read_response(reader), timeout=30
                    )
                    counts[str(status)] += 1
                    if status == 503 and not _shape_ok(status, headers, body):
                        counts["503-not-the-contract-shape"] += 1
                    if not keep_alive or headers.get("connection", "") == "close":
                        break
            except (asyncio.IncompleteReadError, ConnectionError, OSError):
                counts["closed-without-answer"] += 1
            except TimeoutError:
                counts["no-answer-in-30s"] += 1
            finally:
                writer.close()

    await asyncio.gather(*(one(i) for i in range(connections)))
    return dict(counts)


def flood(
    port: int, connections: int, seconds: float, token: str, keep_alive: bool = True
) -> dict:
    """Counts by status (and failures) of a flood run in a subprocess, plus
    ``ok_per_s``: 200s per second of the run. Without ``keep_alive``, each
    request comes on a new connection."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.loadgen", "flood", str(port), str(connections),
         str(seconds), token, "keep-alive" if keep_alive else "close"],
        cwd=ROOT, capture_output=True, text=True, timeout=seconds + 120, check=True,
    )  # fmt: skip
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    return {"counts": counts, "ok_per_s": counts.get("200", 0) / seconds}


def _main(argv: list[str]) -> int:
    if argv[:1] == ["flood"]:
        port, connections, seconds, token, mode = argv[1:6]
        result = asyncio.run(
            _flood(int(port), int(connections), float(seconds), token, mode != "close")
        )
        print(json.dumps(result), flush=True)
        return 0
    print("usage: python -m tests.loadgen flood PORT CONNECTIONS SECONDS TOKEN MODE")
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

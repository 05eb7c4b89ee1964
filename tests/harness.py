"""Running the service under real gunicorn: raw-socket HTTP, processes, fixtures."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from stat_service.config import Settings
from tests.conftest import PATH, SECRET, make_token
from tests.support import RedisServer, free_port, terminate

ROOT = Path(__file__).resolve().parents[1]
GUNICORN = ROOT / ".venv" / "bin" / "gunicorn"
MAX_BODY_BYTES = Settings.MAX_BODY_BYTES  # the default: the fixtures do not set it
# Redis calls give up after about a second; the contract says "promptly".
PROMPT = 3.0
_SETTING_NAMES = {f.name for f in dataclasses.fields(Settings)}
_SERVER_NAMES = {
    "HOST",
    "PORT",
    "WEB_CONCURRENCY",
    "LOCAL_REDIS_PORT",
    "PROMETHEUS_MULTIPROC_DIR",
    "FORWARDED_ALLOW_IPS",
}


# --- HTTP on raw sockets: the request target is exactly the bytes given ---------


@dataclasses.dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed: float

    def json(self):
        return json.loads(self.body)

    def __repr__(self) -> str:
        return (
            f"Reply({self.status}, {self.headers}, {self.body[:400]!r}, "
            f"{self.elapsed:.2f}s)"
        )


def _chunked(payload: bytes, size: int = 65536) -> bytes:
    parts = [payload[i : i + size] for i in range(0, len(payload), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def _head(method: str, path: str, headers) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    return "\r\n".join(lines).encode("latin-1") + b"\r\n"


def _read_reply(sock: socket.socket) -> Reply:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break  # the reply, if any, arrived before the reset
        if not chunk:
            break
        chunks.append(chunk)
    return parse_reply(b"".join(chunks))


def parse_reply(raw: bytes) -> Reply:
    """The one reply in ``raw``, all a connection received up to its close."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete HTTP reply: {raw[:400]!r}"
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return Reply(int(status_line.split()[1]), headers, body, 0.0)


def exchange(port: int, data: bytes, timeout: float = 10.0) -> Reply:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # A 413 may come before the whole body was read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        reply = _read_reply(sock)
    reply.elapsed = time.monotonic() - started
    return reply


class HeldRequest:
    """A request whose headers are not finished yet (the app has not seen it)."""

    def __init__(self, port: int, method: str, path: str, headers=()):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.sock.sendall(_head(method, path, headers))

    def finish(self, body: bytes = b"") -> Reply:
        started = time.monotonic()
        try:
            self.sock.sendall(b"\r\n" + body)
            reply = _read_reply(self.sock)
        finally:
            self.sock.close()
        reply.elapsed = time.monotonic() - started
        return reply


def admin() -> tuple[str, str]:
    return ("Authorization", f"Bearer {make_token('back-office', admin=True)}")


def assert_error(reply: Reply, status: int, message: str) -> dict:
    """The MetaX error shape, as JSON (never gunicorn's or Werkzeug's HTML)."""
    assert reply.status == status, reply
    assert reply.headers.get("content-type", "").startswith("application/json"), reply
    assert not reply.body.lstrip().startswith(b"<"), reply
    body = reply.json()
    assert body["result"] == "error", body
    assert body["message"] == message, body
    assert isinstance(body["reason"], str) and body["reason"], body
    return body


def unique(label: str = "sub") -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}"


# --- gunicorn processes ------------------------------------------------------


class Service:
    """``gunicorn -c gunicorn.conf.py wsgi:app`` on a free port, output to a file."""

    def __init__(self, log_dir: Path, env: dict[str, str | None]):
        self.port = free_port()
        self.log_path = log_dir / f"gunicorn-{self.port}.log"
        base = {
            k: v
            for k, v in os.environ.items()
            if k not in _SETTING_NAMES
            and k not in _SERVER_NAMES
            and not k.startswith("GUNICORN_")
        }
        base.update(HOST="127.0.0.1", PORT=str(self.port), WEB_CONCURRENCY="2")
        for name, value in env.items():
            if value is None:
                base.pop(name, None)
            else:
                base[name] = value
        self.env = base
        self.proc: subprocess.Popen | None = None
        self._log_file = None

    def start(self) -> Service:
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [str(GUNICORN), "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT,
            env=self.env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 20.0) -> Service:
        """/healthz answers, from two workers (so no test waits for a boot)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"gunicorn exited with {self.proc.returncode}:\n{self.log()}"
                )
            try:
                if self.request("GET", "/healthz", timeout=1).status == 200:
                    break
            except (OSError, AssertionError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"gunicorn did not answer /healthz:\n{self.log()}")
            time.sleep(0.05)
        for reply in self.on_both_workers("GET", "/healthz"):
            assert reply.status == 200, reply
        return self

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"gunicorn still running after {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        terminate(self.proc)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def request(
        self,
        method: str,
        path: str,
        *,
        headers=(),
        body: bytes | None = None,
        chunked: bool = False,
        timeout: float = 10.0,
    ) -> Reply:
        headers = list(headers)
        payload = b""
        if body is not None:
            if chunked:
                headers.append(("Transfer-Encoding", "chunked"))
                payload = _chunked(body)
            else:
                headers.append(("Content-Length", str(len(body))))
                payload = body
        data = _head(method, path, headers) + b"\r\n" + payload
        return exchange(self.port, data, timeout=timeout)

    def on_both_workers(
        self, method: str, path: str, *, headers=(), body: bytes | None = None
    ) -> tuple[Reply, Reply]:
        """The same request answered once by each of two different workers.

        Connections are opened with the request held unfinished until two of
        them were accepted by different workers (which worker holds a
        connection is read from /proc); then both requests are finished.
        The other connections are closed unfinished: nothing of them is run.
        """
        held_headers = list(headers)
        if body is not None:
            held_headers.append(("Content-Length", str(len(body))))
        held: dict[int, HeldRequest] = {}
        spare: list[HeldRequest] = []
        try:
            for _ in range(40):
                request = HeldRequest(self.port, method, path, held_headers)
                pid = poll(lambda r=request: self.worker_holding(r.sock), timeout=10)
                if pid is None or pid in held:
                    spare.append(request)
                else:
                    held[pid] = request
                if len(held) == 2:
                    break
            else:
                pytest.fail(f"no two workers accepted connections:\n{self.log()}")
        finally:
            for request in spare:
                request.sock.close()
        first, other = held.values()
        return first.finish(body or b""), other.finish(body or b"")

    def worker_pids(self) -> list[int]:
        """The gunicorn workers: the master's children."""
        found = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rindex(b")") + 2 :].split()[1]) == self.proc.pid:
                found.append(int(entry.name))
        return found

    def worker_holding(self, sock: socket.socket) -> int | None:
        """The worker that accepted this client socket's connection, if any yet."""
        ours = f"0100007F:{sock.getsockname()[1]:04X}"
        theirs = f"0100007F:{self.port:04X}"
        inode = None
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[1] == theirs and fields[2] == ours:
                    inode = fields[9]  # 0 until a worker has accepted it
        if not inode or inode == "0":
            return None
        target = f"socket:[{inode}]"
        for pid in self.worker_pids():
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                            return pid
        return None

    def put(self, raw_id: str, doc, *, auth=None, **kwargs) -> Reply:
        return self.request("PUT", PATH + raw_id, **self._put_args(doc, auth), **kwargs)

    def get(self, raw_id: str, *, auth=None) -> Reply:
        return self.request("GET", PATH + raw_id, headers=[auth or admin()])

    def put_on_both_workers(self, raw_id: str, doc, *, auth=None):
        return self.on_both_workers("PUT", PATH + raw_id, **self._put_args(doc, auth))

    def get_on_both_workers(self, raw_id: str, *, auth=None):
        return self.on_both_workers("GET", PATH + raw_id, headers=[auth or admin()])

    @staticmethod
    def _put_args(doc, auth) -> dict:
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        headers = [auth or admin(), ("Content-Type", "application/json")]
        return {"headers": headers, "body": body}


@pytest.fixture(scope="module")
def module_redis():
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def service(module_redis, tmp_path_factory):
    """The normal service, on a private Redis, shared by the tests of this module."""
    svc = Service(
        tmp_path_factory.mktemp("gunicorn"),
        {
            "REDIS_URL": module_redis.url,
            "JWT_SECRET": SECRET,
            "KEY_PREFIX": f"stat-test:{uuid.uuid4().hex[:12]}:",
        },
    ).start()
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.stop()


@pytest.fixture
def spawn(tmp_path):
    """Start services of this test's own; all are stopped at its end."""
    started: list[Service] = []

    def _spawn(**env: str | None) -> Service:
        svc = Service(tmp_path, env).start()
        started.append(svc)
        return svc

    yield _spawn
    for svc in started:
        svc.stop()


@pytest.fixture
def private_redis():
    """A private redis-server, not started yet; it may be stopped or paused."""
    server = RedisServer()
    yield server
    server.signal(signal.SIGCONT)
    server.cleanup()


def faulty_service(spawn, server: RedisServer) -> Service:
    return spawn(
        REDIS_URL=server.url,
        JWT_SECRET=SECRET,
        KEY_PREFIX=f"stat-test:{uuid.uuid4().hex[:12]}:",
    )


def assert_prompt_503(reply: Reply) -> None:
    assert_error(reply, 503, "SERVICE_UNAVAILABLE")
    assert reply.headers.get("retry-after", "").isdigit(), reply
    assert reply.elapsed < PROMPT, reply


def poll(check, timeout: float = 8.0, interval: float = 0.1):
    """Call ``check`` until it returns a truthy value; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)

"""In-memory Redis (fakeredis over TCP) for ``make run`` on a machine without Redis."""

from __future__ import annotations

import os
import socket
import threading

BANNER = (
    "EMBEDDED MODE: no REDIS_URL and no local Redis answers PING; the data lives "
    "IN MEMORY ONLY (fakeredis at {url}) and is lost when the service stops. "
    "Set REDIS_URL for real use."
)


def redis_answers(
    host: str = "127.0.0.1", port: int = 6379, timeout: float = 0.5
) -> bool:
    """True when something at host:port replies +PONG to PING."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_fake_redis(host: str = "127.0.0.1", port: int = 0) -> str:
    """Serve a fakeredis server (with Lua) from a daemon thread; return its URL."""
    from fakeredis import TcpFakeServer

    server = TcpFakeServer((host, port), server_type="redis")
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="fakeredis", daemon=True).start()
    return f"redis://{host}:{server.server_address[1]}/0"


def ensure_redis(log) -> None:
    """Called once in the gunicorn master, before workers fork.

    With REDIS_URL set, nothing happens. Otherwise the local Redis (port
    LOCAL_REDIS_PORT, default 6379) is used when it answers, else an
    embedded one is started and shared by all workers, and
    EMBEDDED_REDIS=true tells the app it runs on it.
    """
    if os.environ.get("REDIS_URL"):
        return
    port = int(os.environ.get("LOCAL_REDIS_PORT", "6379"))
    if redis_answers(port=port):
        os.environ["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        log.info("using the local Redis at 127.0.0.1:%d", port)
        return
    url = start_fake_redis()
    os.environ["REDIS_URL"] = url
    os.environ["EMBEDDED_REDIS"] = "true"
    os.environ["REDIS_CLUSTER"] = "false"  # fakeredis: never a cluster
    log.warning(BANNER.format(url=url))

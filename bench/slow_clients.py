"""Slow clients and floods against the service under gunicorn (bench/README.md).

Starts a private redis-server and the service of a checkout (``--root``, this
one by default, with that checkout's ``.venv`` and ``gunicorn.conf.py`` and its
defaults: 2 x CPUs workers, its worker class, REQUEST_READ_TIMEOUT), then:

1. for each count of slow connections (``--slow``, default 0,50,300): holds
   that many open for ``--seconds`` (trickling headers, trickling a body,
   sending nothing, idle keep-alive; opened over 2 s, each reopened when the
   server closes it), while /healthz is probed every 100 ms on a new
   connection and one client sends normal PUTs one after the other;
2. a flood (``--flood``, default 256 connections, ``--flood-seconds`` 5): keep-alive
   PUTs as fast as they are answered, probes meanwhile, and the 200s per
   second of 16 connections before and after it.

Prints one table. Loopback only; everything started is stopped at the end.
The slow connections, probes and flood are tests/loadgen.py, as in the tests.

    .venv/bin/python bench/slow_clients.py                 # this checkout
    .venv/bin/python bench/slow_clients.py --root /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.loadgen import (  # noqa: E402 (after the path is set)
    Prober,
    SlowClients,
    flood,
    get_bytes,
    one_shot,
    percentile,
    put_bytes,
)
from tests.support import free_port  # noqa: E402

PATH = "/metax/3.0/ui/user/stat/"


def token(secret: str) -> str:
    import jwt

    claims = {"sub": "bench", "exp": int(time.time()) + 86_400, "scope": "stat:admin"}
    return jwt.encode(claims, secret, algorithm="HS256")


class Stack:
    """A private redis-server and gunicorn from ``root``, with its defaults."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.workdir = Path(tempfile.mkdtemp(prefix="stat-slow-"))
        self.redis_port = free_port()
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.secret = secrets.token_urlsafe(48)
        self.port = free_port()
        full = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("GUNICORN_", "JWT_", "REDIS_", "PROMETHEUS_"))
        }
        full.update(
            HOST="127.0.0.1",
            PORT=str(self.port),
            REDIS_URL=f"redis://127.0.0.1:{self.redis_port}/0",
            JWT_SECRET=self.secret,
            KEY_PREFIX=f"slowbench:{secrets.token_hex(4)}:",
            LOG_LEVEL="warning",
        )
        full.update(env)
        self.log = self.workdir / "gunicorn.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(root / ".venv" / "bin" / "gunicorn"), "-c", "gunicorn.conf.py",
                 "wsgi:app"],
                cwd=root, env=full, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while one_shot(self.port, get_bytes("/healthz"), timeout=1)[0] != 200:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"service did not start:\n{self.log.read_text()}")
            time.sleep(0.1)
        time.sleep(2.0)  # every worker booted
        self.token = token(self.secret)

    def stop(self) -> None:
        for proc in (self.proc, self.redis):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def figures(results: list[tuple[int, float]]) -> dict:
    times = [t * 1000 for _, t in results]
    return {
        "n": len(results),
        "failed": sum(s != 200 for s, _ in results),
        "statuses": dict(Counter(s for s, _ in results)),
        "p50_ms": round(percentile(times, 0.50), 1),
        "p99_ms": round(percentile(times, 0.99), 1),
        "max_ms": round(max(times, default=0.0), 1),
    }


def putter(port: int, tok: str, halt: threading.Event, out: list) -> None:
    n = 0
    while not halt.is_set():
        n += 1
        out.append(one_shot(port, put_bytes(tok, "normal@example.org", n)))
        time.sleep(0.05)


def slow_round(stack: Stack, count: int, seconds: float) -> dict:
    slow = SlowClients(
        stack.port,
        count,
        token=stack.token,
        trickle_path=PATH + "slow@example.org",
        interval=1.0,  # one byte a second, as in the issue
        ramp=2.0,
    )
    if count:
        slow.start()
        slow.started_all.wait(30)
        time.sleep(0.5)
    prober = Prober(stack.port)
    halt, puts = threading.Event(), []
    put_thread = threading.Thread(
        target=putter, args=(stack.port, stack.token, halt, puts)
    )
    prober.start()
    put_thread.start()
    time.sleep(seconds)
    halt.set()
    probes = prober.stop()
    put_thread.join(timeout=60)
    if count:
        slow.stop()
    ends = Counter(
        f"{c.kind}: {c.status or ('reset' if c.reset else 'closed')}" for c in slow.done
    )
    return {
        "slow": count,
        "healthz": figures(probes),
        "puts": figures(puts),
        "slow_ends": dict(ends),
    }


def flood_round(stack: Stack, connections: int, seconds: float) -> dict:
    before = flood(stack.port, 16, 3.0, stack.token)
    prober = Prober(stack.port)
    prober.start()
    during = flood(stack.port, connections, seconds, stack.token)
    probes = prober.stop()
    time.sleep(1.0)
    after = flood(stack.port, 16, 3.0, stack.token)
    return {
        "connections": connections,
        "seconds": seconds,
        "counts": during["counts"],
        "ok_per_s": round(during["ok_per_s"]),
        "healthz": figures(probes),
        "before_ok_per_s": round(before["ok_per_s"]),
        "after_ok_per_s": round(after["ok_per_s"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--slow", default="0,50,300")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--flood", default="256", help="connections, comma-separated")
    parser.add_argument("--flood-seconds", type=float, default=5)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    stack = Stack(args.root.resolve(), env)
    rows = []
    try:
        for count in (int(c) for c in args.slow.split(",") if c.strip()):
            rows.append(slow_round(stack, count, args.seconds))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        for conns in (int(c) for c in args.flood.split(",") if c.strip()):
            rows.append(flood_round(stack, conns, args.flood_seconds))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        stack.stop()
    print(f"\n{args.root.resolve()}  load average {os.getloadavg()[0]:.2f}")
    print(
        f"{'scenario':<26}{'healthz p50':>12}{'p99':>9}{'max':>9}{'failed':>8}  other"
    )
    for row in rows:
        h = row["healthz"]
        if "slow" in row:
            name = f"{row['slow']} slow connections"
            other = f"PUTs {row['puts']['statuses']} p99 {row['puts']['p99_ms']} ms"
        else:
            name = f"flood, {row['connections']} connections"
            other = (
                f"{row['counts']}, {row['ok_per_s']} 200/s "
                f"(before {row['before_ok_per_s']}, after {row['after_ok_per_s']})"
            )
        print(
            f"{name:<26}{h['p50_ms']:>10.1f}ms{h['p99_ms']:>7.1f}ms{h['max_ms']:>7.1f}ms"
            f"{h['failed']:>8}  {other}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

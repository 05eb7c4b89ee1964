"""Bulk import against HTTP PUTs of the same file (see bench/IMPORT.md).

Generates SUBSCRIBERS x ASSETS x FAVORITES with bench/gen_import.py, starts a
private redis-server, imports the file with ``python -m stat_service import``
(overwrite) for each --jobs value, measuring subscribers/s and peak RSS, then
sends a sample of the same subscribers as one ``PUT ?isDelta=false`` each to
the service under gunicorn (wrk, keep-alive) and prints the ratios.
Everything started is stopped again, also on Ctrl-C and on errors.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from tests.support import RedisServer, free_port  # noqa: E402

STAT_PATH = "/metax/3.0/ui/user/stat/"
# The targets.
MIN_RATE_ONE_PROCESS = 5_000  # subscribers/s, overwrite, --jobs 1
MIN_HTTP_RATIO = 5.0
MAX_RSS_MB = 150


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


SUBSCRIBERS = env_int("BENCH_SUBSCRIBERS", 100_000)
ASSETS = env_int("BENCH_ASSETS", 10)
FAVORITES = env_int("BENCH_FAVORITES", 5)
HTTP_SAMPLE = env_int("BENCH_HTTP_SAMPLE", 10_000)
HTTP_SECONDS = env_int("BENCH_HTTP_SECONDS", 10)
JOBS = [int(j) for j in os.environ.get("BENCH_JOBS", "1,2").split(",")]
STRICT = os.environ.get("BENCH_STRICT", "1") not in ("0", "false", "no", "")
PYTHON = sys.executable


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- memory of a process tree ---------------------------------------------------


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _hwm_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class TreeMemory(threading.Thread):
    """Peak RSS (VmHWM) of a process and its children, sampled every 50 ms."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.peaks: dict[int, int] = {}  # pid -> kB
        self._finished = threading.Event()

    def run(self) -> None:
        while not self._finished.is_set():
            pids = [self.pid]
            for entry in os.scandir("/proc"):
                if entry.name.isdigit() and _ppid(int(entry.name)) == self.pid:
                    pids.append(int(entry.name))
            for pid in pids:
                kb = _hwm_kb(pid)
                if kb:
                    self.peaks[pid] = max(self.peaks.get(pid, 0), kb)
            self._finished.wait(0.05)

    def stop(self) -> None:
        self._finished.set()
        self.join()


# --- the importer -----------------------------------------------------------------


def run_import(path: Path, url: str, jobs: int, prefix: str) -> dict:
    env = {**os.environ, "KEY_PREFIX": prefix, "PYTHONPATH": str(ROOT)}
    env.pop("REDIS_URL", None)
    args = [PYTHON, "-m", "stat_service", "import", str(path), "--redis-url", url]
    args += ["--jobs", str(jobs)]
    started = time.monotonic()
    proc = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    memory = TreeMemory(proc.pid)
    memory.start()
    stderr = proc.stderr.read()
    # wait4: the importer's own peak RSS, measured by the kernel.
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    memory.stop()
    proc.stderr.close()
    summary = stderr.decode(errors="replace").strip().splitlines()
    if proc.returncode != 0:
        raise RuntimeError(f"import --jobs {jobs} exited {proc.returncode}: {summary}")
    main_kb = max(usage.ru_maxrss, memory.peaks.get(proc.pid, 0))
    workers = [kb for pid, kb in memory.peaks.items() if pid != proc.pid]
    return {
        "jobs": jobs,
        "seconds": seconds,
        "rate": SUBSCRIBERS / seconds,
        "main_rss_mb": main_kb / 1024,
        "worker_rss_mb": [kb / 1024 for kb in workers],
        "total_rss_mb": (main_kb + sum(workers)) / 1024,
        "summary": summary[-1] if summary else "",
    }


# --- HTTP ---------------------------------------------------------------------------

WRK_SCRIPT = r"""
local requests = {}
local index = 0
init = function(args)
  local token = os.getenv("BENCH_TOKEN")
  local headers = {["Authorization"] = "Bearer " .. token,
                   ["Content-Type"] = "application/json"}
  for line in io.lines(os.getenv("BENCH_REQUESTS")) do
    local path, body = line:match("^([^\t]*)\t(.*)$")
    requests[#requests + 1] = wrk.format("PUT", path, headers, body)
  end
  index = math.random(#requests)
end
request = function()
  index = index % #requests + 1
  return requests[index]
end
"""


def admin_token(secret: str) -> str:
    import jwt

    claims = {"sub": "bench", "exp": int(time.time()) + 3600, "scope": "stat:admin"}
    return jwt.encode(claims, secret, algorithm="HS256")


def write_requests(source: Path, target: Path, count: int) -> int:
    written = 0
    with open(source, "rb") as src, open(target, "w") as out:
        for line in src:
            if written >= count:
                break
            body = json.loads(line)
            sid = body.pop("subscriber_id")
            path = STAT_PATH + quote(sid, safe="") + "?isDelta=false"
            out.write(path + "\t" + json.dumps(body, separators=(",", ":")) + "\n")
            written += 1
    return written


class Gunicorn:
    def __init__(self, env: dict, logfile: Path):
        self.port = free_port()
        self.logfile = logfile
        binary = Path(PYTHON).parent / "gunicorn"
        with open(logfile, "wb") as out:
            self.proc = subprocess.Popen(
                [str(binary), "-c", "gunicorn.conf.py", "wsgi:app"],
                cwd=ROOT,
                env={**env, "PORT": str(self.port), "HOST": "127.0.0.1"},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    "gunicorn exited:\n" + self.logfile.read_text(errors="replace")
                )
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
                conn.close()
            time.sleep(0.1)
        raise RuntimeError("gunicorn did not become ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session
                self.proc.wait()


def run_wrk(port: int, requests: Path, token: str, script: Path, seconds: int):
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    env = {**os.environ, "BENCH_TOKEN": token, "BENCH_REQUESTS": str(requests)}
    args = [wrk, "-t2", "-c16", f"-d{seconds}s", "-s", str(script)]
    done = subprocess.run(
        [*args, f"http://127.0.0.1:{port}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    rate = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    if done.returncode != 0 or rate is None:
        raise RuntimeError(f"wrk failed:\n{done.stdout}\n{done.stderr}")
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", done.stdout)
    return float(rate.group(1)), int(errors.group(1)) if errors else 0


def run_http(path: Path, redis_url: str, workdir: Path) -> dict:
    secret = secrets.token_hex(32)
    requests = workdir / "requests.tsv"
    sample = write_requests(path, requests, HTTP_SAMPLE)
    script = workdir / "put.lua"
    script.write_text(WRK_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in list(env):
        if name.startswith("JWT_"):
            env.pop(name)
    env.update(
        REDIS_URL=redis_url,
        JWT_SECRET=secret,
        KEY_PREFIX="bench-http:",
        GUNICORN_ACCESSLOG="",
        LOG_LEVEL="warning",
    )
    workers = int(env.get("WEB_CONCURRENCY") or 2 * (os.cpu_count() or 1))
    env["WEB_CONCURRENCY"] = str(workers)
    server = Gunicorn(env, workdir / "gunicorn.log")
    try:
        server.wait_ready()
        token = admin_token(secret)
        run_wrk(server.port, requests, token, script, 2)  # warm-up
        rate, errors = run_wrk(server.port, requests, token, script, HTTP_SECONDS)
    finally:
        server.stop()
    if errors:
        raise RuntimeError(f"{errors} PUTs were not 2xx")
    return {"rate": rate, "workers": workers, "sample": sample}


# --- main ---------------------------------------------------------------------------


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="stat-import-bench-"))
    server = None
    try:
        data = workdir / "import.jsonl"
        log(
            f"generating {SUBSCRIBERS:,} subscribers x {ASSETS} assets x "
            f"{FAVORITES} favorites"
        )
        subprocess.run(
            [
                PYTHON,
                str(BENCH / "gen_import.py"),
                "--subscribers",
                str(SUBSCRIBERS),
                "--assets",
                str(ASSETS),
                "--favorites",
                str(FAVORITES),
                "--out",
                str(data),
            ],
            check=True,
        )
        size_mb = data.stat().st_size / 1e6
        server = RedisServer().start()
        import redis

        admin = redis.Redis.from_url(server.url)
        results = []
        for jobs in JOBS:
            admin.flushall()
            admin.config_resetstat()
            log(f"import --jobs {jobs} ...")
            result = run_import(data, server.url, jobs, "bench:")
            calls = admin.info("commandstats").get("cmdstat_evalsha", {})
            result["evalsha"] = calls.get("calls", 0)
            results.append(result)
        admin.flushall()
        log(f"HTTP PUT, wrk -t2 -c16 for {HTTP_SECONDS} s ...")
        http = run_http(data, server.url, workdir)
        admin.close()
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
        log(f"bench failed: {exc}")
        return 2
    finally:
        if server is not None:
            server.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"\nfile: {SUBSCRIBERS:,} subscribers x {ASSETS} assets x {FAVORITES} "
        f"favorites, {size_mb:,.0f} MB JSONL; {os.cpu_count()} CPUs; overwrite mode"
    )
    print(f"{'run':<34}{'subscribers/s':>14}{'seconds':>9}{'peak RSS MB':>24}")
    for r in results:
        rss = f"{r['main_rss_mb']:.0f}"
        if r["worker_rss_mb"]:
            workers = "+".join(f"{w:.0f}" for w in r["worker_rss_mb"])
            rss = f"{rss} (+{workers} workers)"
        print(
            f"{'import --jobs ' + str(r['jobs']):<34}{r['rate']:>14,.0f}"
            f"{r['seconds']:>9.1f}{rss:>24}"
        )
        print(f"    {r['summary']}; EVALSHA calls: {r['evalsha']:,}")
    label = f"HTTP PUT ({http['workers']} gunicorn workers)"
    print(f"{label:<34}{http['rate']:>14,.0f}")
    print(f"    wrk -t2 -c16 -d{HTTP_SECONDS}s over {http['sample']:,} subscribers")
    checks = []
    for r in results:
        ratio = r["rate"] / http["rate"]
        print(f"ratio import --jobs {r['jobs']} / HTTP: {ratio:.1f}x")
        if r["jobs"] == 1:
            checks.append(
                (
                    f">= {MIN_RATE_ONE_PROCESS:,} subscribers/s from one process",
                    r["rate"] >= MIN_RATE_ONE_PROCESS,
                )
            )
        checks.append(
            (
                f">= {MIN_HTTP_RATIO:.0f}x HTTP with --jobs {r['jobs']}",
                ratio >= MIN_HTTP_RATIO,
            )
        )
        checks.append(
            (
                f"importer peak RSS < {MAX_RSS_MB} MB per process (--jobs {r['jobs']})",
                max([r["main_rss_mb"], *r["worker_rss_mb"]]) < MAX_RSS_MB,
            )
        )
        checks.append(
            (
                f"one EVALSHA per subscriber (--jobs {r['jobs']})",
                r["evalsha"] == SUBSCRIBERS,
            )
        )
    print()
    for name, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    failed = not all(ok for _, ok in checks)
    return 1 if failed and STRICT else 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a request's CPU goes, in one process: the service against the ceiling.

    .venv/bin/python bench/profile_requests.py [--requests 3000] [--top 25]

Calls the WSGI apps directly (no server, no sockets but Redis's), so the
figures are the application's own work per request: the service's
``create_app`` on a real Redis (``REDIS_URL``, else 127.0.0.1:6379, under
a key prefix of its own that is deleted afterwards) and ``bench/ceiling.py``,
for the bench's four scenarios (10-asset delta and overwrite PUT, GET of 50
records, the activity mix). Prints microseconds per request of both, then a
cProfile of the service grouped by where the time is spent (the module of
each function, own time), the "next biggest cost" of the performance work.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time
from collections import defaultdict

import jwt
import redis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", "")
os.environ.pop("PROMETHEUS_MULTIPROC_DIR")

from bench import ceiling  # noqa: E402
from stat_service import create_app  # noqa: E402

SECRET = "p" * 64
SUBSCRIBERS = 200


def body(sub: int, assets: range, favorites: int = 5) -> bytes:
    records = [
        {
            "asset_id": f"asset{a:05d}",
            "play_count": 3,
            "view_time": 1200 + a,
            "pause_time": 300 + a,
            "last_played_on": 1760000000 + a,
            "user_rating": 4.5,
        }
        for a in assets
    ]
    favs = [f"asset{a:05d}" for a in range(favorites)]
    return json.dumps({"favorites": favs, "view_data": records}).encode()


def environ(method: str, path: str, query: str = "", data: bytes = b"", token=""):
    ctype = "application/json" if data else ""
    return {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "RAW_URI": path + ("?" + query if query else ""),
        "QUERY_STRING": query,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "8080",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_TYPE": ctype,
        "CONTENT_LENGTH": str(len(data)),
        "HTTP_AUTHORIZATION": f"Bearer {token}",
        "wsgi.input": io.BytesIO(data),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def scenarios(token: str):
    """name -> list of (method, path, query, body) for ``SUBSCRIBERS`` ids."""
    stat = "/metax/3.0/ui/user/stat/"
    act = "/metax/2.1/activity/"
    out = defaultdict(list)
    for i in range(SUBSCRIBERS):
        sub = f"user{i:05d}@example.org"
        out["put-delta"].append(
            ("PUT", stat + sub, "isDelta=true", body(i, range(10, 20)))
        )
        out["put-overwrite"].append(
            ("PUT", stat + sub, "isDelta=false", body(i, range(10)))
        )
        out["get"].append(("GET", stat + sub, "", b""))
        asset = f"asset{i % 50:05d}"
        out["activity"] += [
            ("PUT", f"{act}pausetime/{sub}/{asset}", f"time={10000 + i}", b""),
            ("PUT", f"{act}fav/{sub}/{asset}", "", b""),
            ("GET", f"{act}continue/{sub}", "limit=20", b""),
        ]
    return out


def run(app, requests, token: str, count: int) -> float:
    """Microseconds per request over ``count`` requests (cycling)."""
    status = []

    def start_response(s, headers, exc_info=None):
        status.append(s)

    started = time.process_time()
    for n in range(count):
        method, path, query, data = requests[n % len(requests)]
        result = app(environ(method, path, query, data, token), start_response)
        b"".join(result)
        if hasattr(result, "close"):
            result.close()
    elapsed = time.process_time() - started
    bad = [s for s in status if not s.startswith(("200", "204"))]
    if bad:
        raise SystemExit(f"unexpected answers: {bad[:3]}")
    return elapsed / count * 1e6


def module_of(path: str) -> str:
    if "stat_service" in path:
        return "stat_service/" + path.rsplit("stat_service/", 1)[1]
    for lib in (
        "flask",
        "werkzeug",
        "redis",
        "marshmallow",
        "jwt",
        "prometheus_client",
        "logging",
        "json",
        "orjson",
    ):
        if f"/{lib}/" in path or path.endswith(f"/{lib}.py"):
            return lib
    return "other (" + os.path.basename(path) + ")" if path.startswith("/") else path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--functions",
        type=int,
        default=0,
        help="list the top N functions by cumulative time too",
    )
    parser.add_argument("--only", default="", help="only this scenario")
    args = parser.parse_args()

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"profile{os.getpid()}:"
    service = create_app(
        {
            "JWT_SECRET": SECRET,
            "KEY_PREFIX": prefix,
            "REDIS_URL": url,
            "LOG_LEVEL": "WARNING",
        }
    )
    import logging

    logging.getLogger("stat_service.access").setLevel(logging.WARNING)
    token = jwt.encode(
        {"sub": "bench", "scope": "stat:admin", "exp": int(time.time()) + 3600},
        SECRET,
        algorithm="HS256",
    )
    plan = scenarios(token)
    client = redis.Redis.from_url(url)
    try:
        # Pre-load: 50 assets and 5 favorites each.
        for i in range(SUBSCRIBERS):
            sub = f"user{i:05d}@example.org"
            run(
                service,
                [
                    (
                        "PUT",
                        "/metax/3.0/ui/user/stat/" + sub,
                        "isDelta=false",
                        body(i, range(50)),
                    )
                ],
                token,
                1,
            )
        print(f"{'scenario':<14} {'service us':>11} {'ceiling us':>11} {'ratio':>6}")
        for name, requests in plan.items():
            run(service, requests, token, min(300, args.requests))  # warm up
            ours = run(service, requests, token, args.requests)
            ceil = run(ceiling.app, requests, token, args.requests)
            print(f"{name:<14} {ours:>11.1f} {ceil:>11.1f} {ceil / ours:>6.2f}")
        for name, requests in plan.items():
            if args.only and name != args.only:
                continue
            profile = cProfile.Profile()
            profile.enable()
            run(service, requests, token, args.requests)
            profile.disable()
            stats = pstats.Stats(profile)
            total = stats.total_tt
            groups: dict[str, float] = defaultdict(float)
            for (path, _line, _func), row in stats.stats.items():
                groups[module_of(path)] += row[2]  # own time
            print(
                f"\n{name}: own time by module, us/request "
                f"(of {total / args.requests * 1e6:.0f} profiled)"
            )
            for module, seconds in sorted(groups.items(), key=lambda kv: -kv[1])[
                : args.top
            ]:
                print(f"  {seconds / args.requests * 1e6:8.1f}  {module}")
            if args.functions:
                print("  top functions by cumulative time:")
                rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][3])
                for (path, line, func), row in rows[: args.functions]:
                    print(
                        f"  {row[3] / args.requests * 1e6:8.1f}  "
                        f"{row[1] / args.requests:5.1f}x  "
                        f"{module_of(path)}:{line} {func}"
                    )
    finally:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        client.close()


if __name__ == "__main__":
    main()

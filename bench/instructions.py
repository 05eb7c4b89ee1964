"""Instructions per request, counted by valgrind: the service against the ceiling.

    .venv/bin/python bench/instructions.py [--scenarios get,put-delta,put-overwrite]

Wall-clock figures on these shared machines move by 10-20% from one run to
the next, even as medians of rounds (bench/README.md); instruction counts
do not. For each scenario of bench/profile_requests.py (not the activity
mix) this runs the service's WSGI app (``create_app``, the express lane
included) and bench/ceiling.py in-process, each in a child Python under
``valgrind --tool=callgrind`` with ``PYTHONHASHSEED=0``, twice (N1 and N2
requests), and prints (Ir(N2) - Ir(N1)) / (N2 - N1): the instructions of
one request, start-up left out. Two runs agree to within about 0.1%.

The Redis call is replaced by the reply its script gives (``call_script``
returns it; the read script's is a 50-record history as the bench stores
it), so what is counted is the application's own work, from the environ
to the body, Redis's client library's included only as far as our code
calls into it. Not counted: gunicorn, gevent, the sockets, redis-py and
Redis itself, which ``make bench`` measures. To compare two commits, run
this file in each checkout (it needs bench/profile_requests.py there).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIOS = ("get", "put-delta", "put-overwrite")
COUNTS = (100, 1100)


def child(target: str, scenario: str, count: int) -> None:
    """Answer ``count`` requests of ``scenario`` with one app, then exit."""
    sys.path.insert(0, ROOT)
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    import jwt

    from bench import profile_requests as plan

    token = jwt.encode(
        {"sub": "bench", "scope": "stat:admin", "exp": int(time.time()) + 3600},
        plan.SECRET,
        algorithm="HS256",
    )
    if target == "ceiling":
        from bench.ceiling import app
    else:
        app = _service(plan)
    requests = plan.scenarios(token)[scenario]
    plan.run(app, requests, token, count)


def _service(plan):
    from stat_service import create_app
    from stat_service.storage import store as store_module
    from stat_service.storage.records import encode_record

    app = create_app(
        {
            "JWT_SECRET": plan.SECRET,
            "KEY_PREFIX": "instructions:",
            "REDIS_URL": "redis://127.0.0.1:1/0",  # never connected to
            "LOG_LEVEL": "WARNING",
        }
    )
    import logging

    logging.getLogger("stat_service.access").setLevel(logging.WARNING)
    # What read.lua returns for a subscriber the bench pre-loads (50 assets,
    # 5 favorites; profile_requests.body), and what a write returns.
    history = json.loads(plan.body(0, range(50)))
    flat = []
    for record in history["view_data"]:
        flat += [record["asset_id"], encode_record(record)]
    favorites = "\x1f".join(history["favorites"])
    read_reply = (favorites + "\x1e" + "\x1f".join(flat)).encode()
    read_script = app.extensions["stat_store"].read_call("")[0]
    replies = {id(read_script): read_reply}

    def call_script(script, keys, args):
        return replies.get(id(script), [0, 5, 0])

    store_module.call_script = call_script
    return app


def count(target: str, scenario: str, requests: int) -> int:
    """valgrind's instruction total for a child answering ``requests``."""
    out = f"/tmp/instructions-{os.getpid()}.out"
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        target,
        scenario,
        str(requests),
    ]
    env = dict(os.environ, PYTHONHASHSEED="0")
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if os.path.exists(out):
        os.unlink(out)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode or not found:
        raise SystemExit(f"{target} {scenario}: valgrind:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def per_request(target: str, scenario: str) -> int:
    small, large = (count(target, scenario, n) for n in COUNTS)
    return (large - small) // (COUNTS[1] - COUNTS[0])


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is needed (apt-get install valgrind)")
    print("instructions per request, in-process (Redis's reply canned)")
    print(f"{'scenario':<14} {'service':>12} {'ceiling':>12}  ratio")
    for scenario in args.scenarios.split(","):
        ours = per_request("service", scenario)
        ceiling = per_request("ceiling", scenario)
        print(f"{scenario:<14} {ours:>12,} {ceiling:>12,}  {ceiling / ours:.2f}")


if __name__ == "__main__":
    main()

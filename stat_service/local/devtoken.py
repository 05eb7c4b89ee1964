"""Print a signed HS256 token for local use:
``python -m stat_service.local.devtoken SUB``.

Signed with JWT_SECRET when set, else with the development secret in the
file JWT_DEV_SECRET_FILE names, made when missing (``make token`` and
``make run`` both name the checkout's .dev-secret).
"""

from __future__ import annotations

import argparse
import os
import time

import jwt

from ..config import ConfigError
from . import devsecret


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sub", help="the subscriber id the token is for")
    parser.add_argument("--admin", action="store_true", help="add the admin scope")
    parser.add_argument(
        "--ttl", type=int, default=3600, help="seconds until it expires"
    )
    args = parser.parse_args(argv)
    secret = os.environ.get("JWT_SECRET")
    if not secret:
        path = os.environ.get(devsecret.SETTING)
        if not path:
            parser.error(f"set JWT_SECRET or {devsecret.SETTING} (make token does)")
        try:
            secret = devsecret.load_or_create(path)
        except ConfigError as exc:
            parser.exit(2, f"{parser.prog}: {exc}\n")
    claims = {"sub": args.sub, "exp": int(time.time()) + args.ttl}
    if args.admin:
        claims["scope"] = os.environ.get("JWT_ADMIN_SCOPE", "stat:admin")
    print(jwt.encode(claims, secret, algorithm="HS256"))


if __name__ == "__main__":
    main()

"""Print a signed HS256 token for local use: ``python -m stat_service.devtoken SUB``."""

from __future__ import annotations

import argparse
import os
import time

import jwt

from .config import DEV_JWT_SECRET


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sub", help="the subscriber id the token is for")
    parser.add_argument("--admin", action="store_true", help="add the admin scope")
    parser.add_argument(
        "--ttl", type=int, default=3600, help="seconds until it expires"
    )
    args = parser.parse_args(argv)
    secret = os.environ.get("JWT_SECRET") or DEV_JWT_SECRET
    claims = {"sub": args.sub, "exp": int(time.time()) + args.ttl}
    if args.admin:
        claims["scope"] = os.environ.get("JWT_ADMIN_SCOPE", "stat:admin")
    print(jwt.encode(claims, secret, algorithm="HS256"))


if __name__ == "__main__":
    main()

"""Generate an import file: N subscribers x A assets x F favorites (JSONL or CSV).

    python bench/gen_import.py --subscribers 100000 --assets 10 --favorites 5 \
        --out /tmp/import.jsonl            # .gz compresses; - for stdout
    python bench/gen_import.py --mixed ... # every field, nulls, empty records

Deterministic for a given --seed. Plain: every record has all five fields.
``--mixed``: awkward ids (braces, %, unicode), absent and null fields, integer
and decimal ratings, empty records, subscribers with only favorites, only
view data, repeated favorites and assets, and nothing at all.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stat_service.bulk.sources import CSV_COLUMNS  # noqa: E402
from stat_service.storage.records import RECORD_FIELDS  # noqa: E402

COLUMNS = CSV_COLUMNS
FIELDS = RECORD_FIELDS
RATINGS = (0, 1, 2, 3, 3.5, 4, 4.5, 5, 0.1, 2.25)
AWKWARD = ("{x}", "a%7Bb", "100%", "Ünïcødé-用户", "a b/c", "}{", "%25")


def subscriber_id(i: int, rnd: random.Random, mixed: bool) -> str:
    base = f"user{i:07d}@example.org"
    if mixed and rnd.random() < 0.1:
        return rnd.choice(AWKWARD) + base
    return base


def record(rnd: random.Random, asset: str, mixed: bool) -> dict:
    values = {
        "play_count": rnd.randrange(1, 50),
        "view_time": rnd.randrange(0, 20_000),
        "pause_time": rnd.randrange(0, 7_200),
        "last_played_on": 1_700_000_000_000 + rnd.randrange(0, 10**10),
        "user_rating": rnd.choice(RATINGS),
    }
    if not mixed:
        return {"asset_id": asset, **values}
    out: dict = {"asset_id": asset}
    shape = rnd.random()
    if shape < 0.1:
        return out  # an empty record
    for name, value in values.items():
        roll = rnd.random()
        if roll < 0.6:
            out[name] = value
        elif roll < 0.75:
            out[name] = None  # the same as absent in overwrite mode
    if rnd.random() < 0.05:
        out["play_count"] = 9007199254740991
    return out


def subscriber(i: int, rnd: random.Random, args) -> dict:
    sid = subscriber_id(i, rnd, args.mixed)
    assets = [f"asset-{rnd.randrange(1_000_000):06d}" for _ in range(args.assets)]
    favorites = [f"asset-{rnd.randrange(1_000_000):06d}" for _ in range(args.favorites)]
    body: dict = {"subscriber_id": sid}
    if not args.mixed:
        body["favorites"] = favorites
        body["view_data"] = [record(rnd, a, False) for a in assets]
        return body
    shape = rnd.random()
    if shape < 0.05:
        return body  # nothing at all: stores nothing
    if shape < 0.15:
        body["favorites"] = favorites + favorites[:1]  # repeated guid
        return body
    if shape < 0.25:
        body["view_data"] = [record(rnd, a, True) for a in assets]
        return body
    body["favorites"] = favorites
    view = [record(rnd, a, True) for a in assets]
    if view and rnd.random() < 0.1:
        view.append(record(rnd, view[0]["asset_id"], True))  # a repeated asset
    body["view_data"] = view
    return body


def csv_rows(body: dict):
    """The rows of one subscriber (nulls become empty cells)."""
    sid = body["subscriber_id"]
    favorites = body.get("favorites") or []
    for fav in favorites:
        yield [sid, fav, "", "", "", "", "", "true"]
    for rec in body.get("view_data") or []:
        cells = ["" if rec.get(n) is None else str(rec[n]) for n in FIELDS]
        yield [sid, rec["asset_id"], *cells, ""]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--assets", type=int, default=10)
    parser.add_argument("--favorites", type=int, default=5)
    parser.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    parser.add_argument("--mixed", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="-")
    args = parser.parse_args(argv)
    rnd = random.Random(args.seed)
    if args.out == "-":
        raw = sys.stdout.buffer
    elif args.out.endswith(".gz"):
        raw = gzip.open(args.out, "wb", compresslevel=1)  # noqa: SIM115
    else:
        raw = open(args.out, "wb")  # noqa: SIM115
    out = io.TextIOWrapper(raw, encoding="utf-8", newline="")
    writer = csv.writer(out, lineterminator="\n") if args.format == "csv" else None
    if writer is not None:
        writer.writerow(COLUMNS)
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    for i in range(args.subscribers):
        body = subscriber(i, rnd, args)
        if writer is None:
            out.write(dumps(body) + "\n")
        else:
            writer.writerows(csv_rows(body))
    out.flush()
    if raw is not sys.stdout.buffer:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

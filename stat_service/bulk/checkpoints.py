"""Checkpoints: where an interrupted import resumes.

After each batch is executed, the checkpoint file is replaced atomically with
the last input line committed (every line up to it is either in Redis or in
the rejects file), the counters, the rejects file's size and a fingerprint
of the run (input path, size, mtime, format, mode, key prefix, Redis
server). Rerun with the same arguments, the import skips the lines up to it,
truncates the rejects file back to that size and goes on. Lines committed
after the checkpoint was written are applied again: every write sets
absolute values (overwrite replaces the whole history, delta assigns
fields), so applying a subscriber's lines again in order leaves the state of
an uninterrupted run. Standard input cannot be resumed.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile

from redis.cluster import RedisCluster

from ..storage.client import real_client
from .sources import UnusableInput

CHECKPOINT_VERSION = 1


def redis_target(client) -> str:
    client = real_client(client)
    if isinstance(client, RedisCluster):  # every node, so a failover is no change
        return "cluster:" + ",".join(sorted(node.name for node in client.get_nodes()))
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix:{kwargs['path']}/{kwargs.get('db', 0)}"
    return f"{kwargs.get('host')}:{kwargs.get('port')}/{kwargs.get('db', 0)}"


def write_json_atomically(path: str, data: dict) -> None:
    """Write ``path`` so that it is always either the old or the new content."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", dir=directory)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=1)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_checkpoint(path: str, fingerprint: dict) -> dict | None:
    """The saved state for this very run, None when there is none yet."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UnusableInput(f"checkpoint {path} is unreadable: {exc}") from None
    if saved.get("version") != CHECKPOINT_VERSION:
        raise UnusableInput(f"checkpoint {path}: unknown version")
    if saved.get("fingerprint") != fingerprint:
        raise UnusableInput(
            f"checkpoint {path} belongs to another run (input file, its size or "
            "time, format, mode, key prefix or Redis server differ): delete it to "
            "start over"
        )
    return saved

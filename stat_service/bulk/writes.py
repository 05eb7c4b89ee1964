"""Writing validated subscribers: pipelined Lua calls, here or in worker processes.

Writes: overwrite (the default) or delta, one EVALSHA of the API's own
script per subscriber, queued on a non-transactional pipeline and sent
``batch`` subscribers per round trip. A Redis failure aborts the run (exit
2) after the last committed batch; rerunning is safe (see checkpoints.py).
With ``jobs`` > 1 a pool of worker processes validates and writes, each the
subscribers ``route`` sends it (importer.py says how blocks are committed).
"""

from __future__ import annotations

import dataclasses
import queue
import re
import signal
import zlib
from collections.abc import Callable

import orjson
import redis
from redis.cluster import RedisCluster
from redis.exceptions import AskError, NoScriptError

from ..storage.client import real_client, refresh_topology
from ..storage.store import Bounds, HistoryFull, StatStore
from .checks import reject
from .sources import CsvGroup


@dataclasses.dataclass
class BlockResult:
    read: int  # records (lines or rows) processed
    applied: int  # subscribers written
    rejects: list  # reject details, in line order
    stopped_at: int | None = None  # last line processed when the budget ran out


def process_block(
    store: StatStore,
    entries,
    validate: Callable,
    delta: bool,
    budget: int | None = None,
) -> BlockResult:
    """Validate entries and write the valid ones in one pipelined round trip.

    With ``budget``, stops after the reject that exceeds it; everything
    validated before is still written. A subscriber whose write the bounds
    refuse (MAX_RECORDS, MAX_FAVORITES) is a reject with the API's 409
    reason, and nothing of it is written.
    """
    calls = []
    sent = []  # (line, subscriber id, assets written) of each call
    script_call = store.script_call
    read = 0
    rejects: list = []
    stopped_at = None

    def refuse(detail) -> bool:
        rejects.append(detail)
        return budget is not None and len(rejects) > budget

    for entry in entries:
        outcome = validate(entry)
        read += entry[2]
        if outcome.__class__ is dict:
            if refuse(outcome):
                stopped_at = entry[1]
                break
            continue
        subscriber_id = outcome[0]
        try:
            script, keys, args, written = script_call(
                subscriber_id, outcome[1], delta=delta
            )
        except HistoryFull as exc:
            if refuse(reject(entry[0], subscriber_id, 409, exc.reason)):
                stopped_at = entry[1]
                break
            continue
        calls.append((script, keys, args))
        sent.append((entry[0], subscriber_id, written))
    applied = len(calls)
    if calls:
        for (line, subscriber_id, written), reply in zip(
            sent, send(store, calls), strict=True
        ):
            try:
                store.put_result(reply, written)
            except HistoryFull as exc:
                rejects.append(reject(line, subscriber_id, 409, exc.reason))
                applied -= 1
    rejects.sort(key=lambda detail: detail["line"])
    return BlockResult(read, applied, rejects, stopped_at)


def send(store: StatStore, calls: list) -> list:
    """Run (script, keys, args) calls on non-transactional pipelines; replies
    in order.

    One pipeline to a single server; on a cluster one per primary, as
    redis-py's cluster pipeline runs no scripts. The scripts are loaded
    beforehand (``StatStore.load_scripts``). A server that lost them (SCRIPT
    FLUSH, a failover) gets them again, and a cluster whose slots moved is
    re-read, then the calls are sent once more: safe, as every write sets
    absolute values.
    """
    client = real_client(store.client)
    if not isinstance(client, RedisCluster):
        return _send_to(store, client, calls)
    try:
        return _send_by_primary(store, client, calls)
    except (AskError, redis.ConnectionError, redis.TimeoutError):  # MOVED included
        refresh_topology(client)
    return _send_by_primary(store, client, calls)


def _send_by_primary(store: StatStore, cluster: RedisCluster, calls: list) -> list:
    groups: dict = {}
    for i, (_, keys, _) in enumerate(calls):
        node = cluster.get_node_from_key(keys[0])
        groups.setdefault(node.name, (node, []))[1].append(i)
    replies: list = [None] * len(calls)
    for node, indexes in groups.values():
        server = cluster.get_redis_connection(node)
        sent = _send_to(store, server, [calls[i] for i in indexes])
        for i, reply in zip(indexes, sent, strict=True):
            replies[i] = reply
    return replies


def _send_to(store: StatStore, server, calls: list) -> list:
    try:
        return _pipeline(server, calls).execute()
    except NoScriptError:
        store.load_scripts(server)
    return _pipeline(server, calls).execute()


def _pipeline(server, calls: list):
    pipe = server.pipeline(transaction=False)
    for script, keys, args in calls:
        pipe.evalsha(script.sha, len(keys), *keys, *args)
    return pipe


class Inline:
    """Blocks processed in this process, one at a time."""

    def __init__(self, store: StatStore, validate, delta: bool):
        self.store, self.validate, self.delta = store, validate, delta
        self._done: list = []

    @property
    def inflight(self) -> int:
        return len(self._done)

    def submit(self, index: int, parts: list, budget: int | None) -> int:
        result = process_block(self.store, parts[0], self.validate, self.delta, budget)
        self._done.append((index, result))
        return 1

    def results(self, wait: bool):
        done, self._done = self._done, []
        yield from done

    def close(self, graceful: bool = True) -> None:
        pass


def _worker_main(settings, prefix, validate, delta, tasks, results) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides
    from ..storage.client import make_client

    store = StatStore(
        make_client(settings), prefix=prefix, bounds=Bounds.from_settings(settings)
    )
    store.load_scripts()
    while True:
        task = tasks.get()
        if task is None:
            return
        index, entries = task
        try:
            result = process_block(store, entries, validate, delta)
        except Exception as exc:  # reported, and the run aborts
            results.put((index, None, f"{type(exc).__name__}: {exc}"))
            return
        results.put((index, result, None))


class Pool:
    """Worker processes, each writing the subscribers hashed to it."""

    def __init__(self, jobs: int, settings, prefix: str, validate, delta: bool):
        import multiprocessing

        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        self.results_queue = ctx.Queue()
        self.tasks = [ctx.Queue() for _ in range(jobs)]
        self.procs = [
            ctx.Process(
                target=_worker_main,
                args=(settings, prefix, validate, delta, tasks, self.results_queue),
                name=f"stat-import-{i}",
                daemon=True,
            )
            for i, tasks in enumerate(self.tasks)
        ]
        for proc in self.procs:
            proc.start()
        self.inflight = 0  # parts sent and not answered

    def submit(self, index: int, parts: list, budget: int | None) -> int:
        sent = 0
        for tasks, part in zip(self.tasks, parts, strict=True):
            if part:
                tasks.put((index, part))
                sent += 1
        self.inflight += sent
        return sent

    def results(self, wait: bool):
        while self.inflight:
            try:
                item = self.results_queue.get(timeout=0.2 if wait else 0)
            except queue.Empty:
                if not wait:
                    return
                dead = [p for p in self.procs if not p.is_alive()]
                if dead:
                    raise RuntimeError(
                        f"worker {dead[0].name} exited with code {dead[0].exitcode}"
                    ) from None
                continue
            self.inflight -= 1
            index, result, error = item
            if error is not None:
                raise RuntimeError(f"a worker failed: {error}")
            yield index, result
            wait = False  # one at least; then whatever else is ready

    def close(self, graceful: bool = True) -> None:
        """Let the workers finish what they were sent, or stop them now."""
        for tasks in self.tasks:
            if graceful:
                tasks.put(None)
            tasks.cancel_join_thread()  # never block on a worker that is gone
        for proc in self.procs:
            proc.join(timeout=30 if graceful else 0)
            if proc.is_alive():
                proc.terminate()
                proc.join()


# A "subscriber_id" key with a plain string value (no escapes), as nearly
# every line has it.
_PLAIN_ID = re.compile(rb'"subscriber_id"\s*:\s*"([^"\\]*)"')


def route(entry, jobs: int) -> int:
    """The worker of an entry: by subscriber id, so its lines stay in order.

    Most lines are routed by a search for ``"subscriber_id": "<plain id>"``
    (16x cheaper than a parse): in a line the schema accepts, that text can
    only be its one top-level key, since a quote inside a string is escaped
    and no other object may hold that key; an id with escapes is read by
    orjson, whose reading of a valid line is the schema's, and a plain id's
    bytes are its UTF-8, so both ways give one worker per subscriber. Lines
    that neither way reads are rejects and may go anywhere.
    """
    payload = entry[3]
    if isinstance(payload, CsvGroup):
        subscriber_id = payload.subscriber_id
    else:
        found = _PLAIN_ID.search(payload) if isinstance(payload, bytes) else None
        if found is not None:
            return zlib.crc32(found.group(1)) % jobs
        try:
            subscriber_id = orjson.loads(payload).get("subscriber_id")
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            subscriber_id = None
    if isinstance(subscriber_id, str):
        return zlib.crc32(subscriber_id.encode("utf-8", "surrogatepass")) % jobs
    return entry[0] % jobs

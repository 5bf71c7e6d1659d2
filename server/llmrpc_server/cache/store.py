"""The response cache's storage: one SQLite file, shared by every server process on the machine.

Why SQLite (through sqlite-utils) and not an in-process dict: the cache must survive restarts and be
shared by ``--workers`` processes and separate servers without running anything else. WAL mode lets
readers proceed while one process writes; writes are short ``BEGIN IMMEDIATE`` transactions that wait
up to ``busy_timeout`` for another process's lock.

Why one dedicated thread: sqlite3 calls block, and the event loop must never block. Every database
call runs on one cache thread (:class:`_Worker`), which also serializes them in submission order, so
a ``put`` submitted before a ``get`` is visible to it.

Why it may "fail open": the cache is an optimization. A corrupt, locked or unwritable file, or a file
from a newer schema, makes every operation a miss (or a skipped store) with one logged warning; the
file is retried after a cool-down. No request ever fails because of the cache.

Why a one-second in-process memo in front of the file: a thread round trip costs more CPU than the
rest of a hit, and the hit budget is 0.7 ms of server CPU. Hit bookkeeping (``last_hit``, per-entry
and global counters) is batched in memory and written at most every second, so a hit from the file
costs one indexed ``SELECT``, a hit from the memo no I/O at all, and neither a write.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import queue
import sqlite3
import sys
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlite_utils import Database

from ..config import Settings

__all__ = ["CacheEntry", "CacheStore", "ResponseCache", "SqliteStore", "cache_command"]

log = logging.getLogger("llmrpc_server.cache")
T = TypeVar("T")

SCHEMA_VERSION = 1
BUSY_TIMEOUT = 1.0  # seconds a write waits for another process's lock
RETRY_AFTER = 30.0  # seconds a broken cache file stays off before it is opened again
FLUSH_INTERVAL = 1.0  # seconds between batched hit-bookkeeping writes
FLUSH_PENDING = 256  # ... or this many pending touches
PRUNE_INTERVAL = 60.0  # seconds between opportunistic deletions of expired entries
EVICT_TO = 0.9  # eviction frees space down to this fraction of the bound
MEMO_SECONDS = 1.0  # how long an entry read from the file is served from this process's memory
MEMO_ENTRIES = 1024
MEMO_BYTES = 32 * 1024 * 1024
PERSISTED = ("hits", "misses", "stores", "evictions")

_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS entries_size_ai AFTER INSERT ON entries BEGIN "
    "UPDATE counters SET value = value + new.size WHERE name = 'bytes'; END",
    "CREATE TRIGGER IF NOT EXISTS entries_size_ad AFTER DELETE ON entries BEGIN "
    "UPDATE counters SET value = value - old.size WHERE name = 'bytes'; END",
)
_EVICT = (
    "DELETE FROM entries WHERE key IN (SELECT key FROM (SELECT key, SUM(size) OVER (ORDER BY last_hit DESC, "
    "created DESC ROWS UNBOUNDED PRECEDING) AS running FROM entries) WHERE running > ?)"
)


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """A stored answer: ``kind`` is "response" or "stream"; ``payload`` is opaque to this module."""

    kind: str
    payload: bytes
    created: float
    expires: float


class CacheStore(Protocol):
    """What the caching backend needs from a cache: :class:`ResponseCache` (SQLite, this machine) or
    ``shared.cache.RedisResponseCache`` (``--redis-url``, every replica). Neither ever raises on a
    storage failure: a lookup degrades to a miss, a store is skipped."""

    async def get(self, key: str, now: float, max_age: float | None) -> CacheEntry | None:
        """The live entry for ``key`` no older than ``max_age`` seconds, or None."""
        ...

    def put(self, key: str, namespace: str, kind: str, payload: bytes, now: float, ttl: float) -> None:
        """Store an entry living ``ttl`` seconds, without holding the caller back."""
        ...

    async def flush(self) -> None:
        """Wait for every submitted store."""
        ...

    def count(self, name: str) -> None:
        """Count an event the store does not see (e.g. "coalesced")."""
        ...

    def stats(self) -> dict[str, int]:
        """This process's counters: hits, misses, stores, evictions, coalesced, errors."""
        ...

    async def close(self) -> None: ...


class SqliteStore:
    """The cache file, thread-confined: use it from one thread only (the executor's, or the CLI's).

    Every public method degrades instead of raising on a database or file-system error."""

    def __init__(self, path: str, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.totals: Counter[str] = Counter()  # this process, since start; read by stats()
        self._db: Database | None = None
        self._broken_until = 0.0
        self._broken = False
        self._lock_warned_at = -1e9
        self._touches: dict[str, tuple[float, int]] = {}
        self._unsaved: Counter[str] = Counter()
        self._last_flush = time.monotonic()
        self._last_prune = -1e9

    # ---- connection --------------------------------------------------------------------------
    def _conn(self) -> Database | None:
        if self._db is not None:
            return self._db
        if time.monotonic() < self._broken_until:
            return None
        try:
            self._db = self._open()
        except (sqlite3.Error, OSError) as exc:
            self._fail(exc)
            return None
        if self._broken:
            log.warning("response cache %s is usable again", self.path)
            self._broken = False
        return self._db

    def _open(self) -> Database:
        """Open the file, creating or migrating it. Processes opening a fresh file at once deadlock on
        the switch to WAL, and SQLite resolves that by failing one of them at once, without waiting
        out the busy timeout: retry those within it."""
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            try:
                return self._open_once()
            except sqlite3.OperationalError as exc:
                if not _contended(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)

    def _open_once(self) -> Database:
        memory = self.path == ":memory:"
        if not memory:
            _create_private(Path(self.path))
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=True)
        try:
            db = Database(conn, execute_plugins=False)
            if not memory:
                db.enable_wal()
                db.execute("PRAGMA synchronous=NORMAL")
            self._migrate(db)
        except BaseException:
            conn.close()
            raise
        return db

    def _migrate(self, db: Database) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"cache schema {version} is newer than this server's {SCHEMA_VERSION}"
                                        " (written by a newer llmrpc)")
        if version == SCHEMA_VERSION:
            return
        with _write(db):
            db.table("entries").create(
                {"key": str, "namespace": str, "kind": str, "created": float, "expires": float,
                 "last_hit": float, "size": int, "hits": int, "payload": bytes},
                pk="key", not_null={"namespace", "kind", "created", "expires", "last_hit", "size", "hits",
                                    "payload"}, if_not_exists=True,
            )
            db.table("entries").create_index(["expires"], if_not_exists=True)
            db.table("entries").create_index(["last_hit"], if_not_exists=True)
            db.table("counters").create({"name": str, "value": int}, pk="name", not_null={"value"},
                                        if_not_exists=True)
            db.table("counters").insert_all([{"name": n, "value": 0} for n in ("bytes", *PERSISTED)],
                                            ignore=True)
            for trigger in _TRIGGERS:
                db.execute(trigger)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _fail(self, exc: BaseException) -> None:
        """Switch the cache off for a while; warn once per outage."""
        self.totals["errors"] += 1
        if self._db is not None:
            _quiet_close(self._db)
            self._db = None
        self._broken_until = time.monotonic() + RETRY_AFTER
        if not self._broken:
            log.warning("response cache %s disabled for %.0fs (requests go upstream): %s: %s",
                        self.path, RETRY_AFTER, type(exc).__name__, exc)
            self._broken = True

    def _guard(self, op: Callable[[Database], T], default: T) -> T:
        db = self._conn()
        if db is None:
            return default
        try:
            return op(db)
        except sqlite3.OperationalError as exc:
            if not _contended(exc):
                self._fail(exc)
                return default
            self.totals["errors"] += 1
            if time.monotonic() - self._lock_warned_at > 60.0:
                self._lock_warned_at = time.monotonic()
                log.warning("response cache %s is locked by another process; skipping: %s", self.path, exc)
            return default
        except (sqlite3.Error, OSError) as exc:
            self._fail(exc)
            return default

    # ---- operations --------------------------------------------------------------------------
    def get(self, key: str, now: float, max_age: float | None) -> CacheEntry | None:
        """The live entry for ``key`` no older than ``max_age`` seconds, or None (a miss)."""
        entry = self._guard(lambda db: self._get(db, key, now, max_age), None)
        name = "hits" if entry is not None else "misses"
        self.totals[name] += 1
        self._unsaved[name] += 1
        if entry is not None:
            last, count = self._touches.get(key, (now, 0))
            self._touches[key] = (max(last, now), count + 1)
        self._maybe_flush()
        return entry

    def _maybe_flush(self) -> None:
        if len(self._touches) >= FLUSH_PENDING or time.monotonic() - self._last_flush >= FLUSH_INTERVAL:
            self.flush()

    def _get(self, db: Database, key: str, now: float, max_age: float | None) -> CacheEntry | None:
        row = db.execute("SELECT kind, payload, created, expires FROM entries WHERE key = ? AND expires > ?",
                         (key, now)).fetchone()
        if row is None or (max_age is not None and now - row[2] > max_age):
            return None
        return CacheEntry(row[0], bytes(row[1]), row[2], row[3])

    def put(self, key: str, namespace: str, kind: str, payload: bytes, now: float, ttl: float) -> None:
        """Store (or replace) an entry living ``ttl`` seconds, then keep the file within its bound."""
        if len(payload) > self.max_bytes or ttl <= 0:
            return
        stored = self._guard(lambda db: self._put(db, key, namespace, kind, payload, now, ttl), False)
        if stored:
            self.totals["stores"] += 1
            self._unsaved["stores"] += 1
            self._maintain(now)

    def _put(self, db: Database, key: str, namespace: str, kind: str, payload: bytes, now: float,
             ttl: float) -> bool:
        with _write(db):
            db.execute("DELETE FROM entries WHERE key = ?", (key,))
            db.execute(
                "INSERT INTO entries (key, namespace, kind, created, expires, last_hit, size, hits, payload) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)",
                (key, namespace, kind, now, now + ttl, now, len(payload), payload),
            )
        return True

    def _maintain(self, now: float) -> None:
        if time.monotonic() - self._last_prune >= PRUNE_INTERVAL:
            self._last_prune = time.monotonic()
            self.prune(now)
        elif self._guard(_total_bytes, 0) > self.max_bytes:
            self.flush()
            self._guard(self._evict, 0)

    def _evict(self, db: Database) -> int:
        """Delete least recently used entries until the file holds at most ``EVICT_TO`` of the bound."""
        with _write(db):
            if _total_bytes(db) <= self.max_bytes:
                return 0
            evicted = db.execute(_EVICT, (int(self.max_bytes * EVICT_TO),)).rowcount
            _bump(db, {"evictions": evicted})
        self.totals["evictions"] += evicted
        return evicted

    def prune(self, now: float) -> dict[str, int]:
        """Delete expired entries, then evict down to the size bound."""
        self.flush()
        expired = self._guard(lambda db: _delete_expired(db, now), 0)
        return {"expired": expired, "evicted": self._guard(self._evict, 0)}

    def record_hits(self, touches: dict[str, tuple[float, int]]) -> None:
        """Book hits served from the in-process memo (see :class:`ResponseCache`): ``key -> (last
        hit, count)``."""
        for key, (now, hits) in touches.items():
            last, count = self._touches.get(key, (now, 0))
            self._touches[key] = (max(last, now), count + hits)
            self._unsaved["hits"] += hits
        self._maybe_flush()

    def flush(self) -> None:
        """Write the batched hit bookkeeping (``last_hit``, hit counts, counters)."""
        self._last_flush = time.monotonic()
        if not self._touches and not self._unsaved:
            return
        touches, counts = self._touches, self._unsaved
        self._touches, self._unsaved = {}, Counter()
        self._guard(lambda db: _save_touches(db, touches, counts), None)

    def clear(self) -> int:
        """Delete every entry and zero the counters; the number of entries deleted."""
        def clear(db: Database) -> int:
            with _write(db):
                deleted: int = db.execute("DELETE FROM entries").rowcount
                db.execute("UPDATE counters SET value = 0")
            return deleted

        self._touches, self._unsaved = {}, Counter()
        return self._guard(clear, 0)

    def file_stats(self) -> dict[str, Any]:
        """Entries, bytes and the persisted counters of every process that used the file."""
        def read(db: Database) -> dict[str, Any]:
            counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
            entries = db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
            return {"entries": entries, **counters}

        self.flush()
        stats: dict[str, Any] = {"path": self.path, **self._guard(read, {"error": "cache file unusable"})}
        stats["file_bytes"] = sum(os.path.getsize(p) for p in _files(self.path) if os.path.exists(p))
        return stats

    def close(self) -> None:
        self.flush()
        if self._db is not None:
            _quiet_close(self._db)
            self._db = None


def _create_private(path: Path) -> None:
    """Cached answers may be sensitive: the directory is 0700 and a new file 0600 (WAL files follow)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def _contended(exc: sqlite3.OperationalError) -> bool:
    """Another connection holds the lock (SQLITE_BUSY / SQLITE_LOCKED): nothing is wrong with the file."""
    return "locked" in str(exc) or "busy" in str(exc)


@contextmanager
def _write(db: Database) -> Any:
    """A write transaction taking the write lock up front (no deadlock-prone lock upgrade)."""
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if db.conn.in_transaction:  # some errors already rolled the transaction back
            db.conn.execute("ROLLBACK")
        raise
    db.conn.execute("COMMIT")


def _total_bytes(db: Database) -> int:
    value: int = db.execute("SELECT value FROM counters WHERE name = 'bytes'").fetchone()[0]
    return value


def _bump(db: Database, counts: dict[str, int]) -> None:
    for name, delta in counts.items():
        if delta:
            db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (delta, name))


def _delete_expired(db: Database, now: float) -> int:
    with _write(db):
        deleted: int = db.execute("DELETE FROM entries WHERE expires <= ?", (now,)).rowcount
    return deleted


def _save_touches(db: Database, touches: dict[str, tuple[float, int]], counts: Counter[str]) -> None:
    with _write(db):
        db.conn.executemany(
            "UPDATE entries SET last_hit = MAX(last_hit, ?), hits = hits + ? WHERE key = ?",
            [(last, n, key) for key, (last, n) in touches.items()],
        )
        _bump(db, dict(counts))


def _quiet_close(db: Database) -> None:
    try:
        db.close()
    except sqlite3.Error:
        pass


def _files(path: str) -> list[str]:
    return [] if path == ":memory:" else [path, path + "-wal", path + "-shm"]


class _Worker:
    """The cache's one thread. Jobs run in submission order; results go back to the event loop in
    one ``call_soon_threadsafe`` per batch. (``ThreadPoolExecutor`` + ``wrap_future`` cost ~200 us of
    CPU per round trip here, this ~70 us; under load the batching amortizes the wake-ups.)"""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="llmrpc-cache", daemon=True)

    def call(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn(*args)`` on the cache thread; await the returned future for its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._put((fn, args, loop, future))
        return future

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the cache thread without waiting (failures are logged)."""
        self._put((fn, args, None, None))

    def _put(self, job: _Job) -> None:
        if not self._thread.is_alive():
            self._thread.start()
        self._jobs.put(job)

    def _run(self) -> None:
        while True:
            batch = [self._jobs.get()]
            while len(batch) < 256 and not self._jobs.empty():
                batch.append(self._jobs.get())
            replies: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
            for job in batch:
                if job is None:
                    _reply(replies)
                    return
                fn, args, loop, future = job
                try:
                    ok, value = True, fn(*args)
                except Exception as exc:  # delivered to the caller, or logged
                    ok, value = False, exc
                    if future is None:
                        log.warning("response cache job failed: %r", exc)
                if loop is not None and future is not None:
                    replies.setdefault(loop, []).append((future, ok, value))
            _reply(replies)

    def close(self) -> None:
        """Stop after the queued jobs (call from the loop after awaiting the last job)."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join(10)


_Job = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.AbstractEventLoop | None", "asyncio.Future[Any] | None"]


def _reply(replies: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]]) -> None:
    for loop, results in replies.items():
        try:
            loop.call_soon_threadsafe(_deliver, results)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def _deliver(results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in results:
        if future.done():  # the caller was cancelled
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


@dataclass(slots=True)
class _Memo:
    entry: CacheEntry
    until: float  # time.monotonic() after which the file must be asked again


class ResponseCache:
    """The store behind an async facade: all I/O on one dedicated thread, nothing on the event loop.

    ``put`` is fire-and-forget (the answer is not held back for the write); the thread runs jobs in
    order, so a later ``get`` in this process sees the entry. Entries read from the file are also
    kept in a small in-process memo for ``MEMO_SECONDS``, so a hot entry costs no thread round trip;
    a write in this process drops its memo, so only another process's replace or ``cache clear`` can
    go unseen, for at most ``MEMO_SECONDS``. Memo hits count as hits and refresh ``last_hit``."""

    def __init__(self, path: str, max_bytes: int) -> None:
        self.store = SqliteStore(path, max_bytes)
        self._worker = _Worker()
        self._memo: OrderedDict[str, _Memo] = OrderedDict()
        self._memo_bytes = 0
        self._memo_hits = 0
        self._touches: dict[str, tuple[float, int]] = {}  # memo hits not yet booked in the file
        self._touches_sent = time.monotonic()
        self._closed = False

    @property
    def path(self) -> str:
        return self.store.path

    async def get(self, key: str, now: float, max_age: float | None) -> CacheEntry | None:
        """The live entry for ``key`` no older than ``max_age`` seconds, or None."""
        if self._closed:
            return None
        memo = self._memo.get(key)
        if memo is not None and memo.until > time.monotonic() and memo.entry.expires > now and (
                max_age is None or now - memo.entry.created <= max_age):
            self._memo.move_to_end(key)
            self._memo_hit(key, now)
            return memo.entry
        entry = await self._worker.call(self.store.get, key, now, max_age)
        if entry is not None:
            self._remember(key, entry)
        return entry

    def _memo_hit(self, key: str, now: float) -> None:
        self._memo_hits += 1
        last, count = self._touches.get(key, (now, 0))
        self._touches[key] = (max(last, now), count + 1)
        if len(self._touches) >= FLUSH_PENDING or time.monotonic() - self._touches_sent >= FLUSH_INTERVAL:
            self._touches_sent = time.monotonic()
            touches, self._touches = self._touches, {}
            self._worker.post(self.store.record_hits, touches)

    def _remember(self, key: str, entry: CacheEntry) -> None:
        self._forget(key)
        self._memo[key] = _Memo(entry, time.monotonic() + MEMO_SECONDS)
        self._memo_bytes += len(entry.payload)
        while len(self._memo) > MEMO_ENTRIES or self._memo_bytes > MEMO_BYTES:
            _, oldest = self._memo.popitem(last=False)
            self._memo_bytes -= len(oldest.entry.payload)

    def _forget(self, key: str) -> None:
        memo = self._memo.pop(key, None)
        if memo is not None:
            self._memo_bytes -= len(memo.entry.payload)

    def put(self, key: str, namespace: str, kind: str, payload: bytes, now: float, ttl: float) -> None:
        if not self._closed:
            self._forget(key)
            self._worker.post(self.store.put, key, namespace, kind, payload, now, ttl)

    async def flush(self) -> None:
        """Wait for every submitted job, then write the batched bookkeeping."""
        if not self._closed:
            touches, self._touches = self._touches, {}
            await self._worker.call(self.store.record_hits, touches)
            await self._worker.call(self.store.flush)

    def count(self, name: str) -> None:
        """Count an event the store does not see (e.g. "coalesced")."""
        self.store.totals[name] += 1

    def stats(self) -> dict[str, int]:
        """This process's counters: hits, misses, stores, evictions, coalesced, errors."""
        names = (*PERSISTED, "coalesced", "errors")
        stats = {name: self.store.totals[name] for name in names}
        stats["hits"] += self._memo_hits
        return stats

    async def close(self) -> None:
        if self._closed:
            return
        await self.flush()
        self._closed = True
        await self._worker.call(self.store.close)
        self._worker.close()


def cache_command(settings: Settings, args: argparse.Namespace) -> int:
    """``llmrpc-server cache stats|clear|prune``: JSON on stdout."""
    action = args.action or "stats"
    if settings.redis_url:
        from ..shared.cache import redis_cache_command  # imported only with --redis-url

        return redis_cache_command(settings, action)
    store = SqliteStore(settings.cache_path, int(settings.cache_max_mb * 1024 * 1024))
    try:
        if action == "stats":
            result: dict[str, Any] = store.file_stats()
        elif action == "clear":
            result = {"cleared": store.clear()}
        elif action == "prune":
            result = store.prune(time.time())
        else:
            print(f"llmrpc-server: unknown cache action {action!r} (stats, clear or prune)", file=sys.stderr)
            return 2
    finally:
        store.close()
    print(json.dumps(result, sort_keys=True))
    return 1 if store.totals["errors"] else 0

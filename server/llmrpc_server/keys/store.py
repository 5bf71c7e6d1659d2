"""Where virtual keys' counters and spend live: one small interface, :class:`LimitStore`.

:class:`SqliteLimitStore` keeps them in the gateway's SQLite state file (``state.sqlite`` beside the
response cache unless ``--state-path`` says otherwise), shared by every server process on the
machine, so limits hold across ``--workers`` and restarts. ``shared.limits.RedisLimitStore``
(``--redis-url``) implements the same interface in Redis, shared across machines.

Accuracy (documented in the README):

* ``rpm_limit`` / ``tpm_limit`` use fixed one-minute windows aligned to the clock minute, as
  LiteLLM's per-minute counters do: a caller can get up to twice the limit across a minute boundary.
* ``rpm`` counts a request when it is admitted; ``tpm`` and spend count after the call, so calls
  admitted together may overshoot ``tpm_limit`` / ``max_budget`` by what they use (LiteLLM too).
* ``max_parallel_requests`` counts leases. A lease ends with its call; one left by a crashed process
  ends at the call's deadline, or at once when the next process opens the file and finds its pid gone.
* Budget windows are fixed ``budget_duration`` lengths aligned to the Unix epoch (LiteLLM resets a
  key's budget ``budget_duration`` after it was created); without ``budget_duration`` the budget is
  the key's lifetime spend.

Why the SQLite calls run on the event loop instead of a thread: each is one short ``BEGIN IMMEDIATE``
transaction of a few statements on one-page tables (tens of microseconds); a thread hop would cost
more CPU than the work. A lock held by another process is waited for up to ``BUSY_TIMEOUT``.

Why usage is written late: a transaction's fixed cost (locks, a WAL frame) is most of the per-call
budget, so what a call used (tokens, cost, the end of its lease) is queued in memory and written by
this process's next admission, in the same transaction and before its checks, or ``FLUSH_DELAY``
after the call when no admission comes. One transaction per call in steady state; this process's own
checks always see its own usage; other processes see it at most ``FLUSH_DELAY`` late (and a process
killed with SIGKILL loses at most that much).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlite_utils import Database

from .file_lock import SUPPORTED, StateFileLock, acquire
from .spec import VirtualKey

__all__ = ["MINUTE", "Decision", "LimitStore", "SpendRow", "SqliteLimitStore", "StoreUnavailable",
           "budget_window"]

log = logging.getLogger("llmrpc_server.keys")

MINUTE = 60
BUSY_TIMEOUT = 2.0  # seconds a transaction waits for another process's lock
PRUNE_INTERVAL = 60.0  # seconds between deletions of finished windows and expired leases
SPEND_HISTORY = 7 * 86400  # seconds a finished budget window's spend stays listed by `keys spend`
SCHEMA_VERSION = 1
FLUSH_DELAY = 0.2  # seconds queued usage may wait for an admission before it is written on its own
EXCLUSIVE_RETRY = 1.0  # seconds between a sharing process's attempts to take the file exclusively
WATCH_INTERVAL = 0.05  # seconds between an exclusive process's looks for another process on the file
HANDOVER_TIMEOUT = 5.0  # seconds a process waits for an exclusive one to hand the file over


class StoreUnavailable(Exception):
    """The counters cannot be read or written (file unusable, lock not obtained in time)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """Admission's answer. When refused: which ``limit`` (the key field's name), the ``current``
    count or spend against ``allowed``, and ``retry_after`` seconds until the window frees up."""

    admitted: bool
    limit: str = ""
    current: float = 0.0
    allowed: float = 0.0
    retry_after: float | None = None


ADMITTED = Decision(True)


@dataclass(frozen=True, slots=True)
class SpendRow:
    """Spend of one key in one budget window (``length`` 0: lifetime)."""

    digest: str
    start: float
    length: int
    spend: float
    requests: int


def budget_window(key: VirtualKey, now: float) -> tuple[float, int]:
    """(start, length) of the key's budget window holding ``now``; a lifetime budget is (0, 0)."""
    if key.budget_duration is None:
        return 0.0, 0
    return math.floor(now / key.budget_duration) * key.budget_duration, key.budget_duration


class LimitStore(Protocol):
    """The counters behind virtual keys' limits. ``lease`` identifies one admitted call."""

    async def admit(self, key: VirtualKey, now: float, lease: str, lease_expires: float) -> Decision:
        """Check every limit of ``key`` and, if all allow, count the request and take a lease."""
        ...

    async def record(self, key: VirtualKey, now: float, lease: str, tokens: int, cost: float) -> None:
        """After the call: add its tokens and cost, and end its lease."""
        ...

    async def release(self, key: VirtualKey, lease: str) -> None:
        """End a lease without usage (the call failed or was cancelled before answering)."""
        ...

    async def spend(self, key: VirtualKey, now: float) -> float:
        """The key's spend in its current budget window."""
        ...


@dataclass(slots=True)
class _Counts:
    """An exclusive store's counts of one key in the windows holding ``[since, until)``: its minute
    (rpm, tpm) and budget window (spend), each with what this process added and has not written."""

    minute: float
    budget_start: float
    budget_length: int
    since: float
    until: float
    rpm: float
    tpm: float
    spend: float
    new_rpm: int = 0
    new_tpm: float = 0.0
    new_spend: float = 0.0
    new_calls: int = 0


class SqliteLimitStore:
    """:class:`LimitStore` on a SQLite file (WAL, ``BEGIN IMMEDIATE`` transactions).

    Two modes (see ``file_lock``): while other processes use the file, each admission is one
    transaction; a process that finds itself the file's only user (one server process, the common
    case) takes it exclusively and decides from counts in memory, loaded from the file and written
    back ``FLUSH_DELAY`` later, so a call costs no transaction. It hands the file back within
    ``WATCH_INTERVAL`` of another process (a worker, a restart, ``keys spend``) starting to use it:
    what it counted is written first, so either way every admission sees every earlier one."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._db: Database | None = None
        self._last_prune = -math.inf
        # queued usage by (digest, kind, window start, window length): [value, requests]; ended
        # leases to delete; leases taken in memory to insert (when an exclusive store hands over)
        self._usage: dict[tuple[str, str, float, int], list[float]] = {}
        self._ended: list[tuple[str]] = []
        self._new_leases: list[tuple[str, str, float, int]] = []
        self._flush_timer: asyncio.TimerHandle | None = None
        self._lock: StateFileLock | None = None
        self._exclusive = False
        self._next_try = 0.0  # monotonic time of the next attempt to take the file exclusively
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch: asyncio.TimerHandle | None = None
        self._counts: dict[str, _Counts] = {}
        self._leases: dict[str, dict[str, float]] = {}  # exclusive: digest -> {lease: expires}
        self._file_leases: set[str] = set()  # exclusive: leases that are rows of the file too

    @property
    def exclusive(self) -> bool:
        """Whether this store holds the file alone and decides admissions in memory."""
        return self._exclusive

    # ---- connection --------------------------------------------------------------------------
    def _conn(self) -> Database:
        if self._db is None:
            try:
                self._join()
                self._db = self._open()
            except (sqlite3.Error, OSError) as exc:
                raise StoreUnavailable(f"key limits store {self.path}: {exc}") from exc
        return self._db

    def _join(self) -> None:
        """Announce this process as a user of the file and wait for any exclusive one to hand over."""
        if self._lock is not None or self.path == ":memory:" or not SUPPORTED:
            return
        Path(self.path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = acquire(self.path)
        if not lock.share(self, HANDOVER_TIMEOUT):
            lock.release()
            raise OSError("another process holds the state file and did not hand it over")
        self._lock = lock

    def _open(self) -> Database:
        if self.path != ":memory:":
            path = Path(self.path)
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not path.exists():
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        db = Database(conn, execute_plugins=False)
        try:
            if self.path != ":memory:":
                _retry_contended(db.enable_wal)
                db.execute("PRAGMA synchronous=NORMAL")
            with _transaction(db):
                self._migrate(db)
                _drop_dead_leases(db)
        except BaseException:
            conn.close()
            raise
        return db

    def _migrate(self, db: Database) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"state schema {version} is newer than this server's {SCHEMA_VERSION}")
        if version == SCHEMA_VERSION:
            return
        # kind: rpm / tpm (one-minute windows) or spend (budget windows); requests: calls in the window.
        # WITHOUT ROWID and no secondary index: each write touches one b-tree page. Leases are the calls
        # in flight: few rows, scanned.
        db.execute("CREATE TABLE IF NOT EXISTS key_windows (digest TEXT NOT NULL, kind TEXT NOT NULL, "
                   "start REAL NOT NULL, length INTEGER NOT NULL, value REAL NOT NULL, requests INTEGER NOT NULL, "
                   "PRIMARY KEY (digest, kind, start)) WITHOUT ROWID")
        db.execute("CREATE TABLE IF NOT EXISTS key_leases (lease TEXT NOT NULL, digest TEXT NOT NULL, "
                   "expires REAL NOT NULL, pid INTEGER NOT NULL)")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        """Write queued usage (handing the file over when held exclusively), then close it."""
        if self._exclusive:
            self._leave_exclusive()
        if self._usage or self._ended or self._new_leases:
            try:
                self.flush()
            except StoreUnavailable as exc:
                log.warning("key usage not written at close: %s", exc)
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        self._disconnect()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _disconnect(self) -> None:
        if self._db is not None:
            self._db.conn.close()
            self._db = None

    @contextmanager
    def _write(self) -> Iterator[Database]:
        db = self._conn()
        try:
            with _transaction(db):
                yield db
            # committed (every transaction writes the queue first)
            self._usage, self._ended, self._new_leases = {}, [], []
        except sqlite3.Error as exc:
            if not _contended(exc):
                self._disconnect()  # reopened on the next call: a replaced or repaired file recovers
            raise StoreUnavailable(f"key limits store {self.path}: {exc}") from exc

    # ---- exclusive mode ----------------------------------------------------------------------
    def _maybe_take_exclusive(self) -> None:
        """In a running loop (the watch needs one), now and then: take the file if no one else uses it."""
        now = time.monotonic()
        if now < self._next_try or self._lock is None:
            return
        self._next_try = now + EXCLUSIVE_RETRY
        loop = asyncio.get_running_loop()
        if not self._lock.try_exclusive(self, self._hand_over):
            return
        try:
            self.flush()  # from here on nothing else writes the file: it plus memory is the truth
            rows = self._read("SELECT lease, digest, expires FROM key_leases", ())
        except StoreUnavailable:
            self._lock.share(self, HANDOVER_TIMEOUT)
            return
        self._exclusive, self._loop = True, loop
        for lease, digest, expires in rows:
            self._leases.setdefault(digest, {})[lease] = expires
            self._file_leases.add(lease)
        self._watch = loop.call_later(WATCH_INTERVAL, self._check_newcomers)

    def _check_newcomers(self) -> None:
        self._watch = None
        if not self._exclusive or self._lock is None:
            return
        if self._lock.others_present():
            self._leave_exclusive()
        else:
            assert self._loop is not None
            self._watch = self._loop.call_later(WATCH_INTERVAL, self._check_newcomers)

    def _hand_over(self) -> None:
        """Asked by another store of this process (possibly on another thread) to share the file."""
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or loop is running or not loop.is_running():
            self._leave_exclusive()
        else:
            loop.call_soon_threadsafe(self._leave_exclusive)

    def _leave_exclusive(self) -> None:
        """Write what memory holds (usage, leases taken here), then share the file again."""
        if not self._exclusive:
            return
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self._drain_counts()
        pid = os.getpid()
        self._new_leases += [(lease, digest, expires, pid) for digest, leases in self._leases.items()
                             for lease, expires in leases.items() if lease not in self._file_leases]
        self._exclusive = False
        self._counts.clear()
        self._leases.clear()
        self._file_leases.clear()
        try:
            self.flush()
        except StoreUnavailable as exc:  # kept queued: the next transaction writes it
            log.warning("key usage not written at hand-over yet: %s", exc)
        if self._lock is not None:
            self._lock.share(self, HANDOVER_TIMEOUT)  # a downgrade: never waits

    def _key_counts(self, key: VirtualKey, now: float) -> _Counts:
        """The key's counts for the windows holding ``now`` (read from the file when they turn)."""
        counts = self._counts.get(key.digest)
        if counts is not None and counts.since <= now < counts.until:
            return counts
        minute = math.floor(now / MINUTE) * MINUTE
        start, length = budget_window(key, now)
        self.flush()  # so that the file holds every count of the windows read
        used = dict(self._read(_WINDOWS, (key.digest, start, minute)))
        counts = self._counts[key.digest] = _Counts(
            minute, start, length, max(minute, start), min(minute + MINUTE, start + length if length else math.inf),
            float(used.get("rpm", 0.0)), float(used.get("tpm", 0.0)), float(used.get("spend", 0.0)))
        return counts

    def _drain_counts(self) -> None:
        """Queue what this process added to its counts in memory (to be written)."""
        for digest, c in self._counts.items():
            if c.new_rpm:
                self._queue(digest, "rpm", c.minute, MINUTE, float(c.new_rpm), c.new_rpm)
            if c.new_tpm:
                self._queue(digest, "tpm", c.minute, MINUTE, c.new_tpm, 0)
            if c.new_calls:
                self._queue(digest, "spend", c.budget_start, c.budget_length, c.new_spend, c.new_calls)
            c.new_rpm, c.new_tpm, c.new_spend, c.new_calls = 0, 0.0, 0.0, 0

    def _read(self, sql: str, args: tuple[object, ...]) -> list[tuple[Any, ...]]:
        try:
            return list(self._conn().conn.execute(sql, args).fetchall())
        except sqlite3.Error as exc:
            self._disconnect()
            raise StoreUnavailable(f"key limits store {self.path}: {exc}") from exc

    def _running(self, digest: str, now: float, limit: int) -> int:
        leases = self._leases.get(digest)
        if not leases:
            return 0
        if len(leases) < limit:  # expired leases only lower the count: below the limit either way
            return len(leases)
        return sum(1 for expires in leases.values() if expires > now)

    def _admit_in_memory(self, key: VirtualKey, now: float, lease: str, lease_expires: float) -> Decision:
        c = self._key_counts(key, now)
        limit = key.max_parallel_requests
        decision = _decide(key, now, c.minute, c.budget_start, c.spend, c.rpm, c.tpm,
                           lambda: self._running(key.digest, now, limit or 0))
        if not decision.admitted:
            return decision
        if key.rpm_limit is not None:
            c.rpm += 1
            c.new_rpm += 1
            self._schedule_flush()
        if limit is not None:
            self._leases.setdefault(key.digest, {})[lease] = lease_expires
        return ADMITTED

    # ---- LimitStore --------------------------------------------------------------------------
    async def admit(self, key: VirtualKey, now: float, lease: str, lease_expires: float) -> Decision:
        if not self._exclusive:
            self._conn()
            self._maybe_take_exclusive()
        return self.admit_sync(key, now, lease, lease_expires)

    def admit_sync(self, key: VirtualKey, now: float, lease: str, lease_expires: float) -> Decision:
        if self._exclusive:
            return self._admit_in_memory(key, now, lease, lease_expires)
        minute = math.floor(now / MINUTE) * MINUTE
        with self._write() as db:
            self._write_queued(db)
            self._maybe_prune(db, now)
            decision = _check(db, key, now, minute)
            if not decision.admitted:
                return decision
            if key.rpm_limit is not None:
                _add(db, key.digest, "rpm", minute, MINUTE, 1.0, 1)
            if key.max_parallel_requests is not None:
                db.conn.execute("INSERT INTO key_leases (lease, digest, expires, pid) VALUES (?, ?, ?, ?)",
                                (lease, key.digest, lease_expires, os.getpid()))
        return ADMITTED

    async def record(self, key: VirtualKey, now: float, lease: str, tokens: int, cost: float) -> None:
        self.queue_usage(key, now, lease, tokens, cost)
        self._schedule_flush()

    def queue_usage(self, key: VirtualKey, now: float, lease: str, tokens: int, cost: float) -> None:
        """Queue a finished call's usage (written by the next admission or :meth:`flush`)."""
        cost = max(cost, 0.0)
        counts: _Counts | None = None
        if self._exclusive:
            try:
                counts = self._key_counts(key, now)
            except StoreUnavailable:  # windows turned and the file is unusable: queued as when sharing
                counts = None
        if counts is not None:
            if key.tpm_limit is not None and tokens > 0:
                counts.tpm += tokens
                counts.new_tpm += tokens
            counts.spend += cost
            counts.new_spend += cost
            counts.new_calls += 1
        else:
            if key.tpm_limit is not None and tokens > 0:
                self._queue(key.digest, "tpm", math.floor(now / MINUTE) * MINUTE, MINUTE, float(tokens), 0)
            start, length = budget_window(key, now)
            self._queue(key.digest, "spend", start, length, cost, 1)
        self._end_lease(key, lease)

    def _queue(self, digest: str, kind: str, start: float, length: int, value: float, requests: int) -> None:
        queued = self._usage.get((digest, kind, start, length))
        if queued is None:
            self._usage[(digest, kind, start, length)] = [value, requests]
        else:
            queued[0] += value
            queued[1] += requests

    def _end_lease(self, key: VirtualKey, lease: str) -> None:
        if key.max_parallel_requests is None or not lease:
            return
        if self._exclusive:
            self._leases.get(key.digest, {}).pop(lease, None)
            if lease not in self._file_leases:
                return
            self._file_leases.discard(lease)
        self._ended.append((lease,))

    def record_sync(self, key: VirtualKey, now: float, lease: str, tokens: int, cost: float) -> None:
        """:meth:`record`, written at once."""
        self.queue_usage(key, now, lease, tokens, cost)
        self.flush()

    async def release(self, key: VirtualKey, lease: str) -> None:
        self._end_lease(key, lease)
        if self._ended:
            self._schedule_flush()

    def release_sync(self, key: VirtualKey, lease: str) -> None:
        """:meth:`release`, written at once."""
        self._end_lease(key, lease)
        self.flush()

    async def spend(self, key: VirtualKey, now: float) -> float:
        self.flush()
        start, _ = budget_window(key, now)
        return _value(self._conn(), key.digest, "spend", start)

    def flush(self) -> None:
        """Write the queued usage now."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._exclusive:
            self._drain_counts()
        if self._usage or self._ended or self._new_leases:
            with self._write() as db:
                self._write_queued(db)
                if self._exclusive:  # no admission transactions to prune in
                    self._maybe_prune(db, time.time())

    def _schedule_flush(self) -> None:
        if self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(FLUSH_DELAY, self._timed_flush)

    def _timed_flush(self) -> None:
        self._flush_timer = None
        try:
            self.flush()
        except StoreUnavailable as exc:  # kept queued: the next admission or flush retries
            log.warning("key usage not written yet: %s", exc)
            self._schedule_flush()

    def _write_queued(self, db: Database) -> None:
        """Inside a transaction: :meth:`_write` empties the queue once the transaction commits (nothing
        can be queued meanwhile: this runs on the loop without awaiting)."""
        if self._usage:
            db.conn.executemany(_ADD, [(*where, value, int(requests))
                                       for where, (value, requests) in self._usage.items()])
        if self._new_leases:
            db.conn.executemany("INSERT INTO key_leases (lease, digest, expires, pid) VALUES (?, ?, ?, ?)",
                                self._new_leases)
        if self._ended:
            db.conn.executemany("DELETE FROM key_leases WHERE lease = ?", self._ended)

    # ---- reporting (the `keys spend` command) ------------------------------------------------
    def spend_rows(self) -> list[SpendRow]:
        """Every recorded budget window, newest first per key."""
        self.flush()
        rows = self._conn().execute(
            "SELECT digest, start, length, value, requests FROM key_windows WHERE kind = 'spend' "
            "ORDER BY digest, start DESC").fetchall()
        return [SpendRow(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    def _maybe_prune(self, db: Database, now: float) -> None:
        if now - self._last_prune < PRUNE_INTERVAL:
            return
        self._last_prune = now
        db.execute("DELETE FROM key_windows WHERE kind != 'spend' AND start < ?", (now - 2 * MINUTE,))
        db.execute("DELETE FROM key_windows WHERE kind = 'spend' AND length > 0 AND start + length < ?",
                   (now - SPEND_HISTORY,))
        db.execute("DELETE FROM key_leases WHERE expires < ?", (now,))


def _check(db: Database, key: VirtualKey, now: float, minute: float) -> Decision:
    """:func:`_decide` on the file: one statement reads the key's current budget and minute windows."""
    start, _ = budget_window(key, now)
    used = dict(db.conn.execute(_WINDOWS, (key.digest, start, minute)).fetchall())

    def running() -> int:
        return int(db.conn.execute("SELECT COUNT(*) FROM key_leases WHERE digest = ? AND expires > ?",
                                   (key.digest, now)).fetchone()[0])

    return _decide(key, now, minute, start, float(used.get("spend", 0.0)), float(used.get("rpm", 0.0)),
                   float(used.get("tpm", 0.0)), running)


def _decide(key: VirtualKey, now: float, minute: float, budget_start: float, spent: float, rpm: float, tpm: float,
            running: Callable[[], int]) -> Decision:
    """The first limit that refuses the call, budget first (LiteLLM checks it before rate limits)."""
    if key.max_budget is not None and spent >= key.max_budget:
        length = key.budget_duration or 0
        return Decision(False, "max_budget", spent, key.max_budget, budget_start + length - now if length else None)
    for limit, count, allowed in (("rpm_limit", rpm, key.rpm_limit), ("tpm_limit", tpm, key.tpm_limit)):
        if allowed is not None and count >= allowed:
            return Decision(False, limit, count, allowed, minute + MINUTE - now)
    if key.max_parallel_requests is not None:
        in_flight = running()
        if in_flight >= key.max_parallel_requests:
            return Decision(False, "max_parallel_requests", in_flight, key.max_parallel_requests)
    return ADMITTED


_WINDOWS = ("SELECT kind, value FROM key_windows WHERE digest = ? AND "
            "((kind = 'spend' AND start = ?) OR (kind IN ('rpm', 'tpm') AND start = ?))")


def _value(db: Database, digest: str, kind: str, start: float) -> float:
    row = db.conn.execute("SELECT value FROM key_windows WHERE digest = ? AND kind = ? AND start = ?",
                     (digest, kind, start)).fetchone()
    return float(row[0]) if row else 0.0


_ADD = ("INSERT INTO key_windows (digest, kind, start, length, value, requests) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (digest, kind, start) DO UPDATE SET value = value + excluded.value, "
        "requests = requests + excluded.requests")


def _add(db: Database, digest: str, kind: str, start: float, length: int, value: float, requests: int) -> None:
    db.conn.execute(_ADD, (digest, kind, start, length, value, requests))


def _drop_dead_leases(db: Database) -> None:
    """Leases of processes on this machine that no longer run (a crash or kill -9) end now."""
    for (pid,) in db.execute("SELECT DISTINCT pid FROM key_leases").fetchall():
        if pid != os.getpid() and not _alive(pid):
            db.execute("DELETE FROM key_leases WHERE pid = ?", (pid,))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


@contextmanager
def _transaction(db: Database) -> Iterator[None]:
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.conn.execute("COMMIT")
    except BaseException:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        raise


def _contended(exc: sqlite3.Error) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def _retry_contended(op: object) -> None:
    """Processes switching a fresh file to WAL at once: SQLite fails all but one without waiting."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            op()  # type: ignore[operator]
            return
        except sqlite3.OperationalError as exc:
            if not _contended(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)

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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sqlite_utils import Database

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


class SqliteLimitStore:
    """:class:`LimitStore` on a SQLite file (WAL, ``BEGIN IMMEDIATE`` transactions)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._db: Database | None = None
        self._last_prune = -math.inf
        # queued usage: (digest, kind, window start, window length, value, requests), and ended leases
        self._usage: list[tuple[str, str, float, int, float, int]] = []
        self._ended: list[tuple[str]] = []
        self._flush_timer: asyncio.TimerHandle | None = None

    # ---- connection --------------------------------------------------------------------------
    def _conn(self) -> Database:
        if self._db is None:
            try:
                self._db = self._open()
            except (sqlite3.Error, OSError) as exc:
                raise StoreUnavailable(f"key limits store {self.path}: {exc}") from exc
        return self._db

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
        """Write queued usage, then close the file."""
        if self._usage or self._ended:
            try:
                self.flush()
            except StoreUnavailable as exc:
                log.warning("key usage not written at close: %s", exc)
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        self._disconnect()

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
            self._usage, self._ended = [], []  # committed (every transaction writes the queue first)
        except sqlite3.Error as exc:
            if not _contended(exc):
                self._disconnect()  # reopened on the next call: a replaced or repaired file recovers
            raise StoreUnavailable(f"key limits store {self.path}: {exc}") from exc

    # ---- LimitStore --------------------------------------------------------------------------
    async def admit(self, key: VirtualKey, now: float, lease: str, lease_expires: float) -> Decision:
        return self.admit_sync(key, now, lease, lease_expires)

    def admit_sync(self, key: VirtualKey, now: float, lease: str, lease_expires: float) -> Decision:
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
        if key.tpm_limit is not None and tokens > 0:
            self._usage.append((key.digest, "tpm", math.floor(now / MINUTE) * MINUTE, MINUTE, float(tokens), 0))
        start, length = budget_window(key, now)
        self._usage.append((key.digest, "spend", start, length, max(cost, 0.0), 1))
        if key.max_parallel_requests is not None and lease:
            self._ended.append((lease,))

    def record_sync(self, key: VirtualKey, now: float, lease: str, tokens: int, cost: float) -> None:
        """:meth:`record`, written at once."""
        self.queue_usage(key, now, lease, tokens, cost)
        self.flush()

    async def release(self, key: VirtualKey, lease: str) -> None:
        if key.max_parallel_requests is not None and lease:
            self._ended.append((lease,))
            self._schedule_flush()

    def release_sync(self, key: VirtualKey, lease: str) -> None:
        """:meth:`release`, written at once."""
        if key.max_parallel_requests is not None and lease:
            self._ended.append((lease,))
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
        if self._usage or self._ended:
            with self._write() as db:
                self._write_queued(db)

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
            db.conn.executemany(_ADD, self._usage)
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
    """The first limit that refuses the call, budget first (LiteLLM checks it before rate limits).
    One statement reads the key's current budget and minute windows."""
    start, length = budget_window(key, now)
    used = dict(db.conn.execute(_WINDOWS, (key.digest, start, minute)).fetchall())
    if key.max_budget is not None:
        spent = float(used.get("spend", 0.0))
        if spent >= key.max_budget:
            return Decision(False, "max_budget", spent, key.max_budget, start + length - now if length else None)
    for limit, kind, allowed in (("rpm_limit", "rpm", key.rpm_limit), ("tpm_limit", "tpm", key.tpm_limit)):
        if allowed is not None:
            count = float(used.get(kind, 0.0))
            if count >= allowed:
                return Decision(False, limit, count, allowed, minute + MINUTE - now)
    if key.max_parallel_requests is not None:
        running = db.conn.execute("SELECT COUNT(*) FROM key_leases WHERE digest = ? AND expires > ?",
                                  (key.digest, now)).fetchone()[0]
        if running >= key.max_parallel_requests:
            return Decision(False, "max_parallel_requests", running, key.max_parallel_requests)
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
    import time

    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            op()  # type: ignore[operator]
            return
        except sqlite3.OperationalError as exc:
            if not _contended(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)

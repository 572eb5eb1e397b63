"""The gateway's job store: SQLite (stdlib), WAL, one writer (the service's event loop).

Tables:

- ``jobs``: one row per job id the gateway accepted (the request as received);
  a redelivered request with the same id is recognised here and ignored.
- ``executions``: one row per (job, device): ``phase`` (queued, transferring,
  rebooting, checking_in, done, failed, rolled_back, cancelled), the reason,
  the device-reported progress (confirmed bytes of total), the running version
  from its hello, the attempt (0 the first; the retry policy's new attempts after
  a timeout count up) and when the next attempt may start. Order of arrival is
  the rowid: a device's executions run one after another in that order.
- ``seqs``: per device, the highest status sequence number *reserved*. The
  service hands out numbers from a block it reserved here before the first one
  is published, so after a crash at any moment the next process starts above
  every number ever published: no status on the broker goes backwards.

A transaction per change; ``synchronous=NORMAL`` under WAL survives a killed
process (SIGKILL) without losing a committed change (it may lose the last ones
on a power cut of the gateway's own host).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ACTIVE", "TERMINAL", "Execution", "JobStore"]

TERMINAL = frozenset({"done", "failed", "rolled_back", "cancelled"})
ACTIVE = frozenset({"transferring", "rebooting", "checking_in"})
SEQ_BLOCK = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id   TEXT PRIMARY KEY,
    request  TEXT NOT NULL,
    received REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS executions (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id    TEXT NOT NULL REFERENCES jobs(job_id),
    device    TEXT NOT NULL,
    phase     TEXT NOT NULL,
    reason    TEXT,
    message   TEXT,
    confirmed INTEGER NOT NULL DEFAULT 0,
    total     INTEGER NOT NULL DEFAULT 0,
    running_version TEXT,
    attempt   INTEGER NOT NULL DEFAULT 0,
    retry_at  REAL,
    started   REAL,
    finished  REAL,
    UNIQUE (job_id, device)
);
CREATE INDEX IF NOT EXISTS executions_open ON executions (phase);
CREATE TABLE IF NOT EXISTS seqs (
    device   TEXT PRIMARY KEY,
    reserved INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Execution:
    id: int
    job_id: str
    device: str
    phase: str
    reason: str | None
    message: str | None
    confirmed: int
    total: int
    running_version: str | None
    attempt: int = 0
    retry_at: float | None = None

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL


class JobStore:
    """See the module docstring. Not thread-safe: one owner, one writer."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(_SCHEMA)
        cols = {r[1] for r in self.db.execute("PRAGMA table_info(executions)")}
        for col, kind in (("attempt", "INTEGER NOT NULL DEFAULT 0"), ("retry_at", "REAL")):
            if col not in cols:  # a store written before the retry policy
                self._tx(f"ALTER TABLE executions ADD COLUMN {col} {kind}")
        self._seq: dict[str, tuple[int, int]] = {}  # device -> (next, reserved)

    def close(self) -> None:
        self.db.close()

    def _tx(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self.db:  # one transaction
            return self.db.execute(sql, args)

    # --- jobs

    def has_job(self, job_id: str) -> bool:
        return (
            self.db.execute("SELECT 1 FROM jobs WHERE job_id=?", (job_id,)).fetchone() is not None
        )

    def add_job(self, job_id: str, request: dict[str, Any], devices: list[str]) -> bool:
        """Record a job and its queued executions; False if the id is known already."""
        now = time.time()
        try:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(
                "INSERT INTO jobs (job_id, request, received) VALUES (?, ?, ?)",
                (job_id, json.dumps(request, sort_keys=True), now),
            )
            for dev in devices:
                self.db.execute(
                    "INSERT INTO executions (job_id, device, phase) VALUES (?, ?, 'queued')",
                    (job_id, dev),
                )
            self.db.execute("COMMIT")
        except sqlite3.IntegrityError:
            self.db.execute("ROLLBACK")
            return False
        return True

    def request(self, job_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT request FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def job_ids(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT job_id FROM jobs ORDER BY received")]

    # --- executions

    _COLS = ("id, job_id, device, phase, reason, message, confirmed, total, running_version, "
             "attempt, retry_at")

    def executions(self, job_id: str | None = None) -> list[Execution]:
        if job_id is None:
            rows = self.db.execute(f"SELECT {self._COLS} FROM executions ORDER BY id")
        else:
            rows = self.db.execute(
                f"SELECT {self._COLS} FROM executions WHERE job_id=? ORDER BY id", (job_id,)
            )
        return [Execution(*r) for r in rows]

    def open_executions(self) -> Iterator[Execution]:
        """Every execution not finished, in order of arrival (running ones resume)."""
        rows = self.db.execute(
            f"SELECT {self._COLS} FROM executions WHERE phase NOT IN "
            "('done', 'failed', 'rolled_back', 'cancelled') ORDER BY id"
        )
        return (Execution(*r) for r in rows.fetchall())

    def get(self, job_id: str, device: str) -> Execution | None:
        row = self.db.execute(
            f"SELECT {self._COLS} FROM executions WHERE job_id=? AND device=?", (job_id, device)
        ).fetchone()
        return None if row is None else Execution(*row)

    def update(
        self,
        job_id: str,
        device: str,
        phase: str,
        *,
        reason: str | None = None,
        message: str | None = None,
        confirmed: int | None = None,
        total: int | None = None,
        running_version: str | None = None,
    ) -> bool:
        """Move an execution on. A finished execution never changes again (False)."""
        now = time.time()
        cur = self._tx(
            "UPDATE executions SET phase=?, reason=COALESCE(?, reason), "
            "message=COALESCE(?, message), confirmed=COALESCE(?, confirmed), "
            "total=COALESCE(?, total), running_version=COALESCE(?, running_version), "
            "started=COALESCE(started, ?), finished=? "
            "WHERE job_id=? AND device=? AND phase NOT IN "
            "('done', 'failed', 'rolled_back', 'cancelled')",
            (phase, reason, message, confirmed, total, running_version, now,
             now if phase in TERMINAL else None, job_id, device),
        )  # fmt: skip
        return cur.rowcount == 1

    def retry(self, job_id: str, device: str, attempt: int, retry_at: float, reason: str,
              message: str) -> bool:  # fmt: skip
        """Queue an unfinished execution again as attempt ``attempt``, not before
        ``retry_at`` (epoch seconds); False if it is finished or the attempt is not new."""
        cur = self._tx(
            "UPDATE executions SET phase='queued', attempt=?, retry_at=?, reason=?, message=? "
            "WHERE job_id=? AND device=? AND attempt<? AND phase NOT IN "
            "('done', 'failed', 'rolled_back', 'cancelled')",
            (attempt, retry_at, reason, message, job_id, device, attempt),
        )
        return cur.rowcount == 1

    def clear_reason(self, job_id: str, device: str) -> None:
        """An unfinished execution's reason and message cleared (a new attempt starts)."""
        self._tx("UPDATE executions SET reason=NULL, message=NULL WHERE job_id=? AND device=? "
                 "AND phase NOT IN ('done', 'failed', 'rolled_back', 'cancelled')",
                 (job_id, device))  # fmt: skip

    def queue_depth(self) -> int:
        row = self.db.execute("SELECT COUNT(*) FROM executions WHERE phase='queued'").fetchone()
        return int(row[0])

    # --- status sequence numbers

    def next_seq(self, device: str) -> int:
        """The next status number for ``device``: above every one a process ever published."""
        state = self._seq.get(device)
        if state is None:
            row = self.db.execute("SELECT reserved FROM seqs WHERE device=?", (device,)).fetchone()
            base = int(row[0]) if row else 0
            state = (base + 1, base)  # nothing above what was reserved before is ours yet
        nxt, reserved = state
        if nxt > reserved:  # reserve a block before the first number of it goes out
            reserved = nxt + SEQ_BLOCK - 1
            self._tx(
                "INSERT INTO seqs (device, reserved) VALUES (?, ?) "
                "ON CONFLICT(device) DO UPDATE SET reserved=excluded.reserved",
                (device, reserved),
            )
        self._seq[device] = (nxt + 1, reserved)
        return nxt

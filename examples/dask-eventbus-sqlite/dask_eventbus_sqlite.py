"""A dask-eventbus backend that keeps events in an SQLite database.

Publishing appends a batch in one transaction: once it is committed, the
batch is accepted. Reading back follows the table's rowids.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from dask_eventbus import Backend, BackendOptions, Message, SubscribeOptions, Subscription
from dask_eventbus.backends import Delivery

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    type TEXT NOT NULL,
    subject TEXT,
    body BLOB NOT NULL
)
"""


class SQLiteOptions(BackendOptions):
    path: str = "dask-events.db"
    """The database file; created with its table when missing."""
    timeout: float = 5.0
    """Seconds to wait for another writer's lock before failing."""


class SQLiteBackend(Backend):
    name = "sqlite"
    Options = SQLiteOptions
    options: SQLiteOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        self._db = connect(self.options)

    def publish(self, messages: Sequence[Message]) -> None:
        if self._db is None:
            raise RuntimeError("the sqlite backend is not open")
        rows = [(m.id, m.type, m.subject, m.body) for m in messages]
        with self._db:  # one transaction: all of the batch, or an exception
            self._db.executemany(
                "INSERT INTO events (id, type, subject, body) VALUES (?, ?, ?, ?)", rows
            )

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def open_subscription(self, options: SubscribeOptions) -> Subscription:
        return SQLiteSubscription(self.options, options.from_beginning)

    def describe(self) -> str:
        return f"SQLite {self.options.path}"


class SQLiteSubscription(Subscription):
    """Polls the table for rows after the last one read."""

    POLL_INTERVAL = 0.05

    def __init__(self, options: SQLiteOptions, from_beginning: bool) -> None:
        super().__init__()
        self._db = connect(options)
        if from_beginning:
            self._last = 0
        else:
            (self._last,) = self._db.execute(
                "SELECT COALESCE(MAX(position), 0) FROM events"
            ).fetchone()

    def fetch(self, timeout: float) -> Sequence[Delivery]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self._db.execute(
                "SELECT position, body FROM events WHERE position > ? ORDER BY position LIMIT 1000",
                (self._last,),
            ).fetchall()
            if rows:
                self._last = rows[-1][0]
                return [Delivery(body) for _, body in rows]
            if time.monotonic() >= deadline:
                return []
            time.sleep(self.POLL_INTERVAL)

    def _close(self) -> None:
        self._db.close()


def connect(options: SQLiteOptions) -> sqlite3.Connection:
    db = sqlite3.connect(options.path, timeout=options.timeout, check_same_thread=False)
    db.execute(SCHEMA)
    db.commit()
    return db

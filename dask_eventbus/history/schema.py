"""The history database's schema, as migrations applied in order.

Each migration is a list of statements valid on PostgreSQL and SQLite;
``archive`` applies those a database lacks when it starts and records them
in ``eventbus_schema``. Never change a released migration: add one.

Times are seconds since the epoch (UTC), as DOUBLE PRECISION: one type that
compares and subtracts alike on both databases. A scheduler run is
``(source, run)``: the event source and the plugin run in its event ids.
"""

from __future__ import annotations

_V1 = [
    # Every event archived, once: the idempotency key, and what `report`
    # replays. `body` is the CloudEvent's JSON.
    """CREATE TABLE events (
        source TEXT NOT NULL,
        id TEXT NOT NULL,
        run TEXT NOT NULL,
        sequence BIGINT NOT NULL,
        type TEXT NOT NULL,
        time DOUBLE PRECISION NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (source, id)
    )""",
    "CREATE INDEX events_by_run ON events (source, run, sequence)",
    """CREATE TABLE schedulers (
        source TEXT NOT NULL,
        run TEXT NOT NULL,
        scheduler_id TEXT,
        address TEXT,
        versions TEXT,
        started DOUBLE PRECISION,
        closed DOUBLE PRECISION,
        crashed DOUBLE PRECISION,
        first_event DOUBLE PRECISION,
        last_event DOUBLE PRECISION,
        events BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (source, run)
    )""",
    """CREATE TABLE tasks (
        source TEXT NOT NULL,
        run TEXT NOT NULL,
        key TEXT NOT NULL,
        prefix TEXT,
        "group" TEXT,
        state TEXT,
        outcome TEXT,
        worker TEXT,
        submitted DOUBLE PRECISION,
        started DOUBLE PRECISION,
        finished DOUBLE PRECISION,
        updated DOUBLE PRECISION,
        compute_seconds DOUBLE PRECISION,
        nbytes BIGINT,
        exception TEXT,
        traceback TEXT,
        cause TEXT,
        span_id TEXT,
        unfinished BOOLEAN NOT NULL DEFAULT FALSE,
        PRIMARY KEY (source, run, key)
    )""",
    "CREATE INDEX tasks_by_outcome ON tasks (outcome, finished)",
    "CREATE INDEX tasks_by_prefix ON tasks (prefix)",
    """CREATE TABLE workers (
        source TEXT NOT NULL,
        run TEXT NOT NULL,
        address TEXT NOT NULL,
        spell DOUBLE PRECISION NOT NULL,
        name TEXT,
        nthreads INTEGER,
        memory_limit BIGINT,
        joined DOUBLE PRECISION,
        departed DOUBLE PRECISION,
        reason TEXT,
        expected BOOLEAN,
        processing TEXT,
        processing_total INTEGER,
        lost_total INTEGER,
        status TEXT,
        PRIMARY KEY (source, run, address, spell)
    )""",
    """CREATE TABLE worker_metrics (
        source TEXT NOT NULL,
        id TEXT NOT NULL,
        run TEXT NOT NULL,
        address TEXT NOT NULL,
        time DOUBLE PRECISION NOT NULL,
        status TEXT,
        processing INTEGER,
        executing INTEGER,
        ready INTEGER,
        memory_process BIGINT,
        memory_managed BIGINT,
        memory_unmanaged BIGINT,
        memory_spilled BIGINT,
        memory_limit BIGINT,
        cpu DOUBLE PRECISION,
        PRIMARY KEY (source, id)
    )""",
    "CREATE INDEX worker_metrics_by_worker ON worker_metrics (source, run, address, time)",
    """CREATE TABLE clients (
        source TEXT NOT NULL,
        run TEXT NOT NULL,
        client TEXT NOT NULL,
        seen DOUBLE PRECISION,
        PRIMARY KEY (source, run, client)
    )""",
    """CREATE TABLE graphs (
        source TEXT NOT NULL,
        id TEXT NOT NULL,
        run TEXT NOT NULL,
        time DOUBLE PRECISION NOT NULL,
        client TEXT,
        stimulus_id TEXT,
        tasks INTEGER,
        keys INTEGER,
        prefixes TEXT,
        PRIMARY KEY (source, id)
    )""",
    """CREATE TABLE spans (
        source TEXT NOT NULL,
        run TEXT NOT NULL,
        span_id TEXT NOT NULL,
        name TEXT,
        parent_id TEXT,
        PRIMARY KEY (source, run, span_id)
    )""",
    """CREATE TABLE logs (
        source TEXT NOT NULL,
        id TEXT NOT NULL,
        run TEXT NOT NULL,
        time DOUBLE PRECISION NOT NULL,
        topic TEXT,
        message TEXT,
        PRIMARY KEY (source, id)
    )""",
    # Sequence numbers missing and not announced as dropped, per run, as of
    # the last commit.
    """CREATE TABLE gaps (
        source TEXT NOT NULL,
        run TEXT NOT NULL,
        first_sequence BIGINT NOT NULL,
        last_sequence BIGINT NOT NULL,
        PRIMARY KEY (source, run, first_sequence)
    )""",
    # The archiver's own bookkeeping, written in the same transaction as the
    # rows: the sequence numbers seen per run, and where each file was read to.
    """CREATE TABLE archive_sequences (
        source TEXT NOT NULL,
        run TEXT NOT NULL,
        state TEXT NOT NULL,
        PRIMARY KEY (source, run)
    )""",
    """CREATE TABLE archive_positions (
        input TEXT PRIMARY KEY,
        position BIGINT NOT NULL
    )""",
]

MIGRATIONS: list[list[str]] = [_V1]
"""Migration ``n`` (from 1) is ``MIGRATIONS[n - 1]``."""

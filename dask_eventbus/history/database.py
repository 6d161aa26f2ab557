"""The history database: PostgreSQL or an embedded SQLite file, one interface.

:func:`connect` opens ``postgresql://...`` (psycopg 3) or ``sqlite:///PATH``
and applies the schema's migrations. Statements are written once, with
``?`` placeholders, and run on either. Errors are sorted into trouble that
passes (a connection lost, the database restarting: retry) and refusals
(disk full, a constraint: stop and say why), see :class:`DatabaseRefused`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from ..config import redact_url
from .schema import MIGRATIONS

SCHEMES = ("postgresql://", "postgres://", "sqlite:///")
ADVISORY_LOCK = 0x6461736B  # "dask": the archive's PostgreSQL advisory lock key


class DatabaseUnavailable(Exception):
    """The database cannot be reached or the connection broke; worth retrying."""


class DatabaseRefused(Exception):
    """The database refused a write for a reason retrying does not cure."""


class ArchiveLocked(Exception):
    """Another archiver holds the database."""


def is_database_url(text: str) -> bool:
    """Whether ``text`` names a history database rather than a file."""
    return text.startswith(SCHEMES)


class Database:
    """One connection to a history database, in explicit transactions."""

    dialect: str
    url: str

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; its rows (empty for statements without)."""
        raise NotImplementedError

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement for each row."""
        raise NotImplementedError

    def insert_rows(
        self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> None:
        """Insert many new rows fast (PostgreSQL: COPY)."""
        raise NotImplementedError

    def merge_rows(
        self, table: str, columns: Sequence[str], conflict: str, rows: Sequence[Sequence[Any]]
    ) -> None:
        """Insert rows, or merge each into the row with its key as ``conflict`` says
        (an ``ON CONFLICT ... DO UPDATE`` clause); no key twice in ``rows``."""
        marks = ", ".join("?" * len(columns))
        self.executemany(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) {conflict}", rows
        )

    def commit(self) -> None:
        raise NotImplementedError

    def rollback(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def lock_for_archiving(self) -> None:
        """Hold the database for this archiver until closed, or raise ArchiveLocked."""
        raise NotImplementedError

    def migrate(self) -> int:
        """Apply the migrations this database lacks; the schema version now."""
        self.execute(
            "CREATE TABLE IF NOT EXISTS eventbus_schema "
            "(version INTEGER PRIMARY KEY, applied DOUBLE PRECISION NOT NULL)"
        )
        self.commit()
        (current,) = self.execute("SELECT COALESCE(MAX(version), 0) FROM eventbus_schema")[0]
        if current > len(MIGRATIONS):
            raise DatabaseRefused(
                f"the database has history schema version {current}, newer than this "
                f"dask-eventbus knows ({len(MIGRATIONS)}); upgrade dask-eventbus"
            )
        for version, statements in enumerate(MIGRATIONS[current:], start=current + 1):
            for statement in statements:
                self.execute(statement)
            self.execute(
                "INSERT INTO eventbus_schema (version, applied) VALUES (?, ?)",
                (version, time.time()),
            )
            self.commit()
        return len(MIGRATIONS)


def connect(url: str, *, migrate: bool = True, connect_timeout: float = 10.0) -> Database:
    """Open the history database at ``url``, its schema brought up to date."""
    if url.startswith("sqlite:///"):
        database: Database = SQLiteDatabase(url)
    elif url.startswith(("postgresql://", "postgres://")):
        database = PostgresDatabase(url, connect_timeout)
    else:
        raise ValueError(
            f"{redact_url(url)!r} is not a history database URL; use "
            "postgresql://USER@HOST:PORT/DATABASE or sqlite:///PATH (e.g. sqlite:///history.db)"
        )
    if migrate:
        database.migrate()
    return database


class SQLiteDatabase(Database):
    """An embedded SQLite file: no server, one writer at a time."""

    dialect = "sqlite"

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = url[len("sqlite:///") :]
        if not self.path:
            raise ValueError("sqlite:/// needs a file path, e.g. sqlite:///history.db")
        self._lock_file: int | None = None
        try:
            self._connection = sqlite3.connect(
                self.path, isolation_level=None, timeout=30, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise DatabaseRefused(f"cannot open {self.path}: {exc}") from exc
        # WAL lets `history` and `report` read while `archive` writes; NORMAL
        # sync is still crash-safe in WAL mode (a power cut may lose the last
        # commits, never corrupt; the archive then reads those events again).
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=NORMAL")
        self._in_transaction = False

    def _begin(self) -> None:
        if not self._in_transaction:
            self._connection.execute("BEGIN IMMEDIATE")
            self._in_transaction = True

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            if not sql.lstrip().upper().startswith("SELECT"):
                self._begin()
            return self._connection.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise _sqlite_error(exc) from exc

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        try:
            self._begin()
            self._connection.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise _sqlite_error(exc) from exc

    def insert_rows(
        self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> None:
        rows = list(rows)
        marks = ", ".join("?" * len(columns))
        self.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)

    def commit(self) -> None:
        if self._in_transaction:
            try:
                self._connection.execute("COMMIT")
            except sqlite3.Error as exc:
                raise _sqlite_error(exc) from exc
            finally:
                self._in_transaction = self._connection.in_transaction

    def rollback(self) -> None:
        if self._connection.in_transaction:
            self._connection.execute("ROLLBACK")
        self._in_transaction = False

    def close(self) -> None:
        self._connection.close()
        if self._lock_file is not None:
            os.close(self._lock_file)
            self._lock_file = None

    def lock_for_archiving(self) -> None:
        # A lock file beside the database: the kernel releases it when the
        # archiver dies, however it dies.
        self._lock_file = os.open(self.path + ".archive-lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_file)
            self._lock_file = None
            raise ArchiveLocked(
                f"another dask-eventbus archive is writing to {self.path}; one archiver "
                "per database (it reads any number of clusters): stop the other one first"
            ) from None


def _sqlite_error(exc: sqlite3.Error) -> Exception:
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and "locked" in text:
        return DatabaseUnavailable(f"the SQLite file is locked by another program: {text}")
    return DatabaseRefused(f"SQLite refused the write: {text}")


class PostgresDatabase(Database):
    """A PostgreSQL database through psycopg 3."""

    dialect = "postgresql"

    def __init__(self, url: str, connect_timeout: float) -> None:
        try:
            import psycopg
        except ImportError:
            raise ImportError(
                'PostgreSQL needs psycopg 3: pip install "dask-eventbus[postgres]"'
            ) from None
        self._psycopg = psycopg
        self.url = url
        self._cursor: Any = None
        where = urlsplit(url)
        self._where = f"{where.hostname or 'localhost'}:{where.port or 5432}{where.path}"
        try:
            self._connection = psycopg.connect(url, connect_timeout=max(1, int(connect_timeout)))
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(
                f"cannot connect to PostgreSQL at {self._where}: {_first_line(exc)}"
            ) from exc
        self._cursor = self._connection.cursor()

    def _run(self, action: Any) -> Any:
        psycopg = self._psycopg
        try:
            return action()
        except psycopg.Error as exc:
            raise self._error(exc) from exc

    def _error(self, exc: Exception) -> Exception:
        psycopg = self._psycopg
        sqlstate = getattr(exc, "sqlstate", None) or ""
        if (
            self._connection.closed
            or sqlstate.startswith(("08", "57P"))
            or (isinstance(exc, psycopg.OperationalError) and not sqlstate)
        ):
            return DatabaseUnavailable(
                f"lost the connection to PostgreSQL at {self._where}: {_first_line(exc)}"
            )
        return DatabaseRefused(
            f"PostgreSQL at {self._where} refused the write ({sqlstate or type(exc).__name__}): "
            f"{_first_line(exc)}"
        )

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            self._cursor.execute(_postgres(sql), params)
            return self._cursor.fetchall() if self._cursor.description else []

        result: list[tuple[Any, ...]] = self._run(run)
        return result

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._run(lambda: self._cursor.executemany(_postgres(sql), rows))

    def insert_rows(
        self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> None:
        def run() -> None:
            with self._cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)

        self._run(run)

    def merge_rows(
        self, table: str, columns: Sequence[str], conflict: str, rows: Sequence[Sequence[Any]]
    ) -> None:
        # One COPY into a scratch table and one INSERT ... SELECT: a tenth of
        # the time of a statement per row, even pipelined.
        scratch = f"merging_{table}"
        names = ", ".join(columns)
        self.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {scratch} (LIKE {table} INCLUDING DEFAULTS)"
        )
        self.insert_rows(scratch, columns, rows)
        self.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM {scratch} {conflict}")
        self.execute(f"TRUNCATE {scratch}")

    def commit(self) -> None:
        self._run(self._connection.commit)

    def rollback(self) -> None:
        if not self._connection.closed:
            with contextlib.suppress(self._psycopg.Error):
                self._connection.rollback()

    def close(self) -> None:
        self._connection.close()

    def lock_for_archiving(self) -> None:
        (held,) = self.execute("SELECT pg_try_advisory_lock(?)", (ADVISORY_LOCK,))[0]
        self.commit()
        if not held:
            raise ArchiveLocked(
                f"another dask-eventbus archive is writing to PostgreSQL at {self._where}; "
                "one archiver per database (it reads any number of clusters): "
                "stop the other one first"
            )


def _postgres(sql: str) -> str:
    return sql.replace("?", "%s")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

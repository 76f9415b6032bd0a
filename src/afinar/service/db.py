"""The job store: SQLAlchemy Core over SQLite (WAL) by default, PostgreSQL given a URL.

Schema changes are named migrations applied in order and recorded in `schema_migrations`, so a
server started on an older home directory upgrades it once, and two servers never apply the
same change twice.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine

metadata = MetaData()

jobs = Table(
    "jobs", metadata,
    Column("id", String(12), primary_key=True),
    Column("arn", String(1011), nullable=False, unique=True),
    Column("name", String(63), nullable=False, unique=True),
    Column("client_token", String(256), unique=True),
    Column("status", String(16), nullable=False, index=True),
    Column("customization_type", String(32), nullable=False),
    Column("base_model", String(2048), nullable=False),
    Column("base_model_arn", String(2048), nullable=False),
    Column("output_model_name", String(63), nullable=False),
    Column("output_model_arn", String(1011)),
    Column("request", JSON, nullable=False),
    Column("status_details", JSON, nullable=False),
    Column("failure_message", Text),
    Column("training_metrics", JSON),
    Column("validation_metrics", JSON),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("end_time", DateTime(timezone=True)),
    Column("worker_pid", Integer),
    Column("attempts", Integer, nullable=False, default=0),
)

events = Table(
    "job_events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(12), nullable=False, index=True),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("level", String(8), nullable=False),
    Column("message", Text, nullable=False),
)

migrations_table = Table(
    "schema_migrations", metadata,
    Column("name", String(128), primary_key=True),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)


def _m001_initial(conn: Connection) -> None:
    for t in (jobs, events):
        t.create(conn, checkfirst=True)


def _m002_list_index(conn: Connection) -> None:
    # List filters by status and sorts by creation time
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_jobs_status_created "
                      "ON jobs (status, created_at)"))


MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = [
    ("0001_initial", _m001_initial),
    ("0002_jobs_status_created_index", _m002_list_index),
]


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def as_utc(d: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands timestamps back naive; they were written in UTC."""
    if d is None:
        return None
    return d if d.tzinfo else d.replace(tzinfo=dt.UTC)


def connect(url: str, run_migrations: bool = True) -> Engine:
    kw: dict = {"future": True, "json_serializer": lambda o: json.dumps(o, default=str)}
    if url.startswith("sqlite"):
        kw["connect_args"] = {"check_same_thread": False, "timeout": 30}
    engine = create_engine(url, **kw)
    if url.startswith("sqlite"):
        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _rec):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
    if run_migrations:
        migrate(engine)
    return engine


def migrate(engine: Engine) -> list[str]:
    applied_now = []
    with engine.begin() as conn:
        migrations_table.create(conn, checkfirst=True)
    for name, fn in MIGRATIONS:
        with engine.begin() as conn:
            done = conn.execute(select(migrations_table.c.name).where(
                migrations_table.c.name == name)).first()
            if done:
                continue
            fn(conn)
            conn.execute(insert(migrations_table).values(name=name, applied_at=now()))
            applied_now.append(name)
    return applied_now

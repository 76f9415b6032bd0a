"""afinar's database: SQLAlchemy Core over SQLite (WAL) by default, PostgreSQL given a URL. The
tables of every service (jobs and their events, knowledge bases) and their migrations live here,
below the services that use them (jobs/store.py holds the job record updates).

Schema changes are named migrations applied in order and recorded in `schema_migrations`, so a
server started on an older home directory upgrades it once, and two servers never apply the
same change twice.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

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
    exc,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine

from afinar.errors import ConfigError

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
    # what the worker runs: "customization" (a model customization job) or "batch-inference"
    # (a model invocation job)
    Column("kind", String(32), nullable=False, server_default="customization", index=True),
)

events = Table(
    "job_events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(12), nullable=False, index=True),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("level", String(8), nullable=False),
    Column("message", Text, nullable=False),
)

# -- knowledge bases (rag/kb.py) ------------------------------------------------------------
knowledge_bases = Table(
    "knowledge_bases", metadata,
    Column("id", String(10), primary_key=True),
    Column("arn", String(128), nullable=False, unique=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("description", Text),
    Column("role_arn", String(2048)),
    Column("embedding_model", String(2048), nullable=False),
    Column("config", JSON, nullable=False),  # knowledgeBaseConfiguration, storageConfiguration
    Column("status", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

data_sources = Table(
    "kb_data_sources", metadata,
    Column("id", String(10), primary_key=True),
    Column("kb_id", String(10), nullable=False, index=True),
    Column("name", String(100), nullable=False),
    Column("description", Text),
    Column("uri", String(2048)),  # a local folder or s3:// prefix; None for CUSTOM sources
    Column("config", JSON, nullable=False),  # dataSourceConfiguration, vectorIngestion...
    Column("deletion_policy", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

kb_documents = Table(
    "kb_documents", metadata,
    Column("source_id", String(10), primary_key=True),
    Column("doc_id", String(1024), primary_key=True),  # path in the source, or custom id
    Column("kb_id", String(10), nullable=False, index=True),
    Column("uri", String(2048), nullable=False),
    Column("content_hash", String(64)),
    Column("metadata_hash", String(64)),
    Column("doc_metadata", JSON, nullable=False),
    Column("status", String(24), nullable=False),
    Column("reason", Text),
    Column("chunks", Integer, nullable=False, default=0),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

ingestion_jobs = Table(
    "kb_ingestion_jobs", metadata,
    Column("id", String(10), primary_key=True),
    Column("kb_id", String(10), nullable=False),
    Column("source_id", String(10), nullable=False, index=True),
    Column("status", String(16), nullable=False),
    Column("description", Text),
    Column("statistics", JSON, nullable=False),
    Column("failure_reasons", JSON, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
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


def _m003_knowledge_bases(conn: Connection) -> None:
    for t in (knowledge_bases, data_sources, kb_documents, ingestion_jobs):
        t.create(conn, checkfirst=True)


def _m004_job_kinds(conn: Connection) -> None:
    from sqlalchemy import inspect

    if "kind" not in {c["name"] for c in inspect(conn).get_columns("jobs")}:
        conn.execute(text("ALTER TABLE jobs ADD COLUMN kind VARCHAR(32) NOT NULL "
                          "DEFAULT 'customization'"))
        conn.execute(text("CREATE INDEX IF NOT EXISTS ix_jobs_kind ON jobs (kind)"))


MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = [
    ("0001_initial", _m001_initial),
    ("0002_jobs_status_created_index", _m002_list_index),
    ("0003_knowledge_bases", _m003_knowledge_bases),
    ("0004_job_kinds", _m004_job_kinds),
]


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def as_utc(d: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands timestamps back naive; they were written in UTC."""
    if d is None:
        return None
    return d if d.tzinfo else d.replace(tzinfo=dt.UTC)


def _sqlite_file(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    rest = url.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(rest) if rest and rest != ":memory:" else None


def connect(url: str, run_migrations: bool = True) -> Engine:
    """The job store, migrated. A store that is not a database (truncated to 0 bytes, overwritten,
    corrupt) is a ConfigError naming the file and what to do, never a silent empty start."""
    path = _sqlite_file(url)
    if path is not None and path.exists() and path.stat().st_size == 0:
        raise ConfigError(f"the job store {path} is empty (0 bytes): it was truncated or "
                          f"replaced, and its jobs, knowledge bases and events are gone",
                          hint=f"restore it from a backup, or delete {path} to start afresh "
                               f"with an empty store")
    try:
        engine = _connect(url, run_migrations)
    except exc.DatabaseError as e:
        where = path or url.split("@")[-1]
        raise ConfigError(f"the job store {where} cannot be read: {e.orig or e}".strip(),
                          hint=f"if the file is damaged, restore it from a backup or move it "
                               f"away to start with an empty store ({where}); check "
                               f"database_url otherwise") from None
    return engine


def _connect(url: str, run_migrations: bool) -> Engine:
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

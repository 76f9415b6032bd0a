"""Knowledge bases: data sources, incremental sync, document ingestion and deletion, retrieval.

Records (knowledge bases, data sources, documents with content hashes, ingestion jobs) live in
afinar's database (SQLite or PostgreSQL, db.py); chunks and vectors live in the knowledge
base's vector store (`$AFINAR_HOME/knowledge-bases/<id>/`). The CLI and the server share both.

A sync lists the source, compares content hashes (and metadata-sidecar hashes) with the
documents it indexed before, and only parses, chunks and embeds new and changed files; files
that disappeared are deleted from the store. It reports Bedrock's ingestion counters. A document
that fails (unsupported, corrupt, empty) is reported by name and reason and the others go on.
Chunks are written before their document's record, and a document's old chunks are always
deleted before its new ones are added, so a sync that was killed can simply be run again.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import string
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import delete, func, insert, select, update

from afinar import db, errors
from afinar.config import Settings
from afinar.errors import AfinarError, ConfigError
from afinar.progress import ProgressCallback, ProgressEvent, null_progress
from afinar.rag import chunking
from afinar.rag.filters import compile_filter
from afinar.rag.parsing import METADATA_SUFFIX, DocumentError, parse, supported

DEFAULT_CHUNKING = {"chunkingStrategy": "FIXED_SIZE",
                    "fixedSizeChunkingConfiguration": {"maxTokens": 300,
                                                       "overlapPercentage": 20}}
EMBED_GROUP = 256  # chunks embedded (and written) together, across documents
SEARCH_TYPES = ("HYBRID", "SEMANTIC")
DEFAULT_SEARCH_TYPE = "HYBRID"


class SyncStopped(Exception):
    """An ingestion job was asked to stop."""


class KnowledgeBaseError(AfinarError):
    """A knowledge-base request that cannot be done as asked."""


class NotFound(KnowledgeBaseError, errors.NotFound):
    pass


class Conflict(KnowledgeBaseError, errors.Conflict):
    pass


def _new_id() -> str:  # Bedrock's ids: 10 upper-case letters and digits
    return "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(10))


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _hash_obj(obj) -> str | None:
    if obj is None:
        return None
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _record(row) -> dict:
    """A row as a dict, its timestamps in UTC (SQLite hands them back naive)."""
    out = dict(row)
    for k in ("created_at", "updated_at", "started_at"):
        if k in out:
            out[k] = db.as_utc(out[k])
    return out


def _no_tokens(text, **_kw):
    return {"offset_mapping": []}


def validate_chunking(config: dict | None) -> dict:
    """Check a Bedrock chunkingConfiguration's strategy and ranges before any work."""
    config = config or DEFAULT_CHUNKING
    chunking.chunk("", config, _no_tokens, embed=lambda xs: [])
    return config


def source_uri(uri: str | None) -> str | None:
    """A data source's location: an s3:// prefix as given, a local folder made absolute
    (it must exist), None for a CUSTOM source."""
    if uri is None or uri.startswith("s3://"):
        return uri
    p = Path(uri).expanduser().resolve()
    if not p.is_dir():
        raise ConfigError(f"data source '{uri}' is not a folder",
                          hint="give a folder of documents (or an s3:// prefix)")
    return str(p)


def read_metadata(path: Path, where: str) -> dict:
    """A `<file>.metadata.json` sidecar: {"metadataAttributes": {key: string|number|boolean|
    list of strings}}."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DocumentError(f"{where}: invalid JSON at line {e.lineno}, column {e.colno}: "
                            f"{e.msg}") from None
    attrs = obj.get("metadataAttributes") if isinstance(obj, dict) else None
    if not isinstance(attrs, dict):
        raise DocumentError(f"{where}: expected {{\"metadataAttributes\": {{...}}}}")
    for k, v in attrs.items():
        ok = isinstance(v, str | int | float | bool) or (
            isinstance(v, list) and all(isinstance(x, str) for x in v))
        if not ok:
            raise DocumentError(f"{where}: metadataAttributes.{k}: values are strings, "
                                f"numbers, booleans or lists of strings; got {v!r}")
    return attrs


@dataclass
class SyncStats:
    scanned: int = 0
    metadata_scanned: int = 0
    new: int = 0
    modified: int = 0
    metadata_modified: int = 0
    deleted: int = 0
    failed: int = 0
    skipped: int = 0
    chunks: int = 0
    tokens: int = 0
    failures: list[str] = field(default_factory=list)

    def to_bedrock(self) -> dict:
        return {"numberOfDocumentsScanned": self.scanned,
                "numberOfMetadataDocumentsScanned": self.metadata_scanned,
                "numberOfNewDocumentsIndexed": self.new,
                "numberOfModifiedDocumentsIndexed": self.modified,
                "numberOfMetadataDocumentsModified": self.metadata_modified,
                "numberOfDocumentsDeleted": self.deleted,
                "numberOfDocumentsFailed": self.failed,
                "numberOfDocumentsSkipped": self.skipped}


@dataclass
class Entry:
    """One document found in a source."""
    doc_id: str
    uri: str
    content_hash: str
    local: Callable[[], Path]  # the file, fetched if remote
    metadata: dict | None = None
    error: str | None = None
    name: str | None = None  # decides the format; inline text without a suffix is .txt


@dataclass
class Retrieved:
    text: str
    score: float
    doc_id: str
    source_id: str
    uri: str
    chunk_id: str
    start: int
    end: int
    metadata: dict

    def location(self) -> dict:
        if self.uri.startswith("s3://"):
            return {"type": "S3", "s3Location": {"uri": self.uri}}
        return {"type": "CUSTOM", "customDocumentLocation": {"id": self.doc_id}}

    def to_bedrock(self) -> dict:
        return {"content": {"type": "TEXT", "text": self.text}, "location": self.location(),
                "metadata": self.metadata, "score": self.score, "documentId": self.doc_id}


class KnowledgeBases:
    def __init__(self, settings: Settings, engine=None):
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        self.db = engine if engine is not None else db.connect(settings.db_url)
        self._embedders: dict = {}
        self._stores: dict = {}
        self._docs_cache: dict = {}
        self._lock = threading.RLock()
        self._kb_locks: dict[str, threading.Lock] = {}

    @property
    def root(self) -> Path:
        return self.settings.home / "knowledge-bases"

    def arn(self, kb_id: str) -> str:
        return (f"arn:aws:bedrock:{self.settings.region}:{self.settings.account_id}:"
                f"knowledge-base/{kb_id}")

    # -- knowledge bases ---------------------------------------------------------------------
    def create(self, name: str, embedding_model: str | None = None, *,
               description: str | None = None, role_arn: str | None = None,
               config: dict | None = None, confined: bool = False) -> dict:
        """`confined`: the embedding model id came from a client (see check_embedding_model)."""
        from afinar.inference.embed import DEFAULT_EMBEDDING_MODEL, check_embedding_model

        embedding_model = check_embedding_model(embedding_model or DEFAULT_EMBEDDING_MODEL,
                                                self.settings, confined)
        with self.db.begin() as c:
            if c.execute(select(db.knowledge_bases.c.id).where(
                    db.knowledge_bases.c.name == name)).first():
                raise Conflict(f"a knowledge base named '{name}' already exists",
                               hint="pick another name, or delete the old one first")
            kb_id, t = _new_id(), db.now()
            c.execute(insert(db.knowledge_bases).values(
                id=kb_id, arn=self.arn(kb_id), name=name, description=description,
                role_arn=role_arn, embedding_model=embedding_model, config=config or {},
                status="ACTIVE", created_at=t, updated_at=t))
        return self.get(kb_id)

    def get(self, ident: str) -> dict:
        t = db.knowledge_bases
        with self.db.connect() as c:
            row = c.execute(select(t).where((t.c.id == ident) | (t.c.name == ident)
                                            | (t.c.arn == ident))).mappings().first()
        if row is None:
            raise NotFound(f"no knowledge base '{ident}'",
                           hint="`afinar kb list` shows the knowledge bases")
        return _record(row)

    def list(self) -> list[dict]:
        t = db.knowledge_bases
        with self.db.connect() as c:
            rows = c.execute(select(t).order_by(t.c.created_at)).mappings().all()
        return [_record(r) for r in rows]

    def delete(self, ident: str) -> dict:
        kb = self.get(ident)
        with self._kb_lock(kb["id"]):
            with self.db.begin() as c:
                for t in (db.kb_documents, db.data_sources, db.ingestion_jobs):
                    c.execute(delete(t).where(t.c.kb_id == kb["id"]))
                c.execute(delete(db.knowledge_bases).where(db.knowledge_bases.c.id == kb["id"]))
            with self._lock:
                self._stores.pop(kb["id"], None)
            import shutil
            shutil.rmtree(self.root / kb["id"], ignore_errors=True)
        kb["status"] = "DELETING"
        return kb

    def counts(self, kb_id: str) -> dict:
        t = db.kb_documents
        with self.db.connect() as c:
            rows = c.execute(select(t.c.status, func.count(), func.sum(t.c.chunks)).where(
                t.c.kb_id == kb_id).group_by(t.c.status)).all()
        return {s: {"documents": n, "chunks": int(ch or 0)} for s, n, ch in rows}

    # -- data sources --------------------------------------------------------------------------
    def add_source(self, kb_ident: str, name: str, uri: str | None, *,
                   chunking_config: dict | None = None, config: dict | None = None,
                   description: str | None = None, deletion_policy: str = "DELETE") -> dict:
        kb = self.get(kb_ident)
        defaulted = chunking_config is None
        chunking_config = validate_chunking(chunking_config)
        if deletion_policy not in ("DELETE", "RETAIN"):
            raise ConfigError("dataDeletionPolicy must be DELETE or RETAIN")
        uri = source_uri(uri)
        with self.db.begin() as c:
            t = db.data_sources
            if c.execute(select(t.c.id).where((t.c.kb_id == kb["id"]) & (t.c.name == name))
                         ).first():
                raise Conflict(f"knowledge base '{kb['name']}' already has a data source "
                               f"named '{name}'")
            sid, now = _new_id(), db.now()
            cfg = dict(config or {})
            cfg.setdefault("type", "CUSTOM" if uri is None else "S3")
            c.execute(insert(t).values(
                id=sid, kb_id=kb["id"], name=name, description=description, uri=uri,
                config={"dataSourceConfiguration": cfg, "vectorIngestionConfiguration": {
                    "chunkingConfiguration": chunking_config},
                    "defaultChunking": defaulted},
                deletion_policy=deletion_policy, status="AVAILABLE", created_at=now,
                updated_at=now))
        return self.get_source(kb["id"], sid)

    def get_source(self, kb_ident: str, ident: str) -> dict:
        kb = self.get(kb_ident)
        t = db.data_sources
        with self.db.connect() as c:
            row = c.execute(select(t).where((t.c.kb_id == kb["id"]) & (
                (t.c.id == ident) | (t.c.name == ident)))).mappings().first()
        if row is None:
            raise NotFound(f"knowledge base '{kb['name']}' has no data source '{ident}'")
        return _record(row)

    def list_sources(self, kb_ident: str) -> list[dict]:
        kb = self.get(kb_ident)
        t = db.data_sources
        with self.db.connect() as c:
            rows = c.execute(select(t).where(t.c.kb_id == kb["id"]).order_by(
                t.c.created_at)).mappings().all()
        return [_record(r) for r in rows]

    def resolve_source(self, kb_ident: str, ident: str | None = None) -> dict:
        """A data source by name or id; without one, the knowledge base's only source."""
        if ident is not None:
            return self.get_source(kb_ident, ident)
        sources = self.list_sources(kb_ident)
        if len(sources) != 1:
            raise KnowledgeBaseError(f"knowledge base '{kb_ident}' has {len(sources)} data "
                                     f"sources; name the one to use",
                                     hint="pass --source NAME_OR_ID")
        return sources[0]

    def delete_source(self, kb_ident: str, ident: str) -> dict:
        src = self.get_source(kb_ident, ident)
        with self._kb_lock(src["kb_id"]):
            keys = [self._key(src["id"], d) for d in self._doc_ids(src["id"])]
            if src["deletion_policy"] == "DELETE" and keys:
                self.store(src["kb_id"]).delete_documents(keys)
            with self.db.begin() as c:
                c.execute(delete(db.kb_documents).where(db.kb_documents.c.source_id == src["id"]))
                c.execute(delete(db.data_sources).where(db.data_sources.c.id == src["id"]))
        src["status"] = "DELETING"
        return src

    # -- engines: embedder and store, one per knowledge base, loaded on first use --------------
    def embedder(self, kb: dict):
        from afinar.inference.embed import load_embedder

        with self._lock:
            name = kb["embedding_model"]
            if name not in self._embedders:
                self._embedders[name] = load_embedder(name, self.settings)
            return self._embedders[name]

    def store(self, kb_id: str):
        from afinar.rag.store import LanceStore

        with self._lock:
            if kb_id not in self._stores:
                kb = self.get(kb_id)
                self._stores[kb_id] = LanceStore(self.root / kb_id / "lance",
                                                 self.embedder(kb).dim)
            return self._stores[kb_id]

    @contextmanager
    def _kb_lock(self, kb_id: str) -> Iterator[None]:
        """One writer per knowledge base: across threads of this process and across processes
        (an ingestion job's worker beside the server's single-document ingestion)."""
        import fcntl

        with self._lock:
            lock = self._kb_locks.setdefault(kb_id, threading.Lock())
        with lock:
            p = self.root / kb_id / ".write.lock"
            p.parent.mkdir(parents=True, exist_ok=True)
            with p.open("a") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)

    @staticmethod
    def _key(source_id: str, doc_id: str) -> str:
        return f"{source_id}/{doc_id}"

    def _doc_ids(self, source_id: str) -> list[str]:
        t = db.kb_documents
        with self.db.connect() as c:
            return list(c.execute(select(t.c.doc_id).where(t.c.source_id == source_id))
                        .scalars())

    # -- scanning a source ---------------------------------------------------------------------
    def _scan(self, src: dict, stats: SyncStats, tmp: Path) -> Iterator[Entry]:
        uri = src["uri"]
        if uri is None:
            raise KnowledgeBaseError(f"data source '{src['name']}' is a CUSTOM source: its "
                                     f"documents are ingested one by one, not synced",
                                     hint="use IngestKnowledgeBaseDocuments / `afinar kb "
                                          "ingest`")
        from afinar.storage import Storage
        storage = Storage(self.settings)
        if uri.startswith("s3://"):
            loc = storage.locate(uri.rstrip("/") + "/", "dataSource")
            if loc.remote:
                yield from self._scan_s3(storage, loc, stats, tmp)
                return
            base, prefix = loc.local, uri.rstrip("/") + "/"
        else:
            base, prefix = Path(uri), None
        if not base.is_dir():
            raise KnowledgeBaseError(f"data source '{src['name']}': {uri} is not a folder "
                                     f"(looked for {base})")
        from afinar.storage import files_under
        links: list[Path] = []
        top = base.resolve()
        for p in files_under(top, links):
            if p.name.endswith(METADATA_SUFFIX):
                continue
            rel = p.relative_to(top).as_posix()
            if any(part.startswith(".") for part in rel.split("/")):
                stats.skipped += 1  # hidden files and folders (.git, .DS_Store, ...)
                continue
            e = Entry(rel, prefix + rel if prefix else p.as_uri(), _hash_file(p),
                      lambda p=p: p)
            side = p.with_name(p.name + METADATA_SUFFIX)
            if side.is_file() and not side.is_symlink():
                stats.metadata_scanned += 1
                try:
                    e.metadata = read_metadata(side, side.name)
                except DocumentError as err:
                    e.error = err.message
            yield e
        for link in links:  # never followed out of the source's folder
            stats.skipped += 1
            stats.failures.append(f"{link.relative_to(top).as_posix()}: a symbolic link to "
                                  f"outside the data source; skipped")

    def _scan_s3(self, storage, loc, stats: SyncStats, tmp: Path) -> Iterator[Entry]:
        """Real S3: the ETag is the content hash, so unchanged objects are not downloaded."""
        s3 = storage._s3()
        objs = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket,
                                                                 Prefix=loc.key):
            for o in page.get("Contents", []):
                objs[o["Key"]] = o
        for key in sorted(objs):
            if key.endswith("/") or key.endswith(METADATA_SUFFIX):
                continue
            rel = key[len(loc.key):]
            if any(part.startswith(".") for part in rel.split("/")):
                stats.skipped += 1
                continue

            def fetch(key=key) -> Path:
                dest = tmp / hashlib.sha1(key.encode()).hexdigest() / Path(key).name
                dest.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(loc.bucket, key, str(dest))
                return dest
            e = Entry(rel, f"s3://{loc.bucket}/{key}", objs[key]["ETag"].strip('"'), fetch)
            side = key + METADATA_SUFFIX
            if side in objs:
                stats.metadata_scanned += 1
                dest = tmp / "meta" / hashlib.sha1(side.encode()).hexdigest()
                dest.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(loc.bucket, side, str(dest))
                try:
                    e.metadata = read_metadata(dest, Path(side).name)
                except DocumentError as err:
                    e.error = err.message
            yield e

    # -- ingestion -----------------------------------------------------------------------------
    def _chunk_config(self, src: dict, emb) -> dict:
        cfg = (src["config"].get("vectorIngestionConfiguration") or {}).get(
            "chunkingConfiguration") or DEFAULT_CHUNKING
        if src["config"].get("defaultChunking") and emb.max_length:
            # Bedrock's default (300 tokens) assumes an 8k-token embedding model; the default
            # here never exceeds what the embedding model reads (MiniLM: 256 with [CLS]/[SEP])
            fixed = dict(cfg["fixedSizeChunkingConfiguration"])
            fixed["maxTokens"] = min(fixed["maxTokens"], emb.max_length - 2)
            cfg = {"chunkingStrategy": "FIXED_SIZE", "fixedSizeChunkingConfiguration": fixed}
        return cfg

    def _index(self, kb: dict, src: dict, docs: list[tuple[Entry, str]], stats: SyncStats,
               progress: ProgressCallback, done0: int = 0, total: int | None = None,
               should_stop: Callable[[], bool] | None = None) -> list:
        """Parse, chunk, embed and store documents; returns per-document (entry, status,
        reason). `docs` holds (entry, kind) with kind new | modified. A stop asked for is
        honoured after the documents parsed so far are stored (SyncStopped)."""
        emb, store = self.embedder(kb), self.store(kb["id"])
        cfg = self._chunk_config(src, emb)
        hierarchical = cfg.get("chunkingStrategy") == "HIERARCHICAL"
        results, group, rows, texts = [], [], [], []
        done = done0

        def flush():
            nonlocal group, rows, texts
            if not group:
                return
            vecs = emb.encode(texts)
            store.delete_documents([self._key(src["id"], e.doc_id) for e, _k, _n in group])
            store.add(rows, vecs)
            with self.db.begin() as c:
                for e, kind, n in group:
                    self._put_document(c, kb, src, e, "INDEXED", None, n)
                    results.append((e, "INDEXED", None))
                    if kind == "new":
                        stats.new += 1
                    else:
                        stats.modified += 1
            stats.chunks += len(rows)
            group, rows, texts = [], [], []

        for e, kind in docs:
            if should_stop is not None and should_stop():
                flush()
                raise SyncStopped()
            try:
                if e.error:
                    raise DocumentError(e.error)
                text = parse(e.local(), e.name or e.doc_id)
                pieces = chunking.chunk(text, cfg, emb.tokenizer,
                                        embed=lambda xs: emb.encode(xs).tolist())
                if not pieces:
                    raise DocumentError("no text to index after chunking")
            except (DocumentError, ConfigError) as err:
                self._fail(kb, src, e, err.message, stats)
                results.append((e, "FAILED", err.message))
                done += 1
                progress(ProgressEvent("ingest", done, total))
                continue
            except Exception as err:  # a parser bug must not stop the other documents
                msg = f"{type(err).__name__}: {err}"
                self._fail(kb, src, e, msg, stats)
                results.append((e, "FAILED", msg))
                done += 1
                continue
            key = self._key(src["id"], e.doc_id)
            n = 0
            for i, ch in enumerate(pieces):
                if hierarchical and ch.level == 0:
                    continue  # parents are returned, children are searched
                parent = pieces[ch.parent].text if hierarchical and ch.parent is not None \
                    else None
                rows.append({"chunk_id": f"{key}#{i}", "doc_key": key, "text": ch.text,
                             "parent_text": parent, "start": ch.start, "end": ch.end})
                texts.append(ch.text)
                n += 1
            group.append((e, kind, n))
            done += 1
            if len(rows) >= EMBED_GROUP:
                flush()
            progress(ProgressEvent("ingest", done, total, metrics={"chunks": stats.chunks
                                                                   + len(rows)}))
        flush()
        return results

    @staticmethod
    def _put_document(c, kb: dict, src: dict, e: Entry, status: str, reason: str | None,
                      chunks: int) -> None:
        """Write (replace) a document's record, inside the caller's transaction."""
        t = db.kb_documents
        c.execute(delete(t).where((t.c.source_id == src["id"]) & (t.c.doc_id == e.doc_id)))
        c.execute(insert(t).values(
            source_id=src["id"], doc_id=e.doc_id, kb_id=kb["id"], uri=e.uri,
            content_hash=e.content_hash, metadata_hash=_hash_obj(e.metadata),
            doc_metadata=e.metadata or {}, status=status, reason=reason, chunks=chunks,
            updated_at=db.now()))

    def _fail(self, kb, src, e: Entry, reason: str, stats: SyncStats) -> None:
        """A failed document: its old chunks (if any) stay out of the index."""
        stats.failed += 1
        stats.failures.append(f"{e.doc_id}: {reason}")
        self.store(kb["id"]).delete_documents([self._key(src["id"], e.doc_id)])
        with self.db.begin() as c:
            self._put_document(c, kb, src, e, "FAILED", reason, 0)

    def sync(self, kb_ident: str, source_ident: str | None = None, *,
             progress: ProgressCallback = null_progress, job_id: str | None = None,
             should_stop: Callable[[], bool] | None = None) -> dict:
        """Index what is new or changed in a data source, delete what disappeared. Records an
        ingestion job (so syncs from the CLI show in ListIngestionJobs too). Stopped (STOPPED,
        what was indexed kept) when `should_stop` says so; a sync run again does only what
        is left."""
        kb = self.get(kb_ident)
        src = self.resolve_source(kb["id"], source_ident)
        if job_id is None:
            job_id = self.new_ingestion_job(kb["id"], src["id"])["id"]
        stats = SyncStats()
        self._set_job(job_id, status="IN_PROGRESS")
        try:
            with self._kb_lock(kb["id"]), tempfile.TemporaryDirectory() as tmp:
                self._sync(kb, src, stats, Path(tmp), progress, should_stop)
        except SyncStopped:
            self._set_job(job_id, status="STOPPED", statistics=stats.to_bedrock(),
                          failure_reasons=stats.failures)
            return self.get_ingestion_job(kb["id"], src["id"], job_id) | {"_stats": stats}
        except AfinarError as e:
            self._set_job(job_id, status="FAILED", statistics=stats.to_bedrock(),
                          failure_reasons=[e.message] + stats.failures)
            raise
        except Exception as e:
            self._set_job(job_id, status="FAILED", statistics=stats.to_bedrock(),
                          failure_reasons=[f"{type(e).__name__}: {e}"] + stats.failures)
            raise
        self._set_job(job_id, status="COMPLETE", statistics=stats.to_bedrock(),
                      failure_reasons=stats.failures)
        return self.get_ingestion_job(kb["id"], src["id"], job_id) | {"_stats": stats}

    def _sync(self, kb: dict, src: dict, stats: SyncStats, tmp: Path,
              progress: ProgressCallback, should_stop: Callable[[], bool] | None) -> None:
        t = db.kb_documents
        with self.db.connect() as c:
            known = {r["doc_id"]: dict(r) for r in c.execute(
                select(t).where(t.c.source_id == src["id"])).mappings()}
        todo: list[tuple[Entry, str]] = []
        meta_only = []
        for e in self._scan(src, stats, tmp):
            stats.scanned += 1
            row = known.pop(e.doc_id, None)
            if row is None or row["status"] != "INDEXED":
                todo.append((e, "new"))
            elif row["content_hash"] != e.content_hash or e.error:
                todo.append((e, "modified"))
            elif row["metadata_hash"] != _hash_obj(e.metadata):
                meta_only.append(e)
        if meta_only:  # metadata lives with the document record: nothing to re-embed
            with self.db.begin() as c:
                for e in meta_only:
                    c.execute(update(t).where((t.c.source_id == src["id"])
                                              & (t.c.doc_id == e.doc_id)).values(
                        doc_metadata=e.metadata or {}, metadata_hash=_hash_obj(e.metadata),
                        updated_at=db.now()))
            stats.metadata_modified += len(meta_only)
        gone = sorted(known)
        if gone:
            self.store(kb["id"]).delete_documents([self._key(src["id"], d) for d in gone])
            with self.db.begin() as c:
                for d in gone:
                    c.execute(delete(t).where((t.c.source_id == src["id"]) & (t.c.doc_id == d)))
            stats.deleted += sum(1 for d in gone if known[d]["status"] == "INDEXED")
        if todo:
            progress(ProgressEvent("ingest", 0, len(todo)))
            try:
                self._index(kb, src, todo, stats, progress, total=len(todo),
                            should_stop=should_stop)
            finally:  # what was indexed before a stop is searchable
                self.store(kb["id"]).maintain()
                self._touch(kb["id"])
        elif gone:
            self.store(kb["id"]).maintain()
            self._touch(kb["id"])

    def _touch(self, kb_id: str) -> None:
        with self.db.begin() as c:
            c.execute(update(db.knowledge_bases).where(db.knowledge_bases.c.id == kb_id).values(
                updated_at=db.now()))

    # -- ingestion jobs ------------------------------------------------------------------------
    def new_ingestion_job(self, kb_id: str, source_id: str, description: str | None = None
                          ) -> dict:
        jid, t = _new_id(), db.now()
        with self.db.begin() as c:
            c.execute(insert(db.ingestion_jobs).values(
                id=jid, kb_id=kb_id, source_id=source_id, status="STARTING",
                description=description, statistics=SyncStats().to_bedrock(),
                failure_reasons=[], started_at=t, updated_at=t))
        return self.get_ingestion_job(kb_id, source_id, jid)

    def _set_job(self, job_id: str, **fields) -> None:
        with self.db.begin() as c:
            c.execute(update(db.ingestion_jobs).where(db.ingestion_jobs.c.id == job_id).values(
                updated_at=db.now(), **fields))

    def get_ingestion_job(self, kb_ident: str, source_ident: str, job_id: str) -> dict:
        src = self.get_source(kb_ident, source_ident)
        t = db.ingestion_jobs
        with self.db.connect() as c:
            row = c.execute(select(t).where((t.c.id == job_id) & (t.c.source_id == src["id"]))
                            ).mappings().first()
        if row is None:
            raise NotFound(f"no ingestion job '{job_id}' for data source '{src['name']}'")
        return self._reconciled(_record(row))

    def list_ingestion_jobs(self, kb_ident: str, source_ident: str) -> list[dict]:
        src = self.get_source(kb_ident, source_ident)
        t = db.ingestion_jobs
        with self.db.connect() as c:
            rows = c.execute(select(t).where(t.c.source_id == src["id"]).order_by(
                t.c.started_at)).mappings().all()
        return [self._reconciled(_record(r)) for r in rows]

    def _reconciled(self, rec: dict) -> dict:
        """An ingestion job run by the job system (jobs/ingestion.py) whose worker ended without
        recording its end (killed, failed to start), or that is being stopped, says so."""
        if rec["status"] not in ("STARTING", "IN_PROGRESS"):
            return rec
        with self.db.connect() as c:
            j = c.execute(select(db.jobs.c.status, db.jobs.c.failure_message).where(
                (db.jobs.c.id == rec["id"]) & (db.jobs.c.kind == "ingestion"))).first()
        if j is None or j.status == "InProgress":
            return rec
        rec["status"] = {"Stopping": "STOPPING", "Stopped": "STOPPED",
                         "Completed": "COMPLETE"}.get(j.status, "FAILED")
        if j.failure_message:
            rec["failure_reasons"] = [j.failure_message] + list(rec["failure_reasons"] or [])
        return rec

    def fail_interrupted_jobs(self) -> int:
        """At server start: syncs a previous process left running did not finish (jobs of the
        job system resume instead)."""
        t = db.ingestion_jobs
        managed = select(db.jobs.c.id).where(db.jobs.c.kind == "ingestion")
        with self.db.begin() as c:
            r = c.execute(update(t).where(t.c.status.in_(["STARTING", "IN_PROGRESS"])
                                          & t.c.id.not_in(managed)).values(
                status="FAILED", updated_at=db.now(), failure_reasons=[
                    "interrupted: the server stopped during this ingestion job; start it "
                    "again (documents already indexed are not redone)"]))
        return r.rowcount

    # -- single documents ----------------------------------------------------------------------
    def ingest_documents(self, kb_ident: str, source_ident: str, docs: list[dict]) -> list[dict]:
        """Add or replace documents by id. Each doc: {"id", "text"} (inline) or {"uri"} (a file
        or s3:// object), with optional "metadata" {key: value}."""
        kb = self.get(kb_ident)
        src = self.get_source(kb["id"], source_ident)
        from afinar.storage import Storage
        storage = Storage(self.settings)
        stats = SyncStats()
        entries: list[tuple[Entry, str]] = []
        with tempfile.TemporaryDirectory() as tmp, self._kb_lock(kb["id"]):
            for i, d in enumerate(docs):
                if d.get("text") is not None:
                    if not d.get("id"):
                        raise ConfigError(f"documents[{i}]: inline text needs an 'id'")
                    name = d["id"] if supported(d["id"]) else d["id"] + ".txt"
                    p = Path(tmp) / hashlib.sha1(d["id"].encode()).hexdigest() / \
                        Path(name).name
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.write_text(d["text"], encoding="utf-8")
                    e = Entry(d["id"], d["id"], _hash_file(p), lambda p=p: p,
                              d.get("metadata"), name=name)
                elif d.get("uri"):
                    loc = storage.locate(d["uri"], f"documents[{i}].uri")
                    doc_id = d.get("id") or d["uri"]
                    path = storage.fetch(loc, Path(tmp) / str(i), f"documents[{i}].uri")
                    e = Entry(doc_id, d["uri"], _hash_file(path), lambda p=path: p,
                              d.get("metadata"))
                else:
                    raise ConfigError(f"documents[{i}]: give 'text' (with an 'id') or 'uri'")
                entries.append((e, "new"))
            results = self._index(kb, src, entries, stats, null_progress)
            self.store(kb["id"]).maintain()
            self._touch(kb["id"])
        by_id = {e.doc_id: (e, s, r) for e, s, r in results}  # in the order given
        return [{"doc_id": e.doc_id, "uri": e.uri, "status": s, "reason": r}
                for e, s, r in (by_id[e.doc_id] for e, _k in entries)]

    def delete_documents(self, kb_ident: str, source_ident: str, doc_ids: list[str]
                         ) -> list[dict]:
        kb = self.get(kb_ident)
        src = self.get_source(kb["id"], source_ident)
        t = db.kb_documents
        out = []
        with self._kb_lock(kb["id"]):
            with self.db.connect() as c:  # a document is named by its id or its URI
                by_uri = dict(c.execute(select(t.c.uri, t.c.doc_id).where(
                    t.c.source_id == src["id"])).all())
            known = set(by_uri.values())
            doc_ids = [d if d in known else by_uri.get(d, d) for d in doc_ids]
            present = [d for d in doc_ids if d in known]
            if present:
                self.store(kb["id"]).delete_documents([self._key(src["id"], d) for d in present])
                with self.db.begin() as c:
                    for d in present:
                        c.execute(delete(t).where((t.c.source_id == src["id"])
                                                  & (t.c.doc_id == d)))
                self._touch(kb["id"])
        for d in doc_ids:
            out.append({"doc_id": d, "status": "DELETING" if d in known else "NOT_FOUND"})
        return out

    def documents(self, kb_ident: str, source_ident: str | None = None) -> list[dict]:
        kb = self.get(kb_ident)
        t = db.kb_documents
        q = select(t).where(t.c.kb_id == kb["id"])
        if source_ident:
            q = q.where(t.c.source_id == self.get_source(kb["id"], source_ident)["id"])
        with self.db.connect() as c:
            rows = [_record(r) for r in c.execute(q.order_by(t.c.source_id, t.c.doc_id))
                    .mappings()]
        return rows

    # -- retrieval -----------------------------------------------------------------------------
    def _indexed_docs(self, kb_id: str) -> dict[str, dict]:
        """doc_key -> document record (cached until the knowledge base changes)."""
        t = db.kb_documents
        with self.db.connect() as c:
            stamp = tuple(c.execute(select(func.count(), func.max(t.c.updated_at)).where(
                t.c.kb_id == kb_id)).first())
            cached = self._docs_cache.get(kb_id)
            if cached and cached[0] == stamp:
                return cached[1]
            rows = c.execute(select(t).where((t.c.kb_id == kb_id) & (t.c.status == "INDEXED"))
                             ).mappings().all()
        docs = {self._key(r["source_id"], r["doc_id"]): dict(r) for r in rows}
        self._docs_cache[kb_id] = (stamp, docs)
        return docs

    def retrieve(self, kb_ident: str, query: str, k: int = 5, *,
                 search_type: str | None = None, filter: dict | None = None,
                 exact: bool = False) -> list[Retrieved]:
        if not query or not query.strip():
            raise ConfigError("the query is empty")
        if not 1 <= k <= 100:
            raise ConfigError(f"numberOfResults must be 1-100; got {k}")
        search_type = (search_type or DEFAULT_SEARCH_TYPE).upper()
        if search_type not in SEARCH_TYPES:
            raise ConfigError(f"search type must be HYBRID or SEMANTIC; got {search_type!r}")
        pred = compile_filter(filter) if filter else None
        kb = self.get(kb_ident)
        docs = self._indexed_docs(kb["id"])
        keys = None
        if pred is not None:
            keys = [k_ for k_, d in docs.items() if pred(self._metadata(d))]
            if len(keys) == len(docs):
                keys = None
        store, emb = self.store(kb["id"]), self.embedder(kb)
        vec = emb.encode([query])[0]
        # HIERARCHICAL: several children of one parent may match; fetch more, keep parents once
        hits = store.search(vec, min(100, k * 3), text=query,
                            hybrid=search_type == "HYBRID", doc_keys=keys, exact=exact)
        out, seen = [], set()
        for h in hits:
            d = docs.get(h.doc_key)
            if d is None:  # written by a sync still running: not yet visible
                continue
            sig = (h.doc_key, h.context)
            if sig in seen:
                continue
            seen.add(sig)
            out.append(Retrieved(h.context, h.score, d["doc_id"], d["source_id"], d["uri"],
                                 h.chunk_id, h.start, h.end,
                                 self._metadata(d) | {"x-amz-bedrock-kb-chunk-id": h.chunk_id}))
            if len(out) == k:
                break
        return out

    @staticmethod
    def _metadata(d: dict) -> dict:
        return dict(d["doc_metadata"] or {}) | {
            "x-amz-bedrock-kb-source-uri": d["uri"],
            "x-amz-bedrock-kb-data-source-id": d["source_id"]}

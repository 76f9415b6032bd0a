"""The vector store behind a knowledge base.

`VectorStore` is the small interface the rest of afinar uses; `LanceStore` implements it with
LanceDB, embedded on local disk: vectors, chunk text and spans in one table, native full-text
search (BM25) for hybrid queries, deletes by document. The vector index is IVF_SQ (sqrt(n)
partitions, 8-bit scalar quantization, 20 partitions probed, the top 50 re-ranked on the full
vectors). Measured at 100k chunks (benchmarks/rag.py): p95 ~9 ms at recall@10 1.00 against
~100 ms for the flat scan; IVF_HNSW_SQ reached recall 0.86 at 8.5 ms with default search
settings and needed ef=2000 (13 ms) for 0.98, and took 50 s to build against 16 s; IVF_FLAT was
as fast and exact but keeps a second full copy of the vectors. The index is built once a table
is large enough; below that the exact scan is fast and exact. A server store (PostgreSQL +
pgvector, LanceDB on object storage) can implement the same interface at scale.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Protocol

import numpy as np

# lance logs a deprecation warning per hybrid query (its sub-queries' score columns)
os.environ.setdefault("LANCEDB_LOG", "error")

ANN_MIN_ROWS = 20_000  # below this an exact scan is fast (~30 ms at 20k) and exact
ANN_NPROBES = 20  # benchmarks/rag.py: recall@10 1.00 at 100k chunks, p95 ~9 ms
ANN_REFINE = 5  # re-rank 5x the results asked for on the full vectors
RETRAIN_GROWTH = 4.0  # re-train the IVF partitions when the table grew 4x since


@dataclass
class Hit:
    chunk_id: str
    doc_key: str
    text: str  # what was searched (a child chunk for HIERARCHICAL)
    context: str  # what is returned: the parent chunk for HIERARCHICAL, else the text
    start: int
    end: int
    score: float


class VectorStore(Protocol):
    def add(self, rows: list[dict], vectors: np.ndarray) -> None: ...
    def delete_documents(self, doc_keys: list[str]) -> None: ...
    def search(self, vector: np.ndarray, k: int, *, text: str | None = None,
               hybrid: bool = False, doc_keys: list[str] | None = None,
               exact: bool = False) -> list[Hit]: ...
    def count(self) -> int: ...
    def maintain(self) -> dict: ...
    def size_bytes(self) -> int: ...


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


class LanceStore:
    TABLE = "chunks"

    def __init__(self, path: Path, dim: int):
        import lancedb
        import pyarrow as pa

        self.path, self.dim = Path(path), dim
        self.path.mkdir(parents=True, exist_ok=True)
        # read_consistency_interval 0: every read sees what another process (an ingestion
        # job's worker) committed
        self.db = lancedb.connect(str(self.path), read_consistency_interval=timedelta(0))
        self.schema = pa.schema([
            ("chunk_id", pa.string()), ("doc_key", pa.string()), ("text", pa.string()),
            ("parent_text", pa.string()), ("start", pa.int32()), ("end", pa.int32()),
            ("vector", pa.list_(pa.float32(), dim))])
        self.lock = threading.Lock()
        self._meta_path = self.path / "afinar-index.json"
        try:
            self.table = self.db.open_table(self.TABLE)
        except (FileNotFoundError, ValueError):
            self.table = self.db.create_table(self.TABLE, schema=self.schema, exist_ok=True)
        have = self.table.schema.field("vector").type.list_size
        if have != dim:
            from afinar.errors import ConfigError
            raise ConfigError(f"the vector store at {self.path} holds {have}-d vectors; the "
                              f"embedding model gives {dim}-d", hint="use the knowledge "
                              "base's own embedding model, or create a new knowledge base")

    # -- writing ---------------------------------------------------------------------------
    def add(self, rows: list[dict], vectors: np.ndarray) -> None:
        import pyarrow as pa

        if not rows:
            return
        cols = {k: [r.get(k) for r in rows] for k in ("chunk_id", "doc_key", "text",
                                                       "parent_text", "start", "end")}
        vec = pa.FixedSizeListArray.from_arrays(
            pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel()), self.dim)
        batch = pa.Table.from_arrays(
            [pa.array(cols[f.name], f.type) for f in self.schema if f.name != "vector"] + [vec],
            schema=self.schema)
        with self.lock:
            self.table.add(batch)

    def delete_documents(self, doc_keys: list[str]) -> None:
        with self.lock:
            for s in range(0, len(doc_keys), 500):
                part = doc_keys[s:s + 500]
                self.table.delete(f"doc_key IN ({', '.join(map(_quote, part))})")

    # -- indexes -----------------------------------------------------------------------------
    def _meta(self) -> dict:
        try:
            return json.loads(self._meta_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def maintain(self) -> dict:
        """After a sync: the full-text index (once), the ANN index once the table is large
        enough (re-trained when it has grown a lot), and compaction that folds new rows into
        both indexes."""
        from lancedb.index import FTS

        with self.lock:
            n = self.table.count_rows()
            meta = self._meta()
            names = {i.name for i in self.table.list_indices()}
            if "vector_idx" in names and meta.get("ann_type") != "IVF_SQ":
                names.discard("vector_idx")  # an index of an older afinar: rebuild
            did = {}
            if n and "text_idx" not in names:
                self.table.create_index("text", config=FTS(with_position=False),
                                        name="text_idx", replace=True)
                did["fts"] = "created"
            if n >= ANN_MIN_ROWS and ("vector_idx" not in names or n >= RETRAIN_GROWTH
                                      * meta.get("ann_rows", n)):
                from lancedb.index import IvfSq
                self.table.create_index("vector", config=IvfSq(
                    distance_type="cosine", num_partitions=max(16, int(n ** 0.5))),
                    name="vector_idx", replace=True)
                meta["ann_rows"], meta["ann_type"] = n, "IVF_SQ"
                did["ann"] = f"built on {n} rows"
            elif n < ANN_MIN_ROWS // 2 and "vector_idx" in names:
                self.table.drop_index("vector_idx")  # small again: exact scan
                meta.pop("ann_rows", None)
                did["ann"] = "dropped"
            if names or did:
                import datetime as dt
                self.table.optimize(cleanup_older_than=dt.timedelta(minutes=10))
            self._meta_path.write_text(json.dumps(meta))
            return did

    def has_ann(self) -> bool:
        return any(i.name == "vector_idx" for i in self.table.list_indices())

    # -- reading -------------------------------------------------------------------------------
    def search(self, vector: np.ndarray, k: int, *, text: str | None = None,
               hybrid: bool = False, doc_keys: list[str] | None = None,
               exact: bool = False) -> list[Hit]:
        from lancedb.rerankers import RRFReranker

        cols = ["chunk_id", "doc_key", "text", "parent_text", "start", "end"]
        v = np.asarray(vector, dtype=np.float32).ravel()
        if hybrid and text and text.strip():
            q = (self.table.search(query_type="hybrid", vector_column_name="vector")
                 .vector(v).text(text).distance_type("cosine"))
        else:
            q, hybrid = self.table.search(v, vector_column_name="vector").distance_type(
                "cosine"), False
        q = q.select(cols if hybrid else cols + ["_distance"]).limit(k)
        if doc_keys is not None:
            if not doc_keys:
                return []
            q = q.where(f"doc_key IN ({', '.join(map(_quote, doc_keys))})", prefilter=True)
        if exact:
            q = q.bypass_vector_index()
        else:
            q = q.nprobes(ANN_NPROBES).refine_factor(ANN_REFINE)
        if hybrid:
            q = q.rerank(RRFReranker())
        out = []
        for r in q.to_list():
            score = r["_relevance_score"] if hybrid else 1.0 - r["_distance"]
            out.append(Hit(r["chunk_id"], r["doc_key"], r["text"],
                           r["parent_text"] or r["text"], r["start"], r["end"], float(score)))
        return out

    def count(self) -> int:
        return self.table.count_rows()

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

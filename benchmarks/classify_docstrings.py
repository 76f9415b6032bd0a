"""Classification on real text: which area of Python's standard library a docstring comes from.

Docstrings of public functions, classes and methods from five areas (text, files and paths,
numbers, dates and times, data formats), deduplicated, split by module so no module is in
both train and test. all-MiniLM-L6-v2 (the registry's encoder) gets a classification head and
is fine-tuned by afinar's trainer (`type: classify`); printed: accuracy and macro-F1 on the
held-out modules, against the majority-class baseline measured on the same test set.

    .venv/bin/python benchmarks/classify_docstrings.py
"""

from __future__ import annotations

import importlib
import inspect
import json
import random
import tempfile
import time
import warnings
from pathlib import Path

AREAS = {
    "text": ["string", "textwrap", "difflib", "re", "unicodedata", "html", "shlex"],
    "files": ["os.path", "shutil", "glob", "fnmatch", "pathlib", "tempfile", "zipfile",
              "tarfile"],
    "numbers": ["math", "statistics", "fractions", "decimal", "random", "cmath", "numbers"],
    "time": ["datetime", "calendar", "time", "zoneinfo", "sched"],
    "formats": ["json", "csv", "configparser", "plistlib", "base64", "binascii", "pickle"],
}


def docstrings(module: str) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = importlib.import_module(module)
    out = []
    for name, obj in inspect.getmembers(mod):
        if name.startswith("_"):
            continue
        objs = [obj] + ([m for n, m in inspect.getmembers(obj) if not n.startswith("_")]
                        if inspect.isclass(obj) and obj.__module__ == mod.__name__ else [])
        for o in objs:
            doc = inspect.getdoc(o)
            if doc and len(doc) > 40 and getattr(o, "__module__", mod.__name__) in (
                    mod.__name__, module):
                out.append(" ".join(doc.split())[:400])
    return out


def main() -> None:
    from afinar.config import load_settings
    from afinar.data.readers import write_jsonl
    from afinar.training.config import parse_train_config
    from afinar.training.trainer import train

    rng = random.Random(0)
    train_rows, test_rows, seen = [], [], set()
    for area, mods in AREAS.items():
        held = mods[0]  # one whole module per area is held out
        for m in mods:
            for d in docstrings(m):
                if d in seen:
                    continue
                seen.add(d)
                (test_rows if m == held else train_rows).append({"text": d, "label": area})
    rng.shuffle(train_rows)
    tmp = Path(tempfile.mkdtemp(prefix="afinar-cls-"))
    write_jsonl(tmp / "train.jsonl", train_rows)
    write_jsonl(tmp / "test.jsonl", test_rows)
    cfg = parse_train_config({
        "type": "classify", "base_model": "all-minilm-l6-v2", "method": "full",
        "train_data": str(tmp / "train.jsonl"), "validation_data": str(tmp / "test.jsonl"),
        "epochs": 3, "batch_size": 16, "learning_rate": 5e-5, "warmup_steps": 10,
        "max_length": 128, "class_weights": "balanced", "checkpoint_every": 0,
        "output_dir": str(tmp / "run"), "name": f"docstring-areas-{int(time.time())}"})
    t = time.time()
    res = train(cfg, load_settings())
    c = res.classification
    print(f"train {len(train_rows)} docstrings, test {len(test_rows)} (held-out modules: "
          f"{', '.join(m[0] for m in AREAS.values())}); {time.time() - t:.0f} s")
    print(f"accuracy {c['accuracy']:.3f} (majority class {c['majority_baseline']:.3f}, "
          f"{c['accuracy'] / c['majority_baseline']:.2f}x), macro-F1 {c['macro_f1']:.3f}")
    print(json.dumps({"labels": c["labels"], "confusion_matrix": c["confusion_matrix"]}))


if __name__ == "__main__":
    main()

"""OpenAI's Files API over afinar's storage: uploads kept in the bucket (`s3://afinar-files/
<file id>/<name>`, under the local bucket root or in real S3), their metadata in
$AFINAR_HOME/files/<file id>.json. A `fine-tune` upload is checked like training data before it
is accepted (afinar data check: supervised chat, preference pairs, or reinforcement prompts);
the error names the line and field. Methods return the dicts of the `openai` package's types.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path

from afinar.config import Settings
from afinar.errors import InvalidRequest, NotFound
from afinar.storage import Storage

BUCKET = "afinar-files"
PURPOSES = ("fine-tune", "fine-tune-results", "batch", "assistants", "vision", "user_data",
            "evals")
UPLOAD_PURPOSES = tuple(p for p in PURPOSES if p != "fine-tune-results")
MAX_BYTES = 512 * 2**20
MAX_LISTED_PROBLEMS = 5


def _safe_name(name: str) -> str:
    base = Path((name or "upload").replace("\\", "/")).name
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".") or "upload"
    return base[:128]


class FileStore:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.meta_dir = settings.home / "files"
        self.storage = Storage(settings)

    # -- create ------------------------------------------------------------------------------
    def create(self, filename: str, data: bytes, purpose: str,
               kind: str | None = None, extra: dict | None = None) -> dict:
        """Store an upload (or a result file afinar writes: purpose fine-tune-results)."""
        if purpose not in PURPOSES:
            raise InvalidRequest(f"purpose '{str(purpose)[:40]}' is not one of "
                                 f"{', '.join(UPLOAD_PURPOSES)}")
        if len(data) > MAX_BYTES:
            raise InvalidRequest(f"the file is {len(data)} bytes; at most {MAX_BYTES}")
        fid = "file-" + secrets.token_hex(12)
        name = _safe_name(filename)
        stage = Path(tempfile.mkdtemp(prefix="afinar-upload-"))
        try:
            (stage / name).write_bytes(data)
            if purpose == "fine-tune":
                kind = check_fine_tune_file(stage / name, filename)
            loc = self.storage.locate(f"s3://{BUCKET}/{fid}/", "file")
            self.storage.publish(stage, loc)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        meta = {"id": fid, "object": "file", "bytes": len(data),
                "created_at": int(time.time()), "filename": name, "purpose": purpose,
                "status": "processed", "expires_at": None, "status_details": None}
        self.meta_dir.mkdir(parents=True, exist_ok=True)
        (self.meta_dir / f"{fid}.json").write_text(json.dumps(
            meta | {"_kind": kind, "_uri": f"s3://{BUCKET}/{fid}/{name}"} | (extra or {})),
            encoding="utf-8")
        return meta

    # -- read ----------------------------------------------------------------------------------
    def _meta(self, fid: str) -> dict:
        if not re.fullmatch(r"file-[0-9a-f]{24}", fid or ""):
            raise NotFound(f"No such File object: {str(fid)[:60]}")
        p = self.meta_dir / f"{fid}.json"
        if not p.exists():
            raise NotFound(f"No such File object: {fid}")
        return json.loads(p.read_text(encoding="utf-8"))

    @staticmethod
    def public(meta: dict) -> dict:
        return {k: v for k, v in meta.items() if not k.startswith("_")}

    def get(self, fid: str) -> dict:
        return self.public(self._meta(fid))

    def internal(self, fid: str) -> dict:
        """The metadata with afinar's fields: `_uri` (where the content is), `_kind` (the
        data's schema for fine-tune files), `_job` (a result file's job)."""
        return self._meta(fid)

    def all(self) -> list[dict]:
        if not self.meta_dir.exists():
            return []
        out = [json.loads(p.read_text(encoding="utf-8")) for p in self.meta_dir.glob("file-*.json")]
        return sorted(out, key=lambda m: (m["created_at"], m["id"]))

    def list(self, purpose: str | None = None, after: str | None = None, limit: int = 10000,
             order: str = "desc") -> dict:
        if order not in ("asc", "desc"):
            raise InvalidRequest("order must be 'asc' or 'desc'")
        if not 1 <= limit <= 10000:
            raise InvalidRequest("limit must be from 1 to 10000")
        rows = [m for m in self.all() if purpose is None or m["purpose"] == purpose]
        if order == "desc":
            rows.reverse()
        if after:
            ids = [m["id"] for m in rows]
            rows = rows[ids.index(after) + 1:] if after in ids else []
        page = rows[:limit]
        return {"object": "list", "data": [self.public(m) for m in page],
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None, "has_more": len(rows) > limit}

    def local_path(self, fid: str, dest_dir: Path) -> Path:
        """A local file with the content (the stored file itself under the local bucket)."""
        m = self._meta(fid)
        return self.storage.fetch(self.storage.locate(m["_uri"], "file"), dest_dir, "file")

    def content(self, fid: str) -> bytes:
        with tempfile.TemporaryDirectory() as d:
            return self.local_path(fid, Path(d)).read_bytes()

    def delete(self, fid: str) -> dict:
        m = self._meta(fid)
        self.storage.remove(self.storage.locate(m["_uri"], "file"))
        (self.meta_dir / f"{fid}.json").unlink(missing_ok=True)
        return {"id": fid, "object": "file", "deleted": True}


def check_fine_tune_file(path: Path, shown_name: str) -> str:
    """The kind of a fine-tune file ("supervised", "preference" or "prompts"), or
    InvalidRequest listing its first problems with line and field."""
    from afinar.data.check import check_file
    from afinar.data.prompts import read_prompts
    from afinar.data.schema import PREFERENCE, SUPERVISED

    rep = check_file(path, expected_schema=SUPERVISED | PREFERENCE)
    if rep.ok:
        return "preference" if rep.schema == "preference" else "supervised"
    read, prompts, issues = read_prompts(str(path))
    if read.records and not issues and all(p.answer is None for p in prompts):
        return "prompts"  # reinforcement fine-tuning: prompts with reference fields
    problems = []
    for e in rep.errors[:MAX_LISTED_PROBLEMS]:
        where = f"line {e['line']}" if e.get("line") is not None else ""
        fld = f" field '{e['field']}'" if e.get("field") else ""
        problems.append(f"{where}{fld}: {e['message']}".lstrip(": "))
    more = len(rep.errors) - MAX_LISTED_PROBLEMS
    raise InvalidRequest(
        f"file {shown_name[:100]} is not valid fine-tuning data ({len(rep.errors)} "
        f"problem(s)): " + "; ".join(problems) + (f"; and {more} more" if more > 0 else "")
        + ". Expected JSONL of chat records {\"messages\": [...]}, preference pairs "
        "{\"input\", \"preferred_output\", \"non_preferred_output\"}, or prompts for "
        "reinforcement fine-tuning")

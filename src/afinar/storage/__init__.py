"""Where job inputs come from and outputs go.

`s3://bucket/key` resolves under a local bucket root (`s3_root`, default $AFINAR_HOME/s3) unless
`s3_endpoint_url` is set, in which case it is real S3 or an S3-compatible store, read and written
with boto3. Local paths and `file://` URIs are accepted only under `allowed_roots`; nothing may
escape its root (`..`, symlinks pointing out).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from afinar.config import Settings


class StorageError(ValueError):
    """A URI that is malformed, outside the allowed roots, or not there."""


def files_under(root: Path, skipped: list[Path] | None = None) -> Iterator[Path]:
    """Every regular file in the tree under `root`, sorted, never leaving it: directory symlinks
    are not descended, and a file symlink counts only if its target is inside `root` too (one
    planted in a bucket must not read /etc/passwd). Skipped links are appended to `skipped`."""
    top = root.resolve()
    found = []
    for d, dirs, files in os.walk(top, followlinks=False):
        found += [Path(d) / x for x in files]
        found += [Path(d) / x for x in dirs if os.path.islink(os.path.join(d, x))]
    for p in sorted(found):
        if p.is_symlink():
            target = p.resolve()
            if not (target.is_file() and top in target.parents):
                if skipped is not None:
                    skipped.append(p)
                continue
        if p.is_file():
            yield p


@dataclass(frozen=True)
class Location:
    uri: str
    local: Path | None  # set for the local bucket root and allowed local paths
    bucket: str | None = None
    key: str | None = None

    @property
    def remote(self) -> bool:
        return self.local is None


class Storage:
    def __init__(self, settings: Settings):
        self.settings = settings

    # -- resolution ----------------------------------------------------------------------
    def locate(self, uri: str, field: str) -> Location:
        if uri.startswith("s3://"):
            u = urlparse(uri)
            bucket, key = u.netloc, unquote(u.path.lstrip("/"))
            if not bucket:
                raise StorageError(f"{field}: '{uri}' names no bucket; use s3://bucket/key")
            parts = [p for p in key.split("/") if p]
            if any(p in (".", "..") for p in parts) or "\\" in key:
                raise StorageError(f"{field}: '{uri}' contains '.' or '..' path segments")
            if self.settings.s3_endpoint_url:
                return Location(uri, None, bucket, key)
            root = self.settings.bucket_root.resolve()
            local = (root / bucket).joinpath(*parts)
            self._inside(local, [root], uri, field, "the local bucket root")
            return Location(uri, local, bucket, key)
        if uri.startswith("file://"):
            path = Path(unquote(urlparse(uri).path))
        elif "://" in uri:
            raise StorageError(f"{field}: unsupported URI scheme in '{uri}'; use s3://, file:// "
                               f"or a local path")
        else:
            path = Path(uri).expanduser()
        roots = [r.expanduser().resolve() for r in self.settings.allowed_roots]
        if not roots:
            raise StorageError(f"{field}: local path '{uri}' is not allowed: no allowed_roots "
                               f"are configured; set allowed_roots in afinar.toml "
                               f"(or AFINAR_ALLOWED_ROOTS) or use s3://")
        self._inside(path if path.is_absolute() else Path.cwd() / path, roots, uri, field,
                     "allowed_roots " + ", ".join(map(str, roots)))
        return Location(uri, path.resolve())

    @staticmethod
    def _inside(p: Path, roots: list[Path], uri: str, field: str, what: str) -> None:
        rp = p.resolve()
        if not any(rp == r or r in rp.parents for r in roots):
            raise StorageError(f"{field}: '{uri}' resolves to {rp}, outside {what}")

    # -- reading -------------------------------------------------------------------------
    def fetch(self, loc: Location, dest_dir: Path, field: str) -> Path:
        """A local file with the object's content (the file itself when local)."""
        if not loc.remote:
            if not loc.local.is_file():
                raise StorageError(f"{field}: '{loc.uri}' does not exist (looked for "
                                   f"{loc.local})")
            return loc.local
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / Path(loc.key).name
        try:
            self._s3().download_file(loc.bucket, loc.key, str(dest))
        except Exception as e:  # botocore raises ClientError / NoCredentialsError / ...
            raise StorageError(f"{field}: cannot read '{loc.uri}': {e}") from e
        return dest

    def fetch_tree(self, loc: Location, dest_dir: Path, field: str) -> list[Path]:
        """Local files with the content of every object under a prefix (or of one object)."""
        if not loc.remote:
            if loc.local.is_file():
                return [loc.local]
            if not loc.local.is_dir():
                raise StorageError(f"{field}: '{loc.uri}' does not exist (looked for "
                                   f"{loc.local})")
            return list(files_under(loc.local))
        out = []
        try:
            pages = self._s3().get_paginator("list_objects_v2").paginate(
                Bucket=loc.bucket, Prefix=loc.key or "")
            for page in pages:
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(loc.key or ""):].lstrip("/") or Path(obj["Key"]).name
                    if any(p in (".", "..") for p in rel.split("/")):
                        continue
                    dest = dest_dir / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    self._s3().download_file(loc.bucket, obj["Key"], str(dest))
                    out.append(dest)
        except Exception as e:  # botocore's errors
            raise StorageError(f"{field}: cannot read '{loc.uri}': {e}") from e
        if not out:
            raise StorageError(f"{field}: nothing under '{loc.uri}'")
        return out

    # -- writing -------------------------------------------------------------------------
    def publish(self, src_dir: Path, loc: Location) -> list[str]:
        """Copy a directory tree to an output prefix; returns the URIs written."""
        written = []
        for f in files_under(src_dir):
            rel = f.relative_to(src_dir).as_posix()
            if loc.remote:
                key = f"{loc.key.rstrip('/')}/{rel}" if loc.key else rel
                self._s3().upload_file(str(f), loc.bucket, key)
            else:
                dest = loc.local / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, dest)
            written.append(f"{loc.uri.rstrip('/')}/{rel}")
        return written

    def remove(self, loc: Location) -> None:
        """Delete one object (a local file, with its folder when that is left empty)."""
        if loc.remote:
            self._s3().delete_object(Bucket=loc.bucket, Key=loc.key)
            return
        loc.local.unlink(missing_ok=True)
        if loc.local.parent.is_dir() and not any(loc.local.parent.iterdir()):
            loc.local.parent.rmdir()

    def _s3(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.settings.s3_endpoint_url,
                            region_name=self.settings.region)

"""Documents -> text, offline. Plain text and Markdown are read as they are; HTML, PDF, Word,
CSV and Excel go through markitdown (which keeps headings and tables as Markdown), PDF falling
back to pypdf's text extraction. Nothing here downloads a model.

A document that cannot be read raises DocumentError with the reason; ingestion reports it by
name and carries on with the others.
"""

from __future__ import annotations

import logging
from pathlib import Path

from afinar.errors import AfinarError

MAX_BYTES = 50 * 1024 * 1024  # Bedrock's per-file limit
TEXT_SUFFIXES = {".txt", ".md", ".markdown"}
MARKITDOWN_SUFFIXES = {".html", ".htm", ".pdf", ".docx", ".csv", ".xlsx", ".xls"}
SUPPORTED = sorted(TEXT_SUFFIXES | MARKITDOWN_SUFFIXES)
METADATA_SUFFIX = ".metadata.json"


class DocumentError(AfinarError):
    """A document that cannot be parsed (unsupported, corrupt, empty, too large)."""


_markitdown = None


def _md():
    global _markitdown
    if _markitdown is None:
        from markitdown import MarkItDown
        _markitdown = MarkItDown(enable_plugins=False)
    return _markitdown


def supported(name: str) -> bool:
    return Path(name).suffix.lower() in TEXT_SUFFIXES | MARKITDOWN_SUFFIXES


def _pdf_pypdf(path: Path) -> str:
    import pypdf

    reader = pypdf.PdfReader(str(path), strict=False)
    return "\n\n".join((p.extract_text() or "") for p in reader.pages)


def _check_pdf(path: Path) -> None:
    """markitdown turns an unreadable PDF into its raw bytes as 'text'; pypdf tells a corrupt
    file apart first."""
    import pypdf

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings duplicate our reason
    try:
        n = len(pypdf.PdfReader(str(path), strict=False).pages)
    except Exception as e:  # pypdf raises PdfReadError, PdfStreamError, ValueError, ...
        raise DocumentError(f"corrupt or unreadable PDF: {type(e).__name__}: {e}") from None
    if n == 0:
        raise DocumentError("the PDF has no pages")


def parse(path: Path, name: str | None = None) -> str:
    """The document's text. `name` (e.g. an S3 key) decides the format when `path` is a
    temporary copy."""
    name = name or path.name
    suffix = Path(name).suffix.lower()
    if not supported(name):
        raise DocumentError(f"unsupported file type '{suffix or name}'; supported: "
                            f"{', '.join(SUPPORTED)}")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise DocumentError(f"file is {size / 2**20:.1f} MB; the limit is 50 MB")
    if suffix in TEXT_SUFFIXES:
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise DocumentError(f"not UTF-8 text (byte {e.start}): re-save it as UTF-8") from None
    else:
        if suffix == ".pdf":
            _check_pdf(path)
        try:
            text = _md().convert(str(path)).text_content or ""
        except Exception as e:  # markitdown wraps each converter's own errors
            if suffix != ".pdf":
                raise DocumentError(f"cannot parse {suffix} file: {type(e).__name__}: "
                                    f"{str(e)[:300]}") from None
            text = ""
        if suffix == ".pdf" and not text.strip():
            try:
                text = _pdf_pypdf(path)
            except Exception as e:
                raise DocumentError(f"cannot extract text from the PDF: {e}") from None
    if not text.strip():
        raise DocumentError("the document has no text (a scanned PDF needs OCR first)"
                            if suffix == ".pdf" else "the document is empty")
    return text

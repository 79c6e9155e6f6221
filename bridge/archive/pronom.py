"""PRONOM format ids (PUIDs) for the files a package holds (pure; a small table, not DROID).

`pronom_for(media_type, filename, head)` picks a PUID from the media type, the
file name's extension and, where the version matters and is cheap to read, the
first bytes of the file (`head`, e.g. the first 64 bytes): PDF version, JFIF
version, GIF 87a/89a, WebP lossy/lossless/extended. Unknown formats give None;
the MDTO writer then records the media type without a PUID.

Every PUID and name below was checked against the PRONOM registry data
(The National Archives, UK). Where the version cannot be told without more
parsing, the baseline entry whose signature matches all files of the format is
used (PNG fmt/11, raw JPEG fmt/41 for non-JFIF JPEG such as Exif photos).
"""

from __future__ import annotations

import re

#: PUID -> PRONOM format name (with version where PRONOM has one).
NAMES: dict[str, str] = {
    "fmt/14": "Acrobat PDF 1.0 - Portable Document Format",
    "fmt/15": "Acrobat PDF 1.1 - Portable Document Format",
    "fmt/16": "Acrobat PDF 1.2 - Portable Document Format",
    "fmt/17": "Acrobat PDF 1.3 - Portable Document Format",
    "fmt/18": "Acrobat PDF 1.4 - Portable Document Format",
    "fmt/19": "Acrobat PDF 1.5 - Portable Document Format",
    "fmt/20": "Acrobat PDF 1.6 - Portable Document Format",
    "fmt/276": "Acrobat PDF 1.7 - Portable Document Format",
    "fmt/1129": "PDF 2.0 - Portable Document Format",
    "fmt/11": "Portable Network Graphics 1.0",
    "fmt/41": "Raw JPEG Stream",
    "fmt/42": "JPEG File Interchange Format 1.00",
    "fmt/43": "JPEG File Interchange Format 1.01",
    "fmt/44": "JPEG File Interchange Format 1.02",
    "fmt/3": "Graphics Interchange Format 87a",
    "fmt/4": "Graphics Interchange Format 89a",
    "fmt/566": "WebP Lossy",
    "fmt/567": "WebP Lossless",
    "fmt/568": "WebP Extended",
    "fmt/199": "MPEG-4 Media File",
    "fmt/471": "Hypertext Markup Language 5",
    "fmt/101": "Extensible Markup Language 1.0",
    "fmt/817": "JSON Data Interchange Format",
    "x-fmt/111": "Plain Text File",
    "x-fmt/263": "ZIP Format",
    "fmt/412": "Microsoft Word for Windows 2007 onwards",
}

_PDF_VERSIONS = {
    b"1.0": "fmt/14",
    b"1.1": "fmt/15",
    b"1.2": "fmt/16",
    b"1.3": "fmt/17",
    b"1.4": "fmt/18",
    b"1.5": "fmt/19",
    b"1.6": "fmt/20",
    b"1.7": "fmt/276",
    b"2.0": "fmt/1129",
}
_JFIF_VERSIONS = {b"\x01\x00": "fmt/42", b"\x01\x01": "fmt/43", b"\x01\x02": "fmt/44"}

#: Formats that need no version sniffing: media type / extension -> PUID.
_BY_TYPE = {
    "image/png": "fmt/11",
    "video/mp4": "fmt/199",
    "audio/mp4": "fmt/199",
    "application/mp4": "fmt/199",
    "text/html": "fmt/471",
    "application/xml": "fmt/101",
    "text/xml": "fmt/101",
    "application/json": "fmt/817",
    # JSON Lines (events.jsonl): UTF-8 plain text, one JSON value per line; PRONOM has no entry of its own
    "application/x-ndjson": "x-fmt/111",
    "application/jsonl": "x-fmt/111",
    "text/plain": "x-fmt/111",
    "application/zip": "x-fmt/263",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "fmt/412",
}
_BY_EXTENSION = {
    "png": "fmt/11",
    "mp4": "fmt/199",
    "m4v": "fmt/199",
    "m4a": "fmt/199",
    "html": "fmt/471",
    "htm": "fmt/471",
    "xml": "fmt/101",
    "json": "fmt/817",
    # JSON Lines has no PUID of its own: it is UTF-8 plain text, one JSON value per line.
    "jsonl": "x-fmt/111",
    "txt": "x-fmt/111",
    "zip": "x-fmt/263",
    "docx": "fmt/412",
}
_FAMILY_BY_EXTENSION = {
    "pdf": "application/pdf",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
}


def pronom_for(media_type: str | None, filename: str | None, head: bytes = b"") -> str | None:
    """The PUID for a file, or None if the table does not know the format.

    `media_type` parameters (`; charset=...`) are ignored. With `head`, the
    version is read for PDF, JPEG, GIF and WebP; without it the most common
    current version is assumed (PDF 1.7, JFIF 1.01, GIF 89a, WebP lossy).
    A `head` that contradicts the claimed family gives None.
    """
    mtype = (media_type or "").split(";", 1)[0].strip().lower()
    ext = _extension(filename)
    family = mtype if mtype in ("application/pdf", "image/jpeg", "image/gif", "image/webp") else None
    if family is None and not mtype:
        family = _FAMILY_BY_EXTENSION.get(ext)
    if family is not None:
        return _sniff(family, head)
    return _BY_TYPE.get(mtype) or (_BY_EXTENSION.get(ext) if not mtype or mtype == "application/octet-stream" else None)


def pronom_name(puid: str) -> str:
    """PRONOM's name for a PUID from the table (the PUID itself if unknown)."""
    return NAMES.get(puid, puid)


def _extension(filename: str | None) -> str:
    if not filename or "." not in filename:
        return ""
    return filename.rsplit(".", 1)[1].strip().lower()


def _sniff(family: str, head: bytes) -> str | None:
    if family == "application/pdf":
        if not head:
            return "fmt/276"
        m = re.match(rb"%PDF-(\d\.\d)", head)
        return _PDF_VERSIONS.get(m.group(1)) if m else None
    if family == "image/jpeg":
        if not head:
            return "fmt/43"
        if not head.startswith(b"\xff\xd8\xff"):
            return None
        if head[3:4] == b"\xe0" and head[6:11] == b"JFIF\x00":
            return _JFIF_VERSIONS.get(head[11:13], "fmt/41")
        return "fmt/41"
    if family == "image/gif":
        if not head:
            return "fmt/4"
        return {b"GIF87a": "fmt/3", b"GIF89a": "fmt/4"}.get(head[:6])
    if not head:  # image/webp
        return "fmt/566"
    if head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    return {b"VP8 ": "fmt/566", b"VP8L": "fmt/567", b"VP8X": "fmt/568"}.get(head[12:16])

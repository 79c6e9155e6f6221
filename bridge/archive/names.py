"""Safe file and folder names for the MDTO SIP layout, and XML-safe text (pure).

The SIP specification forbids `< > : " / \\ | ? * # &` and spaces in the names
of information objects, files and their sidecars, and limits them to 255
characters. Chat text (file names, room names) is hostile, so `safe_name` also
removes control and format characters (bidi overrides, zero-width), every kind
of whitespace, leading dots, and normalises to NFC.

Contract of `safe_name(text, max_len)`:
* the result is non-empty, at most `max_len` bytes of UTF-8, and holds none of
  the characters above;
* deterministic; a text that is already safe (and does not end like a
  hashed name) is returned unchanged;
* otherwise the result ends with `-` + 12 hex digits of SHA-256 of the original
  text (before the extension, which is kept when short and alphanumeric), so
  texts that differ only in forbidden characters do not collide, and no
  unchanged name can look like a changed one.
Uniqueness among different files with the same name is the package writer's
job (e.g. prefix a sequence number); sidecars need room for their suffix:
`safe_name(name, 255 - len(".bestand.MDTO.xml"))`.

`xml_text(text)` is text XML 1.0 can carry: characters it cannot (controls but
TAB/LF/CR, surrogates, U+FFFE/U+FFFF) become U+FFFD; empty becomes "(leeg)".
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

FORBIDDEN = frozenset('<>:"/\\|?*#&')
HASH_HEX = 12
_HASHED = re.compile(rf"-[0-9a-f]{{{HASH_HEX}}}(\.[A-Za-z0-9]{{1,16}})?\Z")
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,16}\Z")


def _allowed(ch: str) -> bool:
    if ch in FORBIDDEN or ch.isspace():
        return False
    return unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp")


def safe_name(text: str, max_len: int = 255) -> str:
    """A name safe for the SIP (see the module docstring). `max_len` counts UTF-8 bytes, at least 32."""
    if max_len < 32:
        raise ValueError("max_len must leave room for the hash suffix (>= 32 bytes)")
    nfc = unicodedata.normalize("NFC", text)
    cleaned = "".join(ch if _allowed(ch) else "_" for ch in nfc).lstrip(".")
    if cleaned == text and cleaned and len(text.encode("utf-8")) <= max_len and not _HASHED.search(text):
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_HEX]
    m = _EXTENSION.search(cleaned)
    ext = m.group(0) if m else ""
    stem = cleaned[: len(cleaned) - len(ext)] if ext else cleaned
    budget = max_len - len(ext) - 1 - HASH_HEX
    stem = _truncate(stem or "naamloos", budget)
    return f"{stem}-{digest}{ext}"


def _truncate(text: str, max_bytes: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", "ignore")


def slug(text: str, max_bytes: int = 60) -> str:
    """`text` as a shell-safe ASCII name part: accents dropped, every run of other characters one `-`, no
    leading or trailing `-`, at most `max_bytes`; "" when nothing is left (a name of emoji only)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^A-Za-z0-9]+", "-", ascii_text).strip("-")[:max_bytes].strip("-")


_XML_BAD = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: str) -> str:
    """Text XML 1.0 can carry (see the module docstring)."""
    return _XML_BAD.sub("\ufffd", text) or "(leeg)"

"""Media file names in a package: the media type's extension when the name has none (issue 11)."""

from __future__ import annotations

import pytest

from bridge.archive.derive import EXTENSIONS, media_rel
from bridge.events import Attachment

BLOB = "ab" * 20


@pytest.mark.parametrize(
    ("filename", "media_type", "expected"),
    [
        (None, "image/jpeg", f"media/7-{BLOB[:16]}.jpg"),  # a Signal attachment: no file name
        ("foto", "image/png", "media/7-foto.png"),
        ("notulen.pdf", "application/pdf", "media/7-notulen.pdf"),  # a name with an extension stays as it is
        ("spraak", "audio/ogg; codecs=opus", "media/7-spraak.ogg"),  # parameters of the media type ignored
        ("bestand", "application/x-unknown", "media/7-bestand"),  # unknown type: no guess
        ("bestand", None, "media/7-bestand"),
    ],
)
def test_media_gets_its_type_extension_only_when_it_has_none(
    filename: str | None, media_type: str | None, expected: str
) -> None:
    """A nameless or extensionless file gets its media type's extension from a fixed table (the same on every
    machine, so verify-package re-derives the same names); a name that has one is kept."""
    att = Attachment("stored", media_type, filename, 10, "00" * 32, BLOB)
    assert media_rel(7, att) == expected


def test_extension_table_is_lowercase_and_dotted() -> None:
    """Every entry maps a lowercase media type to a lowercase extension starting with a dot."""
    assert all(k == k.lower() and v.startswith(".") and v == v.lower() for k, v in EXTENSIONS.items())

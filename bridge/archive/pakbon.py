"""The pakbon (packing slip) of a package: who delivers what (streaming XML).

The MDTO SIP specification asks for a pakbon but leaves its format to the
parties (XML preferred) and lists what it must say: a unique id, a name, the
target location, a hash of the SIP, its creation time, the organisation
(archiefvormer), a contact, the number of information objects and files, the
number and total size of files that are not `.mdto.xml`, and particulars.
There is no XSD and no published namespace, so this is our own small vocabulary, in no namespace (rather than
a made-up one), described in the package's `documentatie/formaten.txt`:

    <pakbon versie="1">
      <identificatie/> <naam/> <aanmaaktijd/> <mdtoVersie>1.0.1</mdtoVersie>
      <archiefvormer><naam/><kenmerk/></archiefvormer>
      [<doelsysteem/>] [<contactpersoon/>] [<bijzonderheden/>]
      <informatieobjecten> <informatieobject niveau="Serie|Dossier" pad="…" kenmerk="…">naam</…>* </…>
      <bestanden> <bestand pad="…" omvang="…" sha256="…"/>* </bestanden>
      <totalen informatieobjecten="…" bestanden="…" bestandenZonderMdto="…" omvangZonderMdto="…"/>
    </pakbon>

The totals come last so the slip can be written while the lists stream by.
"Hashcode SIP": a slip inside the package cannot hold the package's own hash;
the BagIt manifests (SHA-256 of every file) and the proof folder serve that
purpose, and the `sha256` of each listed file is given here. All text passes
through `xml_text` and is written by lxml (escaped). Deterministic: the caller
passes the creation time (e.g. the month's closing checkpoint), never "now".
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO

from lxml import etree

from bridge.archive.names import xml_text

PAKBON_NS = ""  # no namespace: none is published for a pakbon (documentatie/formaten.txt describes it)
MDTO_VERSION = "1.0.1"


@dataclass(frozen=True)
class PakbonInfo:
    identificatie: str
    naam: str
    aanmaaktijd: str  # xsd:dateTime text, e.g. mdto.xml_datetime(checkpoint ms)
    archiefvormer: str
    archiefvormer_kenmerk: str
    doelsysteem: str | None = None
    contactpersoon: str | None = None
    bijzonderheden: str | None = None


@dataclass(frozen=True)
class PakbonDossier:
    """An information object in the package (the Serie and each Dossier)."""

    pad: str
    kenmerk: str
    naam: str
    niveau: str = "Dossier"


@dataclass(frozen=True)
class PakbonFile:
    """Any file in the payload (data, transcripts, media, sidecars): path, size, SHA-256 hex."""

    pad: str
    omvang: int
    sha256: str


def _q(tag: str) -> str:
    return f"{{{PAKBON_NS}}}{tag}" if PAKBON_NS else tag


def _leaf(xf: Any, tag: str, text: str | None = None, attrs: dict[str, str] | None = None) -> None:
    with xf.element(_q(tag), {k: xml_text(v) for k, v in (attrs or {}).items()}):
        if text is not None:
            xf.write(xml_text(text))
    xf.write("\n")


def write_pakbon(
    out: BinaryIO, info: PakbonInfo, objects: Iterable[PakbonDossier], files: Iterable[PakbonFile]
) -> None:
    """Write the pakbon to `out`, streaming `objects` and `files` (memory stays flat)."""
    n_objects = n_files = n_content = content_bytes = 0
    with etree.xmlfile(out, encoding="UTF-8") as xf:
        xf.write_declaration()
        with xf.element(_q("pakbon"), {"versie": "1"}):
            xf.write("\n")
            _leaf(xf, "identificatie", info.identificatie)
            _leaf(xf, "naam", info.naam)
            _leaf(xf, "aanmaaktijd", info.aanmaaktijd)
            _leaf(xf, "mdtoVersie", MDTO_VERSION)
            with xf.element(_q("archiefvormer")):
                _leaf(xf, "naam", info.archiefvormer)
                _leaf(xf, "kenmerk", info.archiefvormer_kenmerk)
            xf.write("\n")
            for tag, opt in (
                ("doelsysteem", info.doelsysteem),
                ("contactpersoon", info.contactpersoon),
                ("bijzonderheden", info.bijzonderheden),
            ):
                if opt is not None:
                    _leaf(xf, tag, opt)
            with xf.element(_q("informatieobjecten")):
                xf.write("\n")
                for obj in objects:
                    _leaf(
                        xf, "informatieobject", obj.naam, {"niveau": obj.niveau, "pad": obj.pad, "kenmerk": obj.kenmerk}
                    )
                    n_objects += 1
            xf.write("\n")
            with xf.element(_q("bestanden")):
                xf.write("\n")
                for f in files:
                    _leaf(xf, "bestand", None, {"pad": f.pad, "omvang": str(f.omvang), "sha256": f.sha256.lower()})
                    n_files += 1
                    if not f.pad.lower().endswith(".mdto.xml"):
                        n_content += 1
                        content_bytes += f.omvang
            xf.write("\n")
            totals = {
                "informatieobjecten": str(n_objects),
                "bestanden": str(n_files),
                "bestandenZonderMdto": str(n_content),
                "omvangZonderMdto": str(content_bytes),
            }
            _leaf(xf, "totalen", None, totals)
    out.write(b"\n")


def pakbon_xml(info: PakbonInfo, objects: Iterable[PakbonDossier], files: Iterable[PakbonFile]) -> bytes:
    """The pakbon as bytes (see `write_pakbon`)."""
    buf = io.BytesIO()
    write_pakbon(buf, info, objects, files)
    return buf.getvalue()

"""MDTO XML: every generator validates against the Nationaal Archief XSD; names, PRONOM ids, pakbon."""

from __future__ import annotations

import hashlib
from datetime import date
from importlib import resources
from pathlib import Path

import pytest
import xmlschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from bridge.archive.mdto import (
    NS,
    BestandInfo,
    DossierEvent,
    DossierInfo,
    MdtoError,
    Organisation,
    Participant,
    Ref,
    SerieInfo,
    bestand_xml,
    dossier_xml,
    month_bounds,
    serie_xml,
    validate,
)
from bridge.archive.names import FORBIDDEN, safe_name, xml_text
from bridge.archive.pakbon import PAKBON_NS, PakbonDossier, PakbonFile, PakbonInfo, pakbon_xml
from bridge.archive.pronom import pronom_for, pronom_name

EXAMPLES = Path(__file__).resolve().parent / "fixtures" / "mdto"  # Nationaal Archief, CC BY-SA 4.0
XSD_SHA256 = "048d745a17f479995f14c938d342b2f13382072d0fdf1f1b28113126df715648"
SHIPPED = resources.files("bridge.archive").joinpath("schema/MDTO-XML1.0.1.xsd")
T0 = 1_700_000_000_000
ORG = Organisation("Ministerie van Voorbeelden", "https://organisaties.overheid.nl/1/Voorbeelden", "B")
SERIE = Ref("Chatarchief", "log-0123", "Chatarchief")
NSMAP = {"m": NS}


@pytest.fixture(scope="module")
def independent() -> xmlschema.XMLSchema:
    """A second, independent validator (pure-Python xmlschema) over the same shipped XSD."""
    with resources.as_file(SHIPPED) as path:
        return xmlschema.XMLSchema(str(path))


def dossier(**kw: object) -> DossierInfo:
    base: dict[str, object] = {
        "kenmerk": "matrix/!room:example.org/2024-02",
        "bron": "Chatarchief log-0123",
        "naam": "Overleg minister en staf, februari 2024",
        "month": "2024-02",
        "organisation": ORG,
        "serie": SERIE,
        "participants": (Participant("@minister:example.org", "matrix", "De Minister"), Participant("+316", "signal")),
        "events": (
            DossierEvent("Creatie", T0, Participant("@minister:example.org", "matrix", "De Minister")),
            DossierEvent("Wijziging", T0 + 1, Participant("@minister:example.org", "matrix"), "bericht $a gewijzigd"),
            DossierEvent("Verwijdering in chat", T0 + 2, None, "origineel bewaard"),
            DossierEvent("Bevriezing", T0 + 3, Ref("Chatarchief"), "maand verzegeld"),
        ),
        "files": (Ref("transcript.html", "t1", "Chatarchief"),),
    }
    base.update(kw)
    return DossierInfo(**base)  # type: ignore[arg-type]


def bestand(**kw: object) -> BestandInfo:
    base: dict[str, object] = {
        "kenmerk": "blob-1",
        "bron": "Chatarchief",
        "naam": "foto.png",
        "size": 1234,
        "sha256": "AB" * 32,
        "checksum_at_ms": T0,
        "represents": Ref("Overleg", "matrix/!room/2024-02", "Chatarchief"),
        "media_type": "image/png",
    }
    base.update(kw)
    return BestandInfo(**base)  # type: ignore[arg-type]


# -- the schema itself -----------------------------------------------------------------------


def test_shipped_xsd_is_the_nationaal_archief_copy_with_notice() -> None:
    """Package data holds the unmodified XSD (hash as in SOURCE.md) and a NOTICE attributing it."""
    assert hashlib.sha256(SHIPPED.read_bytes()).hexdigest() == XSD_SHA256
    notice = resources.files("bridge.archive").joinpath("schema/NOTICE").read_text("utf-8")
    assert "Nationaal Archief" in notice and "CC BY-SA 4.0" in notice


@pytest.mark.parametrize(
    "name", ["Archiefstuk-Informatieobject", "Bestand", "Dossier-Informatieobject", "Serie-Informatieobject"]
)
def test_official_examples_validate(name: str) -> None:
    """The Nationaal Archief's own examples pass `validate` (the validator and the XSD agree with them)."""
    validate((EXAMPLES / f"{name}.xml").read_bytes())


def test_invalid_documents_are_refused() -> None:
    """Missing required elements, wrong order, foreign roots and broken XML raise MdtoError."""
    good = serie_xml(SerieInfo("k", "b", "n", ORG))
    root = etree.fromstring(good)
    root.find("m:informatieobject/m:waardering", NSMAP).getparent().remove(
        root.find("m:informatieobject/m:waardering", NSMAP)
    )
    with pytest.raises(MdtoError, match=r"waardering|archiefvormer|Expected"):
        validate(etree.tostring(root))
    with pytest.raises(MdtoError):
        validate(b"<MDTO/>")
    with pytest.raises(MdtoError, match="well-formed"):
        validate(b"<MDTO")
    with pytest.raises(MdtoError):
        validate(b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><MDTO xmlns="' + NS.encode() + b'">&e;</MDTO>')


# -- generators ----------------------------------------------------------------------------------


def test_serie_validates_and_lists_dossiers(independent: xmlschema.XMLSchema) -> None:
    """The Serie names its dossiers (bevatOnderdeel), archiefvormer from the ROO, aggregatieniveau Serie."""
    xml = serie_xml(SerieInfo("log-0123", "Chatarchief", "Chatarchief", ORG, "Alle chats", (Ref("d1", "k1", "b"),)))
    validate(xml)
    independent.validate(xml.decode())
    root = etree.fromstring(xml)
    assert root.findtext("m:informatieobject/m:aggregatieniveau/m:begripLabel", namespaces=NSMAP) == "Serie"
    assert root.findtext("m:informatieobject/m:bevatOnderdeel/m:verwijzingNaam", namespaces=NSMAP) == "d1"
    bron = "m:informatieobject/m:archiefvormer/m:verwijzingIdentificatie/m:identificatieBron"
    assert root.findtext(bron, namespaces=NSMAP) == "Register van Overheidsorganisaties"


def test_dossier_validates_with_month_participants_events(independent: xmlschema.XMLSchema) -> None:
    """A conversation-month: dekkingInTijd = the messages' own first and last day, betrokkenen, events,
    isOnderdeelVan the serie, one beperkingGebruik (published openness pair) that mentions what is withheld."""
    xml = dossier_xml(dossier(withheld_count=3, coverage=(date(2024, 2, 3), date(2024, 2, 17))))
    validate(xml)
    independent.validate(xml.decode())
    io = etree.fromstring(xml).find("m:informatieobject", NSMAP)
    assert io.findtext("m:aggregatieniveau/m:begripLabel", namespaces=NSMAP) == "Dossier"
    assert io.findtext("m:dekkingInTijd/m:dekkingInTijdBegindatum", namespaces=NSMAP) == "2024-02-03"
    assert io.findtext("m:dekkingInTijd/m:dekkingInTijdEinddatum", namespaces=NSMAP) == "2024-02-17"
    assert [e.text for e in io.findall("m:event/m:eventType/m:begripLabel", NSMAP)] == [
        "Creatie",
        "Wijziging",
        "Verwijdering in chat",
        "Bevriezing",
    ]
    assert io.findtext("m:event/m:eventTijd", namespaces=NSMAP) == "2023-11-14T23:13:20+01:00"
    names = [e.text for e in io.findall("m:betrokkene/m:betrokkeneActor/m:verwijzingNaam", NSMAP)]
    assert names == ["De Minister", "+316"]
    assert io.findtext("m:isOnderdeelVan/m:verwijzingNaam", namespaces=NSMAP) == "Chatarchief"
    assert io.findtext("m:waardering/m:begripCode", namespaces=NSMAP) == "B"
    assert io.find("m:bewaartermijn", NSMAP) is None
    labels = [e.text for e in io.findall("m:beperkingGebruik/m:beperkingGebruikType/m:begripLabel", NSMAP)]
    assert labels == ["openbaarheid niet beoordeeld (Archiefwet 1995)"]
    codes = [e.text for e in io.findall("m:beperkingGebruik/m:beperkingGebruikType/m:begripCode", NSMAP)]
    assert codes == ["Openbaarheid/AW1995/NietBeoordeeld/1.0"]
    assert "3 gebeurtenis(sen)" in io.findtext("m:beperkingGebruik/m:beperkingGebruikNadereBeschrijving", "", NSMAP)


def test_dossier_without_datable_messages_has_no_dekking_in_tijd() -> None:
    """No coverage given (all withheld, or only notices): dekkingInTijd is left out rather than invented."""
    io = etree.fromstring(dossier_xml(dossier())).find("m:informatieobject", NSMAP)
    assert io.find("m:dekkingInTijd", NSMAP) is None


@pytest.mark.parametrize(
    ("appraisal", "years", "label"), [("V", 10, "Tijdelijk te bewaren"), ("N", None, "Nader te bepalen")]
)
def test_appraisal_v_has_a_retention_term(appraisal: str, years: int | None, label: str) -> None:
    """V carries a bewaartermijn from the day after the month (P10Y, ending ten years later); N has none."""
    org = Organisation("Gemeente", "gm0001", appraisal, years)  # type: ignore[arg-type]
    xml = dossier_xml(dossier(organisation=org))
    validate(xml)
    io = etree.fromstring(xml).find("m:informatieobject", NSMAP)
    assert io.findtext("m:waardering/m:begripLabel", namespaces=NSMAP) == label
    if appraisal == "V":
        assert io.findtext("m:bewaartermijn/m:termijnStartdatumLooptijd", namespaces=NSMAP) == "2024-03-01"
        assert io.findtext("m:bewaartermijn/m:termijnLooptijd", namespaces=NSMAP) == "P10Y"
        assert io.findtext("m:bewaartermijn/m:termijnEinddatum", namespaces=NSMAP) == "2034-03-01"
        bron = "m:archiefvormer/m:verwijzingIdentificatie/m:identificatieBron"
        assert io.findtext(bron, namespaces=NSMAP) == "Chatarchief-configuratie"
    else:
        assert io.find("m:bewaartermijn", NSMAP) is None


def test_hostile_event_time_leaves_out_event_time() -> None:
    """An absurd origin time (hostile server) does not break the dossier: eventTijd is optional and omitted."""
    xml = dossier_xml(dossier(events=(DossierEvent("Creatie", 2**62), DossierEvent("Creatie", -(2**62)))))
    validate(xml)
    assert b"eventTijd" not in xml
    old = dossier_xml(dossier(events=(DossierEvent("Creatie", -1_025_745_572_001),)))  # Amsterdam +00:19:32
    validate(old)
    assert b"<eventTijd>1937-06-30T22:40:27Z</eventTijd>" in old


def test_bestand_validates_with_pronom_and_checksum(independent: xmlschema.XMLSchema) -> None:
    """A file: omvang, PRONOM name + PUID, SHA-256 (lowercase) with date, isRepresentatieVan."""
    xml = bestand_xml(bestand())
    validate(xml)
    independent.validate(xml.decode())
    b = etree.fromstring(xml).find("m:bestand", NSMAP)
    assert b.findtext("m:bestandsformaat/m:begripCode", namespaces=NSMAP) == "fmt/11"
    assert b.findtext("m:checksum/m:checksumAlgoritme/m:begripLabel", namespaces=NSMAP) == "SHA-256"
    assert b.findtext("m:checksum/m:checksumWaarde", namespaces=NSMAP) == "ab" * 32
    assert b.findtext("m:isRepresentatieVan/m:verwijzingNaam", namespaces=NSMAP) == "Overleg"


def test_unknown_format_still_validates() -> None:
    """A format the table does not know is recorded by media type, without a PUID."""
    xml = bestand_xml(bestand(naam="x.bin", media_type="application/x-weird"))
    validate(xml)
    fmt = etree.fromstring(xml).find("m:bestand/m:bestandsformaat", NSMAP)
    assert fmt.find("m:begripCode", NSMAP) is None
    assert "application/x-weird" in fmt.findtext("m:begripLabel", namespaces=NSMAP)


HOSTILE = "</naam><script>alert(1)</script>&amp;\x00\x1b\ud800\ufffe\u202e\"'<![CDATA[x]]>"


def test_hostile_text_is_escaped_not_markup() -> None:
    """Chat text in every field is text: no injected elements, XML-forbidden characters become U+FFFD."""
    p = Participant(HOSTILE, HOSTILE, HOSTILE)
    info = dossier(
        naam=HOSTILE,
        kenmerk=HOSTILE,
        bron=HOSTILE,
        omschrijving=HOSTILE,
        participants=(p,),
        events=(DossierEvent("Wijziging", T0, p, HOSTILE),),
        serie=Ref(HOSTILE, HOSTILE, HOSTILE),
    )
    xml = dossier_xml(info)
    validate(xml)
    root = etree.fromstring(xml)
    assert not root.xpath("//*[local-name()='script']")
    assert root.findtext("m:informatieobject/m:naam", namespaces=NSMAP) == xml_text(HOSTILE)
    validate(bestand_xml(bestand(naam=HOSTILE, kenmerk=HOSTILE, media_type=HOSTILE, represents=Ref(HOSTILE))))


_text = st.text(max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    naam=_text,
    kenmerk=_text,
    bron=_text,
    omschrijving=st.none() | _text,
    people=st.lists(st.tuples(_text, st.sampled_from(["matrix", "signal", "x"]), st.none() | _text), max_size=3),
    result=st.none() | _text,
    at_ms=st.integers(-(2**63), 2**63),
    withheld=st.integers(0, 5),
    appraisal=st.sampled_from(["B", "V", "N"]),
)
def test_any_dossier_text_validates(
    naam: str,
    kenmerk: str,
    bron: str,
    omschrijving: str | None,
    people: list[tuple[str, str, str | None]],
    result: str | None,
    at_ms: int,
    withheld: int,
    appraisal: str,
) -> None:
    """For arbitrary text in every free field the dossier XML is well-formed and valid, and naam round-trips."""
    parts = tuple(Participant(*p) for p in people)
    org = Organisation(naam, kenmerk, appraisal, 7 if appraisal == "V" else None)  # type: ignore[arg-type]
    events = tuple(DossierEvent("Creatie", at_ms, p, result) for p in parts)
    xml = dossier_xml(
        dossier(
            naam=naam,
            kenmerk=kenmerk,
            bron=bron,
            omschrijving=omschrijving,
            participants=parts,
            events=events,
            organisation=org,
            withheld_count=withheld,
        )
    )
    validate(xml)
    assert etree.fromstring(xml).findtext("m:informatieobject/m:naam", namespaces=NSMAP) == xml_text(naam)


def test_month_bounds() -> None:
    """Calendar months, leap years included; anything but YYYY-MM is refused."""
    assert month_bounds("2024-02") == (date(2024, 2, 1), date(2024, 2, 29))
    assert month_bounds("2023-12") == (date(2023, 12, 1), date(2023, 12, 31))
    for bad in ("2024-13", "2024-00", "24-01", "2024-1", "2024-01-01", ""):
        with pytest.raises(ValueError):
            month_bounds(bad)


# -- PRONOM ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("media_type", "filename", "head", "puid"),
    [
        ("application/pdf", "a.pdf", b"%PDF-1.4\n", "fmt/18"),
        ("application/pdf", "a.pdf", b"%PDF-1.7\n", "fmt/276"),
        ("application/pdf", "a.pdf", b"%PDF-2.0\n", "fmt/1129"),
        ("application/pdf", "a.pdf", b"", "fmt/276"),
        ("application/pdf", "a.pdf", b"GIF89a", None),
        (None, "scan.PDF", b"%PDF-1.3", "fmt/17"),
        ("image/png", "x", b"", "fmt/11"),
        ("image/jpeg", "x.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01", "fmt/43"),
        ("image/jpeg", "x.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x02", "fmt/44"),
        ("image/jpeg", "x.jpg", b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00", "fmt/41"),
        ("image/gif", None, b"GIF87a", "fmt/3"),
        ("image/webp", None, b"RIFF\x00\x00\x00\x00WEBPVP8L", "fmt/567"),
        ("image/webp", None, b"RIFF\x00\x00\x00\x00WEBPVP8X", "fmt/568"),
        ("text/html; charset=utf-8", "t.html", b"", "fmt/471"),
        ("application/json", None, b"", "fmt/817"),
        (None, "events.jsonl", b"", "x-fmt/111"),
        ("text/plain", None, b"", "x-fmt/111"),
        ("application/octet-stream", "data.zip", b"", "x-fmt/263"),
        ("video/mp4", "clip.mp4", b"", "fmt/199"),
        ("application/x-unknown", "x.png", b"", None),
        (None, None, b"", None),
    ],
)
def test_pronom_table(media_type: str | None, filename: str | None, head: bytes, puid: str | None) -> None:
    """Media type first, extension as fallback, version from the first bytes where it matters."""
    assert pronom_for(media_type, filename, head) == puid
    if puid is not None:
        assert pronom_name(puid) != puid


# -- safe names ----------------------------------------------------------------------------------------


def test_safe_name_examples() -> None:
    """Safe names pass unchanged; forbidden characters, spaces, leading dots and bidi controls are replaced."""
    assert safe_name("foto_2024-02-01.png") == "foto_2024-02-01.png"
    changed = safe_name("verslag overleg #3 & co.pdf")
    assert changed.startswith("verslag_overleg__3___co-") and changed.endswith(".pdf")
    assert not safe_name("..hidden").startswith(".")
    assert safe_name("").startswith("naamloos-")
    assert "\u202e" not in safe_name("evil\u202egnp.exe")
    assert safe_name("a" * 300).encode() and len(safe_name("a" * 300).encode()) <= 255
    assert safe_name("x-0123456789ab") != "x-0123456789ab"  # looks hashed: hashed again, cannot collide


def _check_safe(name: str, max_len: int) -> None:
    assert name and not name.startswith(".")
    assert len(name.encode("utf-8")) <= max_len
    assert not (set(name) & FORBIDDEN)
    assert not any(c.isspace() for c in name)
    assert all(ord(c) >= 0x20 and not 0x7F <= ord(c) <= 0x9F for c in name)


@given(st.text(), st.integers(32, 255))
def test_safe_name_properties(text: str, max_len: int) -> None:
    """Always non-empty, <= max_len UTF-8 bytes, no forbidden/space/control chars, deterministic.

    Not idempotent on purpose: a changed name ends in a hash, and a name that looks like that is hashed
    again, so a chat participant cannot pick a file name equal to another file's cleaned name.
    """
    name = safe_name(text, max_len)
    _check_safe(name, max_len)
    assert safe_name(text, max_len) == name
    if name == text:
        assert safe_name(name, max_len) == name


@given(
    st.text(min_size=1, max_size=30),
    st.lists(st.sampled_from(sorted(FORBIDDEN | {" "})), min_size=2, max_size=2, unique=True),
    st.integers(0, 30),
)
def test_forbidden_variants_do_not_collide(base: str, chars: list[str], pos: int) -> None:
    """Two names differing only in which forbidden character they hold map to different safe names."""
    i = min(pos, len(base))
    a, b = base[:i] + chars[0] + base[i:], base[:i] + chars[1] + base[i:]
    assert safe_name(a) != safe_name(b)


# -- pakbon --------------------------------------------------------------------------------------------


def test_pakbon_lists_streams_and_counts() -> None:
    """The slip holds id, organisation, the objects and files it was given, and totals excluding .MDTO.xml files."""
    files = (PakbonFile(f"d/f{i}.png", 10 + i, "AB" * 32) for i in range(3))
    sidecars = [PakbonFile("d/d.MDTO.xml", 500, "cd" * 32)]
    info = PakbonInfo("pkg-2024-02", HOSTILE, "2024-03-01T00:00:00+01:00", "Ministerie", "roo", contactpersoon="a@b")
    xml = pakbon_xml(info, [PakbonDossier("d", "k", HOSTILE, "Dossier")], [*files, *sidecars])
    root = etree.fromstring(xml)
    ns = {"p": PAKBON_NS}
    assert root.findtext("p:naam", namespaces=ns) == xml_text(HOSTILE)
    assert not root.xpath("//*[local-name()='script']")
    totals = root.find("p:totalen", ns).attrib
    assert dict(totals) == {
        "informatieobjecten": "1",
        "bestanden": "4",
        "bestandenZonderMdto": "3",
        "omvangZonderMdto": str(10 + 11 + 12),
    }
    assert root.find("p:bestanden/p:bestand", ns).get("sha256") == "ab" * 32
    assert pakbon_xml(info, [], []) == pakbon_xml(info, [], [])

"""MDTO XML 1.0.1 metadata for archive packages (pure: frozen values in, XML bytes out).

Generators: `serie_xml` (the whole chat archive, aggregatieniveau Serie),
`dossier_xml` (one conversation-month, Dossier), `bestand_xml` (one file in the
package), all rooted at `<MDTO>` in the namespace `NS` and built with lxml (never
by string concatenation), so hostile chat text is always escaped. Characters XML
1.0 cannot carry (controls, surrogates, U+FFFE/U+FFFF) become U+FFFD; empty
required text becomes "(leeg)". `validate` checks bytes against the shipped
XSD (schema/MDTO-XML1.0.1.xsd, © Nationaal Archief, CC BY-SA 4.0). The pakbon
(packing slip) has no XSD: see `bridge.archive.pakbon` (re-exported here).

Begrippen (concepts): published lists wherever one exists, code and label as
published (docs/archive-package.md, "Begrippen"): aggregatieniveau, waardering,
eventType Creatie/Bevriezing, checksumAlgoritme "SHA-256", openness from the
Archiefwet 1995 list (`NOT_ASSESSED`, one beperkingGebruik), PRONOM (else the
IANA media type). Our own list (`CHATARCHIEF_LIST`, shipped in the package as
`leesmij.BEGRIPPEN_PATH` and referred to by name and path) only for
dekkingInTijdType, the chat event types and betrokkeneTypeRelatie.
"""

from __future__ import annotations

import calendar
import contextlib
import functools
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from importlib import resources
from typing import Literal
from zoneinfo import ZoneInfo

from lxml import etree

from bridge.archive.leesmij import BEGRIPPEN_BRON, BEGRIPPEN_NAME, BEGRIPPEN_PATH, code_of
from bridge.archive.names import safe_name, xml_text
from bridge.archive.pakbon import PakbonDossier, PakbonFile, PakbonInfo, pakbon_xml, write_pakbon
from bridge.archive.pronom import pronom_for, pronom_name
from bridge.errors import DataError

NS = "https://www.nationaalarchief.nl/mdto"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
XSD_URL = "https://www.nationaalarchief.nl/mdto/MDTO-XML1.0.1.xsd"
CHATARCHIEF_LIST = BEGRIPPEN_NAME
OPENBAARHEID_LIST = "Begrippenlijst Openbaarheid - Archiefwet 1995"
TIMEZONE = ZoneInfo("Europe/Amsterdam")
ROO_PREFIX = "https://organisaties.overheid.nl/"

__all__ = [
    "NS",
    "Begrip",
    "BestandInfo",
    "DossierEvent",
    "DossierInfo",
    "MdtoError",
    "Organisation",
    "PakbonDossier",
    "PakbonFile",
    "PakbonInfo",
    "Participant",
    "Ref",
    "SerieInfo",
    "bestand_xml",
    "dossier_xml",
    "month_bounds",
    "pakbon_xml",
    "pronom_for",
    "safe_name",
    "serie_xml",
    "validate",
    "write_pakbon",
]


class MdtoError(DataError, ValueError):
    """XML that does not validate against the MDTO schema; the message names the first problem."""


@dataclass(frozen=True)
class Begrip:
    label: str
    lijst: str
    code: str | None = None


@dataclass(frozen=True)
class Ref:
    """A verwijzing: a name and, optionally, the identification (kenmerk + bron) of what is referred to."""

    name: str
    kenmerk: str | None = None
    bron: str | None = None


@dataclass(frozen=True)
class Organisation:
    """The archiefvormer and its appraisal (from config `organisation.*`)."""

    name: str
    creator_id: str
    appraisal: Literal["B", "V", "N"] = "B"
    retention_years: int | None = None


@dataclass(frozen=True)
class Participant:
    """A betrokkene: `sender_id` as the chat knows it, `source` (matrix|signal), display name when known."""

    sender_id: str
    source: str
    display_name: str | None = None


EventType = Literal["Creatie", "Bevriezing", "Wijziging", "Verwijdering in chat", "Achterhouding"]
_EVENT_LIST: dict[str, str] = {
    "Creatie": "Begrippenlijst EventTypeLijst MDTO",
    "Bevriezing": "Begrippenlijst EventTypeLijst MDTO",
    "Wijziging": CHATARCHIEF_LIST,
    "Verwijdering in chat": CHATARCHIEF_LIST,
    "Achterhouding": CHATARCHIEF_LIST,
}


@dataclass(frozen=True)
class DossierEvent:
    """One MDTO event: its type, time (ms UTC), responsible actor and an optional result text."""

    type: EventType
    at_ms: int
    actor: Participant | Ref | None = None
    result: str | None = None


#: The Archiefwet 1995 openness list, code and label exactly as published (an archive's pre-ingest checks the pair).
NOT_ASSESSED = Begrip(
    "openbaarheid niet beoordeeld (Archiefwet 1995)", OPENBAARHEID_LIST, "Openbaarheid/AW1995/NietBeoordeeld/1.0"
)


@dataclass(frozen=True)
class SerieInfo:
    """The chat archive as a whole: one Serie per log (kenmerk e.g. the log id)."""

    kenmerk: str
    bron: str
    naam: str
    organisation: Organisation
    omschrijving: str | None = None
    dossiers: tuple[Ref, ...] = ()


@dataclass(frozen=True)
class DossierInfo:
    """One conversation-month. `month` is "YYYY-MM" (Amsterdam calendar month)."""

    kenmerk: str
    bron: str
    naam: str
    month: str
    organisation: Organisation
    serie: Ref
    participants: tuple[Participant, ...] = ()
    events: tuple[DossierEvent, ...] = ()
    files: tuple[Ref, ...] = ()
    omschrijving: str | None = None
    withheld_count: int = 0
    beperking: Begrip = NOT_ASSESSED
    beperking_toelichting: str | None = (
        "De openbaarheid is niet beoordeeld; chatberichten kunnen persoonsgegevens bevatten."
    )
    #: first and last day a message inside was sent (its own time); None: no dekkingInTijd
    coverage: tuple[date, date] | None = None


@dataclass(frozen=True)
class BestandInfo:
    """One file of the package. `sha256` is hex; `checksum_at_ms` is when it was computed (ms UTC)."""

    kenmerk: str
    bron: str
    naam: str
    size: int
    sha256: str
    checksum_at_ms: int
    represents: Ref
    media_type: str | None = None
    puid: str | None = None
    head: bytes = b""


# -- helpers ---------------------------------------------------------------------------------


def _el(parent: etree._Element, tag: str, text: str | None = None) -> etree._Element:
    child = etree.SubElement(parent, f"{{{NS}}}{tag}")
    if text is not None:
        child.text = xml_text(text)
    return child


def _ident(parent: etree._Element, tag: str, kenmerk: str, bron: str) -> None:
    e = _el(parent, tag)
    _el(e, "identificatieKenmerk", kenmerk)
    _el(e, "identificatieBron", bron)


def _ref(parent: etree._Element, tag: str, ref: Ref) -> None:
    e = _el(parent, tag)
    _el(e, "verwijzingNaam", ref.name)
    if ref.kenmerk is not None:
        _ident(e, "verwijzingIdentificatie", ref.kenmerk, ref.bron or "(onbekend)")


def _begrip(parent: etree._Element, tag: str, b: Begrip) -> None:
    e = _el(parent, tag)
    _el(e, "begripLabel", b.label)
    code = b.code if b.code is not None or b.lijst != CHATARCHIEF_LIST else code_of(b.label)
    if code is not None:
        _el(e, "begripCode", code)
    # our own list is a file in the package; the MDTO names it and gives its path
    own = b.lijst == CHATARCHIEF_LIST
    _ref(e, "begripBegrippenlijst", Ref(b.lijst, BEGRIPPEN_PATH if own else None, BEGRIPPEN_BRON if own else None))


def _participant_ref(p: Participant) -> Ref:
    bron = {"matrix": "Matrix-gebruikers-ID", "signal": "Signal-account"}.get(p.source, p.source)
    return Ref(p.display_name or p.sender_id, p.sender_id, bron)


def _root(xsd: str) -> etree._Element:
    root = etree.Element(f"{{{NS}}}MDTO", nsmap={None: NS, "xsi": XSI})
    root.set(f"{{{XSI}}}schemaLocation", f"{NS} {xsd}")
    return root


def _bytes(root: etree._Element) -> bytes:
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))


def xml_datetime(ms: int) -> str:
    """An xsd:dateTime in Amsterdam local time with its UTC offset (seconds); ValueError if out of range."""
    try:
        local = datetime.fromtimestamp(ms // 1000, TIMEZONE)
    except (OverflowError, OSError, ValueError) as exc:
        raise ValueError(f"time {ms} ms is out of range: {exc}") from None
    offset = local.utcoffset()
    if offset is not None and offset.seconds % 60:  # pre-1940 Amsterdam time (+00:19:32): xsd wants hh:mm
        return local.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return local.isoformat(timespec="seconds")


def month_bounds(month: str) -> tuple[date, date]:
    """First and last day of "YYYY-MM"; ValueError for anything else."""
    m = re.fullmatch(r"(\d{4})-(\d{2})", month)
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise ValueError(f"month must be YYYY-MM, got {month!r}")
    year, mon = int(m.group(1)), int(m.group(2))
    return date(year, mon, 1), date(year, mon, calendar.monthrange(year, mon)[1])


_WAARDERING = {"B": "Blijvend te bewaren", "V": "Tijdelijk te bewaren", "N": "Nader te bepalen"}


def _informatieobject(
    kenmerk: str, bron: str, naam: str, niveau: str, omschrijving: str | None, xsd: str
) -> tuple[etree._Element, etree._Element]:
    root = _root(xsd)
    io = _el(root, "informatieobject")
    _ident(io, "identificatie", kenmerk, bron)
    _el(io, "naam", naam)
    _begrip(io, "aggregatieniveau", Begrip(niveau, "Begrippenlijst Aggregatieniveaus MDTO"))
    if omschrijving is not None:
        _el(io, "omschrijving", omschrijving)
    return root, io


def _waardering(io: etree._Element, org: Organisation, term_start: date | None) -> None:
    _begrip(io, "waardering", Begrip(_WAARDERING[org.appraisal], "Begrippenlijst Waarderingen MDTO", org.appraisal))
    if org.appraisal == "V" and org.retention_years is not None and term_start is not None:
        term = _el(io, "bewaartermijn")
        _el(term, "termijnStartdatumLooptijd", term_start.isoformat())
        _el(term, "termijnLooptijd", f"P{org.retention_years}Y")
        end_year = term_start.year + org.retention_years
        if end_year <= 9999:
            _el(term, "termijnEinddatum", _add_years(term_start, org.retention_years).isoformat())


def _add_years(d: date, years: int) -> date:
    try:
        return d.replace(year=d.year + years)
    except ValueError:  # 29 February
        return d.replace(year=d.year + years, day=28)


def _archiefvormer(io: etree._Element, org: Organisation) -> None:
    bron = "Register van Overheidsorganisaties" if org.creator_id.startswith(ROO_PREFIX) else "Chatarchief-configuratie"
    _ref(io, "archiefvormer", Ref(org.name, org.creator_id, bron))


# -- generators --------------------------------------------------------------------------------


def serie_xml(info: SerieInfo, xsd: str = XSD_URL) -> bytes:
    """MDTO for the whole chat archive (aggregatieniveau Serie); `xsd`: the schema's location (relative in a
    package)."""
    root, io = _informatieobject(info.kenmerk, info.bron, info.naam, "Serie", info.omschrijving, xsd)
    _el(io, "taal", "nl")
    _waardering(io, info.organisation, None)
    for d in info.dossiers:
        _ref(io, "bevatOnderdeel", d)
    _archiefvormer(io, info.organisation)
    _beperking(io, NOT_ASSESSED, "De openbaarheid van de chatgesprekken is niet beoordeeld.")
    return _bytes(root)


def dossier_xml(info: DossierInfo, xsd: str = XSD_URL) -> bytes:
    """MDTO for one conversation-month (aggregatieniveau Dossier); ValueError for a bad `month`.

    dekkingInTijd gives the first and last day a message inside was sent (`info.coverage`), not the month's
    bounds: a month's package can hold messages imported later with older dates, and an interim package
    ends before the month does."""
    _, last = month_bounds(info.month)
    root, io = _informatieobject(info.kenmerk, info.bron, info.naam, "Dossier", info.omschrijving, xsd)
    if info.coverage is not None:
        cover = _el(io, "dekkingInTijd")
        _begrip(cover, "dekkingInTijdType", Begrip("Looptijd berichten", CHATARCHIEF_LIST))
        _el(cover, "dekkingInTijdBegindatum", info.coverage[0].isoformat())
        _el(cover, "dekkingInTijdEinddatum", info.coverage[1].isoformat())
    _el(io, "taal", "nl")
    for ev in info.events:
        _event(io, ev)
    _waardering(io, info.organisation, date.fromordinal(last.toordinal() + 1))
    _ref(io, "isOnderdeelVan", info.serie)
    for f in info.files:
        _ref(io, "heeftRepresentatie", f)
    _archiefvormer(io, info.organisation)
    for p in info.participants:
        b = _el(io, "betrokkene")
        _begrip(b, "betrokkeneTypeRelatie", Begrip("Deelnemer", CHATARCHIEF_LIST))
        _ref(b, "betrokkeneActor", _participant_ref(p))
    toelichting = info.beperking_toelichting
    if info.withheld_count:  # one beperkingGebruik only (pre-ingest validation counts them)
        toelichting = (
            f"{toelichting + ' ' if toelichting else ''}Inhoud deels achtergehouden: {info.withheld_count}"
            " gebeurtenis(sen) na een beslissing van de informatiespecialist (buiten reikwijdte, bijvoorbeeld"
            " privé of partijpolitiek); het transcript toont reden, auteur en tijd."
        )
    _beperking(io, info.beperking, toelichting)
    return _bytes(root)


def _event(io: etree._Element, ev: DossierEvent) -> None:
    e = _el(io, "event")
    _begrip(e, "eventType", Begrip(ev.type, _EVENT_LIST[ev.type]))
    with contextlib.suppress(ValueError):  # a hostile origin time: eventTijd is optional, leave it out
        _el(e, "eventTijd", xml_datetime(ev.at_ms))
    if ev.actor is not None:
        _ref(
            e,
            "eventVerantwoordelijkeActor",
            _participant_ref(ev.actor) if isinstance(ev.actor, Participant) else ev.actor,
        )
    if ev.result is not None:
        _el(e, "eventResultaat", ev.result)


def _beperking(io: etree._Element, b: Begrip, toelichting: str | None) -> None:
    e = _el(io, "beperkingGebruik")
    _begrip(e, "beperkingGebruikType", b)
    if toelichting is not None:
        _el(e, "beperkingGebruikNadereBeschrijving", toelichting)


def bestand_xml(info: BestandInfo, xsd: str = XSD_URL) -> bytes:
    """MDTO for one file: size, PRONOM format (PUID when known, else its IANA media type), SHA-256 checksum,
    what it represents."""
    root = _root(xsd)
    b = _el(root, "bestand")
    _ident(b, "identificatie", info.kenmerk, info.bron)
    _el(b, "naam", info.naam)
    _el(b, "omvang", str(info.size))
    puid = info.puid or pronom_for(info.media_type, info.naam, info.head)
    if puid is not None:
        _begrip(b, "bestandsformaat", Begrip(pronom_name(puid), "PRONOM-register", puid))
    else:  # not in our PRONOM table: say what the sender declared, from the list it comes from
        label = (info.media_type or "application/octet-stream").split(";", 1)[0].strip().lower()
        _begrip(b, "bestandsformaat", Begrip(label or "application/octet-stream", "IANA Media Types"))
    c = _el(b, "checksum")
    _begrip(c, "checksumAlgoritme", Begrip("SHA-256", "Begrippenlijst ChecksumAlgoritme MDTO"))
    _el(c, "checksumWaarde", info.sha256.lower())
    _el(c, "checksumDatum", xml_datetime(info.checksum_at_ms))
    _ref(b, "isRepresentatieVan", info.represents)
    return _bytes(root)


# -- validation ---------------------------------------------------------------------------------


@functools.cache
def _schema() -> etree.XMLSchema:
    data = resources.files("bridge.archive").joinpath("schema/MDTO-XML1.0.1.xsd").read_bytes()
    return etree.XMLSchema(etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True)))


def validate(xml_bytes: bytes) -> None:
    """Raise MdtoError unless `xml_bytes` is MDTO XML 1.0.1 that the XSD accepts (no network, no entities)."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    try:
        doc = etree.fromstring(xml_bytes, parser)
    except etree.XMLSyntaxError as exc:
        raise MdtoError(f"not well-formed XML: {exc}") from None
    if doc.getroottree().docinfo.internalDTD is not None:
        raise MdtoError("a DOCTYPE is not allowed in MDTO XML")
    schema = _schema()
    try:
        valid = schema.validate(doc)
    except etree.Error as exc:
        raise MdtoError(f"does not validate: {exc}") from None
    if not valid:
        err = schema.error_log.last_error
        raise MdtoError(f"line {err.line}: {err.message}" if err is not None else "does not validate")

"""Pass 3 of a package: transcripts, MDTO XML and the pakbon from the written event files (I/O).

Each dossier's `events.jsonl` is read back line by line (memory stays flat)
and fed to the transcript renderer and the MDTO dossier summary; then every
file of the dossier gets its `.bestand.MDTO.xml`, the dossier its `.MDTO.xml`,
the archive (Serie) its own, and the pakbon lists every payload file.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson

from bridge.archive import mdto
from bridge.archive.bag import PackageSink
from bridge.archive.derive import DossierState, MediaFile, RenderParams
from bridge.archive.dossier import DossierSummary
from bridge.archive.lookahead import Lookahead
from bridge.archive.transcript import Provenance, TranscriptEntry, write_transcript
from bridge.events import Event
from bridge.policy import Withheld

BRON = "Chatarchief"
SIDECAR = ".bestand.MDTO.xml"


def render_package(
    builder: PackageSink,
    params: RenderParams,
    key_name: str,
    dossiers: Sequence[DossierState],
    start: int,
    end: int,
    sealed_ms: int,
    status: str,
) -> list[str]:
    """Write transcripts, MDTO and pakbon; returns the transcripts' paths relative to data/.

    The same code runs in `snapshot` (writing) and in `verify-package` (a sink that compares).
    """
    org = params.organisation
    month = params.month
    serie_name = params.serie
    serie = mdto.Ref(f"Chatarchief {params.log_id}", f"chatarchief:{params.log_id}", BRON)
    transcripts: list[str] = []
    refs: list[mdto.Ref] = []
    objects = [mdto.PakbonDossier(f"{serie_name}.MDTO.xml", serie.kenmerk or "", serie.name, "Serie")]
    for state in dossiers:
        links = conversation_links(state, dossiers)
        provenance = Provenance(key_name, start, end, sealed_ms, status)
        ref = _render_dossier(builder, params, serie, state, provenance, links)
        refs.append(ref)
        objects.append(mdto.PakbonDossier(f"{state.folder}.MDTO.xml", ref.kenmerk or "", ref.name))
        transcripts.append(f"{state.folder}/transcript.html")
    serie_info = mdto.SerieInfo(
        serie.kenmerk or "",
        BRON,
        serie.name,
        org,
        omschrijving=f"Zakelijke chatberichten, vastgelegd door Chatarchief (log {params.log_id})",
        dossiers=tuple(refs),
    )
    builder.write(f"{serie_name}.MDTO.xml", mdto.serie_xml(serie_info))
    info = mdto.PakbonInfo(
        identificatie=f"{key_name}/{month}/{start}-{end}",
        naam=f"Chatarchief {month}",
        aanmaaktijd=mdto.xml_datetime(sealed_ms),
        archiefvormer=org.name,
        archiefvormer_kenmerk=org.creator_id,
        bijzonderheden=f"{status}; records {start} tot {end} van het log; bewijs in proof/",
    )
    files = [mdto.PakbonFile(rel, size, digest) for rel, (digest, size) in sorted(builder.payload.items())]
    fh = builder.open("pakbon.xml")
    with fh:
        mdto.write_pakbon(fh, info, objects, files)  # type: ignore[arg-type]
    builder.done("pakbon.xml", fh)
    return transcripts


@dataclass(frozen=True, slots=True)
class DossierLine:
    """What the renderers read of a line of events.jsonl: an event, or the tombstone that withholds one.

    The lines are the package writer's own (`snapshot`) or proven line by line (`verify-package`).
    """

    seq: int
    event: Event | None
    withheld: Withheld | None

    @classmethod
    def parse(cls, line: bytes) -> DossierLine:
        d = orjson.loads(line)
        tomb = d.get("withheld")
        if tomb is not None:
            return cls(d["seq"], None, Withheld(tomb["reason"], tomb["by"], tomb["at_ms"], tomb["decision_seq"]))
        return cls(d["seq"], Event.from_json(d["event"]), None)


def _entries(path: Path, state: DossierState, summary: DossierSummary) -> Iterator[TranscriptEntry]:
    with path.open("rb") as fh:
        for raw in fh:
            line = DossierLine.parse(raw)
            if line.event is None:
                summary.withheld_count += 1
            else:
                summary.add(line.event)
            yield TranscriptEntry(line.seq, line.event, line.withheld, state.media)


def _lookahead(path: Path, state: DossierState) -> Lookahead:
    """The transcript's first pass over the dossier's events (polls, edits, participants); tombstones skipped."""
    with path.open("rb") as fh:
        lines = (DossierLine.parse(raw) for raw in fh)
        return Lookahead.of((line.event for line in lines if line.event is not None), state.edited.keys())


def conversation_links(state: DossierState, dossiers: Sequence[DossierState]) -> dict[str, str]:
    """Conversation id -> href (relative to `state`'s transcript) of the other dossiers of the same source in
    this package: what a room upgrade in `state` links to."""
    return {
        other.conversation: posixpath.relpath(f"{other.folder}/transcript.html", state.folder)
        for other in dossiers
        if other.source == state.source and other.conversation != state.conversation
    }


def _render_dossier(
    builder: PackageSink,
    params: RenderParams,
    serie: mdto.Ref,
    state: DossierState,
    provenance: Provenance,
    links: dict[str, str],
) -> mdto.Ref:
    month, org, sealed_ms = params.month, params.organisation, provenance.sealed_ms
    kenmerk = f"{serie.kenmerk}:{state.source}:{state.conversation}:{month}"
    naam = f"{state.name or state.conversation} ({month})"
    ref = mdto.Ref(naam, kenmerk, BRON)
    summary = DossierSummary()
    transcript_rel = f"{state.folder}/transcript.html"
    out = builder.open(transcript_rel)
    with out:
        write_transcript(
            out,  # type: ignore[arg-type]
            title=naam,
            conversation=state.conversation,
            month=str(month),
            entries=_entries(builder.data_path(state.events_rel), state, summary),
            edited_ids=state.edited,
            deleted_ids=state.deleted,
            lookahead=_lookahead(builder.data_path(state.events_rel), state),
            links=links,
            tz=ZoneInfo(params.timezone),
            provenance=provenance,
        )
    builder.done(transcript_rel, out)
    files = [
        MediaFile("events.jsonl", "application/x-ndjson", None),
        MediaFile("transcript.html", "text/html", None),
        *state.media_info,
    ]
    file_refs: list[mdto.Ref] = []
    for file in files:
        rel, media_type = file.rel, file.media_type
        full = f"{state.folder}/{rel}"
        digest, size = builder.payload[full]
        with builder.data_path(full).open("rb") as fh:
            head = fh.read(64)
        file_ref = mdto.Ref(rel.rsplit("/", 1)[-1], f"{kenmerk}/{rel}", BRON)
        info = mdto.BestandInfo(
            kenmerk=file_ref.kenmerk or "",
            bron=BRON,
            naam=file_ref.name,
            size=size,
            sha256=digest,
            checksum_at_ms=sealed_ms,
            represents=ref,
            media_type=media_type,
            head=head,
        )
        builder.write(full + SIDECAR, mdto.bestand_xml(info))
        file_refs.append(file_ref)
    dossier = mdto.DossierInfo(
        kenmerk=kenmerk,
        bron=BRON,
        naam=naam,
        month=str(month),
        organisation=org,
        serie=serie,
        participants=summary.participants(),
        events=summary.events(sealed_ms),
        files=tuple(file_refs),
        omschrijving=f"Chatgesprek {state.conversation} ({state.source}), {month}: {state.records} records",
        withheld_count=summary.withheld_count,
    )
    builder.write(f"{state.folder}.MDTO.xml", mdto.dossier_xml(dossier))
    return ref

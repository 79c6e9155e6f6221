"""Pass 3 of a package: transcripts, MDTO XML and the pakbon from the written event files (I/O).

Each dossier's `events.jsonl` is read back line by line (memory stays flat)
and fed to the transcript renderer and the MDTO dossier summary; then every
file of the dossier gets its `.bestand.MDTO.xml`, the dossier its `.MDTO.xml`,
the archive (Serie) its own, and the pakbon lists every payload file.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson

from bridge.archive import mdto
from bridge.archive.bag import PackageSink
from bridge.archive.derive import DossierState, RenderParams
from bridge.archive.dossier import DossierSummary
from bridge.archive.range import Month
from bridge.archive.transcript import TranscriptEntry, write_transcript
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
        ref = _render_dossier(builder, month, org, serie, state, sealed_ms)
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


def _entries(path: Path, state: DossierState, summary: DossierSummary) -> Iterator[TranscriptEntry]:
    with path.open("rb") as fh:
        for line in fh:
            d = orjson.loads(line)
            tomb = d.get("withheld")
            if tomb is not None:
                w = Withheld(tomb["reason"], tomb["by"], tomb["at_ms"], tomb["decision_seq"])
                summary.withheld_count += 1
                yield TranscriptEntry(d["seq"], None, w, state.media)
                continue
            event = Event.from_json(d["event"])
            summary.add(event)
            yield TranscriptEntry(d["seq"], event, None, state.media)


def _render_dossier(
    builder: PackageSink, month: Month, org: mdto.Organisation, serie: mdto.Ref, state: DossierState, sealed_ms: int
) -> mdto.Ref:
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
        )
    builder.done(transcript_rel, out)
    files: list[tuple[str, str | None, str | None]] = [
        ("events.jsonl", "application/x-ndjson", None),
        ("transcript.html", "text/html", None),
    ]
    files += [(rel, mtype, name) for rel, mtype, name in state.media_info]
    file_refs: list[mdto.Ref] = []
    for rel, media_type, _ in files:
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

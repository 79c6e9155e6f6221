"""Pass 3 of a package: transcripts, MDTO XML and the pakbon from the written event files (I/O).

Each dossier's `events.jsonl` is read back line by line (memory stays flat)
and fed to the transcript renderer and the MDTO dossier summary; then every
file of the dossier gets its `.bestand.MDTO.xml`, the dossier its `.MDTO.xml`,
the archive (Serie) its own, and the pakbon lists every payload file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import itertools
import os
import pickle
import posixpath
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import orjson

from bridge import helper_process
from bridge.archive import mdto
from bridge.archive.bag import HashingFile, HashOnly, OutFile, PackageSink
from bridge.archive.derive import (
    LIVENESS_NAME,
    STATUS_INTERIM,
    Coverage,
    DossierState,
    MediaFile,
    RenderParams,
    local_date,
    range_text,
)
from bridge.archive.dossier import DossierSummary
from bridge.archive.leesmij import XSD_PATH
from bridge.archive.lookahead import Lookahead
from bridge.archive.range import Month
from bridge.archive.transcript import Provenance, TranscriptEntry, write_transcript
from bridge.events import ENCODING_VERSION, Event, Kind
from bridge.policy import Withheld

BRON = "Chatarchief"
SIDECAR = ".bestand.MDTO.xml"
MONTHS_NL = (
    "januari", "februari", "maart", "april", "mei", "juni",
    "juli", "augustus", "september", "oktober", "november", "december",
)  # fmt: skip
NAMED_PARTICIPANTS = 4  # a dossier's name lists this many participants, then "en N anderen"
#: Bytes of a dossier's events.jsonl parsed once and held for rendering's two passes (see `DossierLines`: a
#: message is charged its bytes without its raw, any other line 5/3 of its bytes); the rest of a larger one is
#: parsed on each pass, so memory stays bounded: ~57 MB held at most for `bench/snapshot.py`'s lines.
LINE_CACHE_BYTES = 40 << 20
#: Rendering uses worker processes only for packages whose event files hold at least this many bytes (starting
#: an interpreter costs about as much as rendering a few megabytes).
POOL_MIN_BYTES = 8 << 20


@dataclass(frozen=True)
class Rendered:
    """What the renderers tell the tag files: transcripts (relative to data/), the messages' own dates, and
    each dossier's folder and name."""

    transcripts: list[str]
    coverage: Coverage
    dossiers: list[tuple[str, str]]


def month_nl(month: Month) -> str:
    return f"{MONTHS_NL[month.month - 1]} {month.year}"


def xsd_href(rel: str) -> str:
    """The shipped XSD (`documentatie/`) relative to the MDTO file `data/<rel>`."""
    return posixpath.relpath(XSD_PATH, posixpath.dirname(f"data/{rel}"))


def render_package(
    builder: PackageSink,
    params: RenderParams,
    key_name: str,
    dossiers: Sequence[DossierState],
    start: int,
    end: int,
    sealed_ms: int,
    status: str,
    workers: int = 1,
    helpers: helper_process.Started | None = None,
    rendered: Callable[[list[tuple[str, str, int]]], None] | None = None,
) -> Rendered:
    """Write transcripts, MDTO and pakbon; returns what the tag files need (`Rendered`).

    The same code runs in `snapshot` (writing) and in `verify-package` (a sink that compares). Dossiers are
    rendered independently of each other, in up to `workers` processes when the package is large enough to
    repay starting them (`POOL_MIN_BYTES`); their files are taken by `builder` in dossier order, so the output
    is the same byte for byte whatever the number of processes. `helpers`: rendering processes started ahead
    (they import while the caller does other work); used first, and left to the caller to close. `rendered`:
    called with each dossier's files (rel, digest, size) as soon as they are written (`snapshot` starts their
    fsync then), before `builder` records them.
    """
    org = params.organisation
    serie_name = params.serie
    serie = mdto.Ref(f"Zakelijke chatberichten {org.name}", f"chatarchief:{params.log_id}", BRON)
    interim = status == STATUS_INTERIM
    transcripts: list[str] = []
    refs: list[mdto.Ref] = []
    named: list[tuple[str, str]] = []
    coverage = Coverage()
    objects = [mdto.PakbonDossier(f"{serie_name}.MDTO.xml", serie.kenmerk or "", serie.name, "Serie")]
    provenance = Provenance(key_name, start, end, sealed_ms, status)
    data = builder.data_path("")
    directory = tuple((d.source, d.conversation, d.folder) for d in dossiers)  # one object, shared by every job
    jobs = [_job(data, builder, params, serie, state, provenance, interim, directory) for state in dossiers]
    sizes = [builder.payload[d.events_rel][1] if d.events_rel in builder.payload else 0 for d in dossiers]
    results = render_jobs(jobs, sizes, workers, helpers, rendered)
    for state, (ref, dates, files) in zip(dossiers, results, strict=True):
        for rel, digest, size in files:
            builder.record(rel, digest, size)
        coverage = _add_dossier(state, ref, dates, coverage, refs, named, objects, transcripts)
    return _finish(builder, params, key_name, serie, refs, objects, transcripts, named, coverage, start, end,
                   sealed_ms, interim)  # fmt: skip


def _add_dossier(
    state: DossierState,
    ref: mdto.Ref,
    dates: Coverage,
    coverage: Coverage,
    refs: list[mdto.Ref],
    named: list[tuple[str, str]],
    objects: list[mdto.PakbonDossier],
    transcripts: list[str],
) -> Coverage:
    refs.append(ref)
    named.append((state.folder, ref.name))
    objects.append(mdto.PakbonDossier(f"{state.folder}.MDTO.xml", ref.kenmerk or "", ref.name))
    transcripts.append(f"{state.folder}/transcript.html")
    return coverage.join(dates)


def _finish(
    builder: PackageSink,
    params: RenderParams,
    key_name: str,
    serie: mdto.Ref,
    refs: list[mdto.Ref],
    objects: list[mdto.PakbonDossier],
    transcripts: list[str],
    named: list[tuple[str, str]],
    coverage: Coverage,
    start: int,
    end: int,
    sealed_ms: int,
    interim: bool,
) -> Rendered:
    """The Serie's MDTO and the pakbon, once every dossier is rendered."""
    org, month, serie_name = params.organisation, params.month, params.serie
    serie_info = mdto.SerieInfo(
        serie.kenmerk or "",
        BRON,
        serie.name,
        org,
        omschrijving=(
            f"Zakelijke chatberichten van {org.name} (Matrix en Signal), vastgelegd door Chatarchief in het"
            f" log {key_name}; één dossier per gesprek per maand"
        ),
        dossiers=tuple(refs),
    )
    serie_rel = f"{serie_name}.MDTO.xml"
    builder.write(serie_rel, mdto.serie_xml(serie_info, xsd_href(serie_rel)))
    records = range_text(start, end)
    info = mdto.PakbonInfo(
        identificatie=f"{key_name}/{month}/{start}-{end}",
        naam=f"Zakelijke chatberichten {org.name}, {month_nl(month)}" + (" (tussentijds)" if interim else ""),
        aanmaaktijd=mdto.xml_datetime(sealed_ms),
        archiefvormer=org.name,
        archiefvormer_kenmerk=org.creator_id,
        bijzonderheden=(
            ("tussentijds pakket: de maand tot nu toe" if interim else "maand afgesloten")
            + f"; records {records} van het log; verzenddatums {coverage.text()}; bewijs in proof/;"
            " uitleg in LEESMIJ.txt en documentatie/"
        ),
    )
    files = [mdto.PakbonFile(rel, size, digest) for rel, (digest, size) in sorted(builder.payload.items())]
    fh = builder.open("pakbon.xml")
    with fh:
        mdto.write_pakbon(fh, info, objects, files)  # type: ignore[arg-type]
    builder.done("pakbon.xml", fh)
    return Rendered(transcripts, coverage, named)


def default_workers() -> int:
    """The processes rendering may use: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


Result = tuple[mdto.Ref, Coverage, list[tuple[str, str, int]]]


def render_jobs(
    jobs: Sequence[_Job],
    sizes: Sequence[int],
    workers: int,
    helpers: helper_process.Started | None = None,
    rendered: Callable[[list[tuple[str, str, int]]], None] | None = None,
) -> list[Result]:
    """Every job's result, in job order: rendered here, or shared out over `workers` processes in all (this one
    and workers - 1 other interpreters: `helpers`' started ahead first, then fresh ones) when the event files
    hold at least `POOL_MIN_BYTES`. Each process gets whole dossiers, the largest first to the least loaded
    (sizes: bytes of each dossier's events.jsonl); `rendered(files)` is called for each job once its files
    are written."""

    def here(job: _Job) -> Result:
        result = _render_job(job)
        if rendered is not None:
            rendered(result[2])
        return result

    n = min(workers, len(jobs))
    if n < 2 or sum(sizes) < POOL_MIN_BYTES:
        return [here(job) for job in jobs]
    shares: list[list[int]] = [[] for _ in range(n)]
    load = [0] * n
    for i in sorted(range(len(jobs)), key=lambda i: -sizes[i]):
        k = load.index(min(load))
        shares[k].append(i)
        load[k] += sizes[i] + 1
    running: list[_Helper] = []
    try:
        for share in shares[1:]:
            running.append(_Helper([jobs[i] for i in sorted(share)], None if helpers is None else helpers.take()))
        results: dict[int, Result] = {i: here(jobs[i]) for i in sorted(shares[0])}
        for helper, share in zip(running, shares[1:], strict=True):
            done = helper.results()
            if rendered is not None:
                for result in done:
                    rendered(result[2])
            results.update(zip(sorted(share), done, strict=True))
    finally:
        for helper in running:
            helper.stop()
    return [results[i] for i in range(len(jobs))]


def _start_helper() -> subprocess.Popen[bytes]:
    return helper_process.start("bridge.archive.render", "helper_main")


def render_helpers(n: int) -> helper_process.Started:
    """`n` rendering interpreters started ahead of their jobs: they import while the caller works on (a
    snapshot's record pass), so rendering does not wait for them; `render_jobs` takes them, the caller's
    `close()` ends them (they wait on their stdin until they get a job, using no CPU). No stderr tails: a
    `_Helper` reads its helper's stderr with `communicate`."""
    return helper_process.Started("bridge.archive.render", "helper_main", n, tails=False)


class _Helper:
    """An interpreter rendering a list of jobs (pickled over its stdin, results over its stdout): `proc`, one
    started ahead (`render_helpers`), or a fresh one.

    A plain subprocess rather than a multiprocessing pool: that would start by importing the caller's main
    script (the whole CLI, for `chatarchief snapshot`) in every process."""

    def __init__(self, jobs: list[_Job], proc: subprocess.Popen[bytes] | None = None) -> None:
        try:
            data = pickle.dumps(jobs)  # before starting the process: nothing to clean up if this fails
        except BaseException:
            if proc is not None:
                proc.kill()
                proc.communicate()
            raise
        self._proc = proc if proc is not None else _start_helper()
        self._out: list[tuple[bytes, bytes]] = []
        self._thread = threading.Thread(target=self._talk, args=(data,), daemon=True)
        self._thread.start()

    def _talk(self, data: bytes) -> None:
        self._out.append(self._proc.communicate(data))

    def results(self) -> list[Result]:
        self._thread.join()
        out, err = self._out[0] if self._out else (b"", b"")
        if self._proc.returncode != 0:
            last = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
            raise RuntimeError(f"a rendering process failed (exit {self._proc.returncode}): {last[0]}")
        results: list[Result] = pickle.loads(out)  # noqa: S301  (our own child, over its private pipe)
        return results

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._thread.join()


def helper_main() -> None:
    """A rendering process: jobs in (pickled, stdin), results out (pickled, stdout)."""
    jobs: list[_Job] = pickle.loads(sys.stdin.buffer.read())  # noqa: S301  (from the parent, over a private pipe)
    sys.stdout.buffer.write(pickle.dumps([_render_job(job) for job in jobs]))
    sys.stdout.buffer.flush()


@dataclass(frozen=True)
class _Job:
    """One dossier to render, as sent to a worker process (no open handles, no hash objects)."""

    data: Path  # the package's data/ folder
    writes: bool
    params: RenderParams
    serie: mdto.Ref
    state: DossierState
    provenance: Provenance
    interim: bool
    directory: tuple[tuple[str, str, str], ...]  # (source, conversation, folder) of every dossier: for links
    payload: dict[str, tuple[str, int]]  # the dossier's files already in the package (events.jsonl, media)


def _job(
    data: Path,
    builder: PackageSink,
    params: RenderParams,
    serie: mdto.Ref,
    state: DossierState,
    provenance: Provenance,
    interim: bool,
    directory: tuple[tuple[str, str, str], ...],
) -> _Job:
    rels = [state.events_rel, *(f"{state.folder}/{m.rel}" for m in state.media_info)]
    payload = {rel: builder.payload[rel] for rel in rels if rel in builder.payload}
    bare = dataclasses.replace(state, sha=None)
    return _Job(data, builder.writes, params, serie, bare, provenance, interim, directory, payload)


class _DossierSink:
    """The sink one dossier renders into (in a worker or inline): files written under `data` (or only hashed),
    each listed in `files` for the package's own sink to take."""

    def __init__(self, data: Path, writes: bool, payload: dict[str, tuple[str, int]]) -> None:
        self._data = data
        self.writes = writes
        self.payload = payload
        self.files: list[tuple[str, str, int]] = []

    def data_path(self, rel: str) -> Path:
        path = self._data / rel
        if self.writes:
            path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def open(self, rel: str) -> OutFile:
        return HashingFile(self.data_path(rel)) if self.writes else HashOnly()

    def done(self, rel: str, fh: OutFile) -> None:
        self.record(rel, fh.hexdigest(), fh.size)

    def record(self, rel: str, digest: str, size: int) -> None:
        self.payload[rel] = (digest, size)
        self.files.append((rel, digest, size))

    def write(self, rel: str, data: bytes) -> tuple[str, int]:
        with self.open(rel) as fh:
            fh.write(data)
        self.done(rel, fh)
        return self.payload[rel]


def _render_job(job: _Job) -> tuple[mdto.Ref, Coverage, list[tuple[str, str, int]]]:
    sink = _DossierSink(job.data, job.writes, dict(job.payload))
    links = conversation_links(job.state, job.directory)  # per dossier, so n dossiers never hold n^2 links
    with collector_paused():
        ref, dates = _render_dossier(sink, job.params, job.serie, job.state, job.provenance, job.interim, links)
    return ref, dates, sink.files


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block (as it was after it). A dossier's parsed lines (up to
    `LINE_CACHE_BYTES` of events, their dicts and strings: tens of thousands of objects) hold no reference
    cycles and are freed by reference counting when the dossier is done; while they live, every full
    collection walks all of them again (measured: ~20% of parsing a 13 MB dossier)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


#: Event's fields in order, each with its slot's setter (`event_of`); a field added to Event stops the import.
_EVENT_FIELDS = (
    "source", "conversation", "event_id", "kind", "sender", "sent_at", "received_at", "content", "relates_to",
    "attachments", "raw", "problem",
)  # fmt: skip
if tuple(f.name for f in dataclasses.fields(Event)) != _EVENT_FIELDS:  # not an assert: kept under python -O
    raise RuntimeError("render.event_of: Event's fields changed; update _EVENT_FIELDS and event_of")
_SET = tuple(Event.__dict__[name].__set__ for name in _EVENT_FIELDS)
_KIND_OF = {k.value: k for k in Kind}


def event_of(d: dict[str, Any]) -> Event:
    """`Event.from_json(d)`: the same event (or, through it, the same error), a third of its cost for the common
    encoding (version 1, a known kind, no attachments, every field there, non-empty ids): the values go straight
    into the frozen event's slots instead of through the dataclass `__init__`, whose per-field
    `object.__setattr__` costs more than parsing the line. Anything else is `Event.from_json`'s to decide. A
    hypothesis property pins that both agree."""
    try:
        source, conversation, event_id, kind = d["source"], d["conversation"], d["event_id"], d["kind"]
        values = (
            d["sender"], d["sent_at"], d["received_at"], d["content"], d["relates_to"], d["attachments"], d["raw"],
            d["problem"],
        )  # fmt: skip
    except (KeyError, TypeError):
        return Event.from_json(d)
    known = _KIND_OF.get(kind) if type(kind) is str else None
    if d.get("v") != ENCODING_VERSION or known is None or values[5] != [] or not (source and conversation and event_id):
        return Event.from_json(d)
    ev: Event = object.__new__(Event)
    s = _SET
    s[0](ev, source)
    s[1](ev, conversation)
    s[2](ev, event_id)
    s[3](ev, known)
    s[4](ev, values[0])
    s[5](ev, values[1])
    s[6](ev, values[2])
    s[7](ev, values[3])
    s[8](ev, values[4])
    s[9](ev, ())
    s[10](ev, values[6])
    s[11](ev, values[7])
    return ev


class DossierLine(NamedTuple):
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
        return cls(d["seq"], event_of(d["event"]), None)


#: A held message's charge against the budget is at least this many bytes (its objects cost several hundred
#: bytes whatever its size), so the number of lines held stays bounded too.
HELD_LINE_MIN = 768
_NO_RAW: dict[str, Any] = {}  # what a held message's `raw` becomes (never read: see `DossierLines`)
_SET_RAW = _SET[_EVENT_FIELDS.index("raw")]


class DossierLines:
    """The parsed lines of a dossier's events.jsonl, iterable more than once (rendering takes two passes:
    `_first_pass` and the transcript).

    The file's first lines are parsed once and held, up to `cache_bytes` (default `LINE_CACHE_BYTES`) of charges;
    the rest, if any, is streamed and parsed again on every pass, so memory stays bounded whatever one
    conversation holds. A held message (`Kind.MESSAGE`) keeps no `raw` (it becomes `{}`): rendering reads `raw`
    only for an event of a kind it has no view of (`transcript.kinds`), so the dict and strings of the original
    event, often half of a line, are not held. The charges follow the memory held: a message its bytes without
    its raw (at least `HELD_LINE_MIN`), any other line 5/3 of its bytes (it keeps its raw, about twice its bytes
    in objects). A file of at most 3/5 of the budget is held whole without counting (what a conversation-month
    usually is).
    """

    __slots__ = ("_cached", "_path", "_rest")

    def __init__(self, path: Path, cache_bytes: int | None = None) -> None:
        self._path = path
        budget = LINE_CACHE_BYTES if cache_bytes is None else cache_bytes
        self._cached: list[DossierLine] = []
        #: The byte offset of the first line not held (None: every line is held).
        self._rest: int | None = 0
        if path.stat().st_size * 5 <= budget * 3:
            self._cached = [_held(line) for line in self._stream(0)]
            self._rest = None
        elif budget > 0:
            self._rest = self._hold(budget)

    def _hold(self, budget: int) -> int | None:
        """Parse and hold the file's first lines, up to `budget` bytes of charges; the offset of the first line
        not held (None: all were)."""
        held = self._cached
        dumps = orjson.dumps
        charged = 0
        with self._path.open("rb") as fh:
            pos = 0
            for raw in fh:
                line = _parse_line(raw)
                ev = line.event
                if ev is not None and ev.kind is Kind.MESSAGE:
                    charged += max(len(raw) - len(dumps(ev.raw)), HELD_LINE_MIN)
                    _SET_RAW(ev, _NO_RAW)
                else:
                    charged += len(raw) * 5 // 3
                if charged > budget:
                    return pos
                pos += len(raw)
                held.append(line)
        return None

    def _stream(self, offset: int) -> Iterator[DossierLine]:
        with self._path.open("rb") as fh:
            if offset:
                fh.seek(offset)
            loads, event, line = orjson.loads, event_of, tuple.__new__
            for raw in fh:
                d = loads(raw)
                if type(d) is dict and d.get("withheld") is None:  # `DossierLine.parse`, its common case inline
                    yield line(DossierLine, (d["seq"], event(d["event"]), None))
                else:
                    yield DossierLine.parse(raw)

    def __iter__(self) -> Iterator[DossierLine]:
        if self._rest is None:
            return iter(self._cached)
        return itertools.chain(self._cached, self._stream(self._rest))


def _held(line: DossierLine) -> DossierLine:
    """`line` as `DossierLines` holds it: a message without its `raw`."""
    ev = line.event
    if ev is not None and ev.kind is Kind.MESSAGE and ev.raw:
        _SET_RAW(ev, _NO_RAW)
    return line


def _parse_line(raw: bytes) -> DossierLine:
    """`DossierLine.parse(raw)`, its common case inline (as `DossierLines._stream`)."""
    d = orjson.loads(raw)
    if type(d) is dict and d.get("withheld") is None:
        return tuple.__new__(DossierLine, (d["seq"], event_of(d["event"]), None))
    return DossierLine.parse(raw)


def _entries(lines: DossierLines, state: DossierState) -> Iterator[TranscriptEntry]:
    media, entry = state.media, tuple.__new__  # TranscriptEntry(seq, event, withheld, media), without its __new__
    for seq, event, withheld in lines:
        yield entry(TranscriptEntry, (seq, event, withheld, media))


def _first_pass(lines: DossierLines, state: DossierState) -> tuple[DossierSummary, Lookahead]:
    """One pass over the dossier before its transcript: the participants, MDTO events, withheld count and own
    dates (the title names the participants), and the transcript's lookahead (polls, edits, participants;
    tombstones skipped). One pass, not two: a dossier larger than `LINE_CACHE_BYTES` is parsed once per pass.

    What `DossierSummary.add` and `Lookahead.of(events, state.edited.keys())` make of the events, in one loop;
    a message relating to nothing, once the month's first message is in (the common case), is taken inline by
    what those two do for it: its sender (with a Signal profile name) among the senders and participants, its
    own time in the dates, the event it replies to quoted, and its sender kept if an edit names it. Every other
    event goes through `add` and `_observe`. A property test pins that both give the same objects."""
    summary = DossierSummary()
    ahead = Lookahead(checks_edits=True)
    targets = state.edited.keys()
    senders: dict[str, str | None] = {}
    edits: list[Event] = []
    message, edit = Kind.MESSAGE, Kind.EDIT
    people, participants, quoted = summary.senders, ahead.participants, ahead.quoted
    created = False  # summary.created, read again after each event `add` takes
    for line in lines:
        ev = line.event
        if ev is None:
            summary.withheld_count += 1
            continue
        if ev.kind is message and ev.relates_to is None and created:
            sender, c = ev.sender, ev.content
            if sender is not None:
                people.add((ev.source, sender))
                name = c.get("sender_name")
                participants.add(sender, name if isinstance(name, str) else None)
            sent, received = ev.sent_at, ev.received_at
            own = sent if sent is not None and sent <= received else received  # dossier._own_time
            if own < summary.first_ms:  # type: ignore[operator]  # set by the month's first message
                summary.first_ms = own
            if own > summary.last_ms:  # type: ignore[operator]
                summary.last_ms = own
            if isinstance(reply := c.get("reply_to"), str):
                quoted.add(reply)
        else:
            summary.add(ev)
            created = summary.created
            ahead._observe(ev)
            if ev.kind == edit and ev.relates_to is not None:
                edits.append(ev)
        if ev.event_id in targets:
            senders[ev.event_id] = ev.sender
    ahead.settle(senders, edits)
    return summary, ahead


def dossier_name(room: str | None, participants: Sequence[mdto.Participant], month: Month) -> str:
    """What people call a conversation-month: its room name, who took part, the month."""
    names = [p.display_name or p.sender_id for p in participants]
    who = ", ".join(names[:NAMED_PARTICIPANTS])
    if len(names) > NAMED_PARTICIPANTS:
        who += f" en {len(names) - NAMED_PARTICIPANTS} anderen"
    if room and who:
        return f"{room} (chat met {who}), {month_nl(month)}"
    if room == LIVENESS_NAME:
        return f"{room}, {month_nl(month)}"
    if room:
        return f"{room} (chat), {month_nl(month)}"
    return f"Chat met {who or 'onbekenden'}, {month_nl(month)}"


def conversation_links(state: DossierState, directory: Sequence[tuple[str, str, str]]) -> dict[str, str]:
    """Conversation id -> href (relative to `state`'s transcript) of the other dossiers of the same source in
    this package (`directory`: source, conversation, folder of each): what a room upgrade in `state` links to."""
    return {
        conversation: relative_link(f"{folder}/transcript.html", state.folder)
        for source, conversation, folder in directory
        if source == state.source and conversation != state.conversation
    }


def relative_link(target: str, start: str) -> str:
    """`posixpath.relpath(target, start)` for relative paths, without its filesystem calls when `target` is under
    a sibling of `start` (every dossier folder is `<serie>/<name>`: the links of n dossiers cost n^2 of these)."""
    t, f = target.split("/"), start.split("/")
    up = len(f) - 1
    if all(p not in ("", ".", "..") for p in (*t, *f)) and len(t) > up and t[:up] == f[:up] and t[up] != f[up]:
        return "/".join(("..", *t[up:]))
    return posixpath.relpath(target, start)


def _render_dossier(
    builder: PackageSink,
    params: RenderParams,
    serie: mdto.Ref,
    state: DossierState,
    provenance: Provenance,
    interim: bool,
    links: dict[str, str],
) -> tuple[mdto.Ref, Coverage]:
    month, org, sealed_ms = params.month, params.organisation, provenance.sealed_ms
    kenmerk = f"{serie.kenmerk}:{state.source}:{state.conversation}:{month}"
    lines = DossierLines(builder.data_path(state.events_rel))
    summary, ahead = _first_pass(lines, state)
    participants = summary.participants()
    naam = dossier_name(state.name, participants, month)
    dates = Coverage(
        None if summary.first_ms is None else local_date(summary.first_ms, params.timezone),
        None if summary.last_ms is None else local_date(summary.last_ms, params.timezone),
    )
    ref = mdto.Ref(naam, kenmerk, BRON)
    transcript_rel = f"{state.folder}/transcript.html"
    out = builder.open(transcript_rel)
    with out:
        write_transcript(
            out,  # type: ignore[arg-type]
            title=naam,
            conversation=state.conversation,
            month=str(month),
            entries=_entries(lines, state),
            edited_ids=state.edited,
            deleted_ids=state.deleted,
            lookahead=ahead,
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
        builder.write(full + SIDECAR, mdto.bestand_xml(info, xsd_href(full + SIDECAR)))
        file_refs.append(file_ref)
    cover = None if dates.first is None or dates.last is None else (dates.first, dates.last)
    dossier = mdto.DossierInfo(
        kenmerk=kenmerk,
        bron=BRON,
        naam=naam,
        month=str(month),
        organisation=org,
        serie=serie,
        participants=participants,
        events=summary.events(sealed_ms, interim=interim),
        files=tuple(file_refs),
        omschrijving=(
            f"Chatgesprek {state.conversation} ({state.source}): records van {month_nl(month)}"
            + (" tot nu toe (tussentijds)" if interim else "")
            + f", {state.records} records; berichten verstuurd {dates.text()}"
        ),
        withheld_count=summary.withheld_count,
        coverage=cover,
    )
    rel = f"{state.folder}.MDTO.xml"
    builder.write(rel, mdto.dossier_xml(dossier, xsd_href(rel)))
    return ref, dates

"""What a package's readable files are made of, as functions of proven records (pure; shared by both sides).

`snapshot` and `verify-package` run this same code: the writer on records it
decrypted from the log, the verifier on the record lines it proved against the
signed leaves. So every file a person reads (record lines with their `files`
and tombstones, folder and file names, transcripts, MDTO, pakbon, range.json,
bag-info.txt, LEESMIJ.txt) is re-derived by the verifier and compared byte for
byte with the package.

Inputs that are not records are the render parameters (`RenderParams`:
organisation, time zone, log id, month), carried in `proof/package.json`.
They are declared by whoever made the package, not proven: they are labels.
What the officials wrote, the withhold decisions and the range are proven.
Two values are derived from signed data: the status ("closed month" when the
end checkpoint was signed at or after the month's end, or when
`proof/closing.json` shows the first record after the range was appended after
it; else "open month, interim") and the sealing time (the end checkpoint's
timestamp).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import orjson

from bridge.archive import leesmij, proof
from bridge.archive import range as ranges
from bridge.archive.gaps import LIVENESS_SOURCE, Listing
from bridge.archive.mdto import Organisation
from bridge.archive.names import safe_name, slug
from bridge.errors import UsageError
from bridge.events import SIGNAL, Attachment, Event, Kind, canonical_json
from bridge.policy import Withheld, withheld_for

STATUS_CLOSED = "closed month"
STATUS_INTERIM = "open month, interim"
MEDIA_NAME_BYTES = 200
PARAMS_VERSION = 1
FOLDER_HASH_HEX = 10


@dataclass(frozen=True)
class RenderParams:
    """Declared (not proven) inputs of the renderers; `proof/package.json`."""

    organisation: Organisation
    timezone: str
    log_id: str  # hex
    month: ranges.Month

    def to_json(self) -> bytes:
        o = self.organisation
        return proof.pretty_json(
            {
                "v": PARAMS_VERSION,
                "declared_not_proven": "labels for the renderers; the records and the range are proven",
                "log_id": self.log_id,
                "month": str(self.month),
                "timezone": self.timezone,
                "organisation": {
                    "name": o.name,
                    "creator_id": o.creator_id,
                    "appraisal": o.appraisal,
                    "retention_years": o.retention_years,
                },
            }
        )

    @classmethod
    def parse(cls, data: bytes) -> RenderParams:
        """Raises ValueError for anything but what `to_json` writes (checked by writing it back)."""
        d = orjson.loads(data)
        if not isinstance(d, dict) or not isinstance(d.get("organisation"), dict):
            raise ValueError("package.json must be an object with an organisation")
        o = d["organisation"]
        retention = o.get("retention_years")
        if retention is not None and (isinstance(retention, bool) or not isinstance(retention, int)):
            raise ValueError("organisation.retention_years must be an integer or null")
        fields = (o.get("name"), o.get("creator_id"), d.get("timezone"), d.get("log_id"), d.get("month"))
        if not all(isinstance(f, str) for f in fields) or o.get("appraisal") not in ("B", "V", "N"):
            raise ValueError("package.json: a field is missing or has the wrong type")
        try:
            month = ranges.parse_month(str(d["month"]))
        except UsageError:  # a usage error on the command line, a damaged package here
            raise ValueError("package.json: month is not YYYY-MM") from None
        org = Organisation(str(o["name"]), str(o["creator_id"]), o["appraisal"], retention)
        params = cls(org, str(d["timezone"]), str(d["log_id"]), month)
        if params.to_json() != data:
            raise ValueError("package.json is not in the form the package writer gives")
        return params

    @property
    def serie(self) -> str:
        return f"chatarchief-{self.log_id}"


def status_of(sealed_ms: int, win: ranges.Window, closed_later: bool = False) -> str:
    """Closed if the end checkpoint was signed once the month was over, or a closing proof shows it
    (`proof/closing.json`: the first record after the range was appended after the month's end)."""
    return STATUS_CLOSED if sealed_ms >= win.end_ms or closed_later else STATUS_INTERIM


def package_name(log_id: bytes | str, month: ranges.Month, interim: bool = False) -> str:
    hexid = log_id if isinstance(log_id, str) else log_id.hex()
    return f"chatarchief-{hexid[:8]}-{month}" + ("-interim" if interim else "")


def local_date(ms: int, timezone: str) -> date:
    return datetime.fromtimestamp(ms / 1000, ranges.zone(timezone)).date()


def range_json(win: ranges.Window, start: int, end: int, status: str) -> bytes:
    return proof.pretty_json(
        {
            "month": str(win.month),
            "timezone": win.timezone,
            "month_start_ms": win.start_ms,
            "month_end_ms": win.end_ms,
            "start": start,
            "end": end,
            "status": status,
            "rule": "start/end = first record whose appended_ms >= the month's/next month's first instant",
        }
    )


def range_text(start: int, end: int) -> str:
    """The record range of a package, written one way everywhere (bag-info, LEESMIJ, MDTO, pakbon, CLI):
    `0..36 (37 records)`, both ends included; `none (0 records)` for an empty range."""
    if end <= start:
        return "none (0 records)"
    return f"{start}..{end - 1} ({end - start} records)"


def bagged_ms(sealed_ms: int, closed_ms: int | None) -> int:
    """The time a package's content was sealed: the newest signed checkpoint it holds (the closing checkpoint
    if there is one, else the end checkpoint). Bagging-Date is its day: true (the bag cannot be older than
    the checkpoint that fixes its content) and re-derivable from the package alone (no "now")."""
    return closed_ms if closed_ms is not None else sealed_ms


@dataclass(frozen=True)
class Coverage:
    """The dates of the messages themselves (their own send times, not append times) in a package or dossier."""

    first: date | None = None
    last: date | None = None

    def text(self) -> str:
        if self.first is None or self.last is None:
            return "none"
        return self.first.isoformat() if self.first == self.last else f"{self.first}..{self.last}"

    def join(self, other: Coverage) -> Coverage:
        firsts = [d for d in (self.first, other.first) if d is not None]
        lasts = [d for d in (self.last, other.last) if d is not None]
        return Coverage(min(firsts, default=None), max(lasts, default=None))


def bag_info(
    params: RenderParams,
    key_name: str,
    win: ranges.Window,
    start: int,
    end: int,
    dossiers: int,
    others: int,
    sealed_ms: int,
    status: str,
    closed_ms: int | None = None,
    coverage: Coverage | None = None,
) -> list[tuple[str, str]]:
    """bag-info.txt lines (without Payload-Oxum, which the bag adds)."""
    interim = status == STATUS_INTERIM
    bagging = local_date(bagged_ms(sealed_ms, closed_ms), params.timezone)
    what = f"the month so far (interim, up to {bagging})" if interim else "the whole month"
    return [
        ("Bag-Software-Agent", "chatarchief"),
        ("Bagging-Date", bagging.isoformat()),
        ("Source-Organization", params.organisation.name),
        ("External-Identifier", package_name(params.log_id, params.month, interim)),
        (
            "External-Description",
            f"Chatarchief package of {params.month} ({params.timezone}), {what}: records"
            f" {range_text(start, end)}, {dossiers} conversations, {others} other records",
        ),
        ("Chatarchief-Month", str(params.month)),
        ("Chatarchief-Range", range_text(start, end)),
        ("Chatarchief-Status", status),
        ("Chatarchief-Message-Dates", (coverage or Coverage()).text()),
        ("Chatarchief-Log", key_name),
    ]


# -- dossiers and their record lines ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MediaFile:
    """A media file of a dossier: its path relative to the dossier folder, and what the event says it is."""

    rel: str
    media_type: str | None
    filename: str | None


@dataclass
class DossierState:
    """What the record pass knows about one conversation-month (bounded: no per-event state)."""

    source: str
    conversation: str
    folder: str  # relative to data/
    name: str | None = None  # the room's name (last m.room.name of the month)
    sha: Any = field(default_factory=hashlib.sha256)
    size: int = 0
    records: int = 0
    edited: dict[str, str] = field(default_factory=dict)
    deleted: dict[str, str | None] = field(default_factory=dict)
    media: dict[str, str] = field(default_factory=dict)  # blob id -> path relative to the folder
    media_info: list[MediaFile] = field(default_factory=list)

    @property
    def events_rel(self) -> str:
        return f"{self.folder}/events.jsonl"


def conversation_hash(source: str, conversation: str) -> str:
    """A short, stable hash of a conversation: what keeps folder names of same-named rooms apart."""
    return hashlib.sha256(f"{source}\n{conversation}".encode("utf-8", "surrogatepass")).hexdigest()[:FOLDER_HASH_HEX]


def dossier_folder(serie: str, source: str, conversation: str, month: ranges.Month, name: str | None) -> str:
    """A dossier's folder: `<serie>/<room name as ASCII>-<month>-<hash>` (`chat-...` for a room without a name).

    Only letters, digits and `-`, never starting with `-`: safe to copy into a shell, no raw `!room:server`
    ids; the hash of (source, conversation) keeps rooms with the same name apart. `name` is the room's
    last name in the month (`DossierState.name`), so the folder is known once the month's records are read.
    """
    return f"{serie}/{slug(name or '') or 'chat'}-{month}-{conversation_hash(source, conversation)}"


#: The name of the dossier of the archiver's own records (heartbeats, restart gaps: `bridge.liveness`).
LIVENESS_NAME = "Chatarchief hartslagen en gaten"


def pending_folder(serie: str, source: str, conversation: str) -> str:
    """Where the writer puts a dossier's files while its name is not known yet (renamed before rendering)."""
    return f"{serie}/.pending-{conversation_hash(source, conversation)}"


def new_dossier(serie: str, source: str, conversation: str, folder: str | None = None) -> DossierState:
    """A dossier being read: in `folder` (verify-package: the folder it reads), else in its pending folder."""
    return DossierState(source, conversation, folder or pending_folder(serie, source, conversation))


def _text(value: object) -> str | None:
    """A field of a stored event as text; the payload is proven, not validated, so check the type."""
    return value if isinstance(value, str) else None


#: File extensions for media types, for files whose name has none (Signal attachments, nameless Matrix media):
#: a fixed table, not the host's mime.types, so a package's names are the same wherever it is re-derived.
EXTENSIONS: dict[str, str] = {
    "image/jpeg": ".jpg", "image/png": ".png", "image/gif": ".gif", "image/webp": ".webp",
    "image/heic": ".heic", "image/heif": ".heif", "image/tiff": ".tif", "image/svg+xml": ".svg",
    "video/mp4": ".mp4", "video/quicktime": ".mov", "video/webm": ".webm", "video/3gpp": ".3gp",
    "audio/ogg": ".ogg", "audio/mpeg": ".mp3", "audio/mp4": ".m4a", "audio/aac": ".aac", "audio/wav": ".wav",
    "audio/webm": ".weba", "application/pdf": ".pdf", "text/plain": ".txt", "text/csv": ".csv",
    "text/vcard": ".vcf", "text/x-vcard": ".vcf", "application/zip": ".zip", "application/json": ".json",
    "application/msword": ".doc", "application/vnd.ms-excel": ".xls", "application/vnd.ms-powerpoint": ".ppt",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ".xlsx",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": ".pptx",
    "application/vnd.oasis.opendocument.text": ".odt", "application/vnd.oasis.opendocument.spreadsheet": ".ods",
}  # fmt: skip


def media_rel(seq: int, att: Attachment) -> str:
    """Where an attachment's file goes in its dossier: `media/<seq>-<safe file name>`, with the extension of its
    media type when the name has none (so an archivist's tools open it)."""
    blob_id = str(att.blob_id)
    name = _text(att.filename) or blob_id[:16]
    media_type = _text(att.media_type)
    ext = EXTENSIONS.get(media_type.split(";")[0].strip().lower()) if media_type else None
    if ext is not None and "." not in name.rsplit("/", 1)[-1].lstrip("."):
        name += ext
    return f"media/{seq}-{safe_name(name, MEDIA_NAME_BYTES)}"


def stored_attachments(event: Event) -> list[Attachment]:
    """The attachments of an event the log says were stored (status "stored" with a blob id)."""
    return [att for att in event.attachments if att.status == "stored" and isinstance(att.blob_id, str)]


def tombstone(w: Withheld) -> dict[str, Any]:
    return {"reason": w.reason, "by": w.by, "at_ms": w.at_ms, "decision_seq": w.decision_seq}


#: (seq, attachment, path relative to data/) -> True if the file is in the package, False if declared missing.
MediaHook = Callable[[int, Attachment, str], bool]


def event_line(
    seq: int,
    header: bytes,
    salt: bytes,
    payload: bytes,
    ct_hash: bytes,
    commit: bytes,
    event: Event,
    state: DossierState,
    withheld: Mapping[tuple[str, str, str], Withheld],
    media: MediaHook,
    listing: Listing | None = None,
) -> bytes:
    """The line of an event in its dossier's events.jsonl; updates `state` (edits, deletions, name, media)
    and `listing` (the gaps and heartbeats of `proof/liveness.json`, from events the package shows).

    `payload` is the event's stored bytes, `event` the same decoded: the line carries the bytes.
    """
    hidden = withheld_for(event, withheld) if withheld else None
    if hidden is not None:
        if listing is not None:
            listing.withhold(seq, str(event.source), str(event.conversation), hidden.decision_seq)
        return proof.sealed_line(seq, header, commit, ct_hash, tombstone(hidden))
    if listing is not None:
        listing.add(seq, event)
    target = _text(event.relates_to)
    if target is not None:
        if event.kind == Kind.EDIT:
            state.edited[target] = str(event.event_id)
        elif event.kind == Kind.DELETION:
            state.deleted[target] = _text(event.sender)
    if (event.kind == Kind.STATE or event.source == SIGNAL) and (name := _room_name(event)):
        state.name = name
    elif event.source == LIVENESS_SOURCE:
        state.name = LIVENESS_NAME  # the archiver's own dossier, not an unnamed chat
    files: dict[str, str] = {}
    for att in stored_attachments(event):
        blob_id = str(att.blob_id)
        rel = state.media.get(blob_id)
        if rel is None:
            rel = media_rel(seq, att)
            if not media(seq, att, f"{state.folder}/{rel}"):
                continue
            state.media[blob_id] = rel
            state.media_info.append(MediaFile(rel, _text(att.media_type), _text(att.filename)))
        files[blob_id] = rel
    return proof.content_line("event", seq, header, salt, payload, ct_hash, files)


def _room_name(event: Event) -> str | None:
    """The name an `m.room.name` state event sets, or the group name a Signal group event carries (None for
    other events, or an empty name)."""
    content = event.content
    if event.source == SIGNAL and isinstance(content, dict) and event.conversation.startswith("group:"):
        return _text(content.get("group_name")) or None
    if not isinstance(content, dict) or content.get("type") != "m.room.name":
        return None
    inner = content.get("content")
    return _text(inner.get("name") if isinstance(inner, dict) else None) or None


#: Public names of the tests `scan.is_plain` shares with `event_line`.
text_of = _text
room_name = _room_name


def missing_line(seq: int, blob_id: str, rel: str) -> bytes:
    """A line of proof/missing-media.jsonl: a stored attachment whose blob was gone at snapshot time."""
    return canonical_json({"blob_id": blob_id, "path": rel, "seq": seq}) + b"\n"


@dataclass(frozen=True)
class Tags:
    """The tag files a package's records, parameters and checkpoints give: bag-info lines and the other files."""

    info: list[tuple[str, str]]
    files: dict[str, bytes]


def tag_files(
    params: RenderParams,
    key_name: str,
    win: ranges.Window,
    span: tuple[int, int],
    dossiers: Sequence[tuple[str, str]],
    others: int,
    sealed: tuple[int, int | None],
    status: str,
    coverage: Coverage,
    *,
    liveness: bool = False,
    witnessed: bool = False,
    signing_keys: bool = False,
) -> Tags:
    """bag-info.txt lines, LEESMIJ.txt and `documentatie/` (see `leesmij.py`); `dossiers` = (folder, name),
    `sealed` = (end checkpoint ms, closing checkpoint ms or None)."""
    start, end = span
    sealed_ms, closed_ms = sealed
    interim = status == STATUS_INTERIM
    info = bag_info(params, key_name, win, start, end, len(dossiers), others, sealed_ms, status, closed_ms, coverage)
    text = leesmij.leesmij(
        leesmij.LeesmijInfo(
            package=package_name(params.log_id, params.month, interim),
            organisation=params.organisation.name,
            month=str(params.month),
            timezone=params.timezone,
            records=range_text(start, end),
            message_dates=coverage.text(),
            key_name=key_name,
            interim=interim,
            bagging_date=local_date(bagged_ms(sealed_ms, closed_ms), params.timezone).isoformat(),
            dossiers=dossiers,
            liveness=liveness,
            witnessed=witnessed,
            signing_keys=signing_keys,
        )
    )
    files = {
        "LEESMIJ.txt": text,
        leesmij.XSD_PATH: leesmij.xsd_bytes(),
        leesmij.NOTICE_PATH: leesmij.notice_bytes(),
        leesmij.BEGRIPPEN_PATH: leesmij.begrippenlijst_csv(),
        leesmij.FORMATEN_PATH: leesmij.formaten(),
    }
    return Tags(info, files)

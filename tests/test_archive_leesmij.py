"""A package an archivist understands without this software: LEESMIJ.txt, documentatie/, published begrippen,
names people know, metadata that agrees with itself, and the interim package of an official leaving office."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree
from typer.testing import CliRunner

from bridge.archive import package as package_module
from bridge.archive.leesmij import BEGRIPPEN_PATH, XSD_PATH
from bridge.archive.names import slug
from bridge.archive.package import snapshot
from bridge.archive.range import Month
from bridge.archive.verify_package import PackageIntegrityError, verify_package
from bridge.cli import app
from bridge.errors import UsageError
from bridge.log import schema as schema_module
from tests.conftest import LogDir
from tests.support.archive_log import (
    OPTIONS,
    append,
    archive_log_two_months,
    create_archive_log,
    dossier_dir,
    event,
    ms,
    seal_for,
)
from tests.test_archive_package import sealed_day
from tests.test_archive_verify import copy

M = "https://www.nationaalarchief.nl/mdto"
NS = {"m": M}
#: The openness list (Archiefwet 1995) as an archive's pre-ingest validation checks it: code -> label, from the
#: Noord-Hollands Archief's MDTO schematron (noord-hollandsarchief/preingest-xslweb, mdtovalidation/sch/mdto.sch).
OPENBAARHEID = {
    "Openbaarheid/AW1995/BeperktOpenbaar-levenssfeer/1.0": (
        "beperkt openbaar; eerbiediging van de persoonlijke levenssfeer (Archiefwet 1995)"
    ),
    "Openbaarheid/AW1995/BeperktOpenbaar-staatsbelang/1.0": "beperkt openbaar; staatsbelang (Archiefwet 1995)",
    "Openbaarheid/AW1995/Openbaar/1.0": "openbaar (Archiefwet 1995)",
    "Openbaarheid/AW1995/NietBeoordeeld/1.0": "openbaarheid niet beoordeeld (Archiefwet 1995)",
}


@pytest.fixture(scope="module")
def january(tmp_path_factory: pytest.TempPathFactory) -> tuple[LogDir, Path]:
    tmp = tmp_path_factory.mktemp("leesmij")
    log = archive_log_two_months(tmp)
    out = tmp / "pkg" / "jan"
    snapshot(log.data_dir, log.keys, Month(2024, 1), out, OPTIONS, seal=seal_for(log))
    return log, out


def _key(log: LogDir) -> tuple[str, object]:
    return (log.keys.key_name, log.keys.public_key)


def _rebag_all(root: Path) -> None:
    """A careful attacker: payload manifest, Payload-Oxum and a tag manifest over every tag file rewritten."""
    files = sorted((p for p in (root / "data").rglob("*") if p.is_file()), key=lambda p: str(p.relative_to(root)))
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(root)}\n" for p in files]
    (root / "manifest-sha256.txt").write_text("".join(lines))
    info = [ln for ln in (root / "bag-info.txt").read_text().splitlines() if not ln.startswith("Payload-Oxum")]
    info.append(f"Payload-Oxum: {sum(p.stat().st_size for p in files)}.{len(files)}")
    (root / "bag-info.txt").write_text("\n".join(info) + "\n")
    tags = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not p.relative_to(root).as_posix().startswith("data/") and p.name != "tagmanifest-sha256.txt"
    )
    (root / "tagmanifest-sha256.txt").write_text(
        "".join(f"{hashlib.sha256((root / t).read_bytes()).hexdigest()}  {t}\n" for t in tags)
    )


# -- 1. a package opened with standard tools, following its LEESMIJ.txt -------------------------------------


def test_package_opens_with_standard_tools_following_its_leesmij(january: tuple[LogDir, Path]) -> None:
    """Each check LEESMIJ.txt gives under "Controleren" passes when run as written, in the package folder:
    `python3 -m bagit --validate .`, both `sha256sum -c`, and the XSD check against the shipped schema
    (xmllint when installed; else the same schema file through lxml, which is libxml2 as xmllint is)."""
    _, pkg = january
    text = (pkg / "LEESMIJ.txt").read_text("utf-8")
    block = text.split("Controleren (in deze map)\n", 1)[1]
    commands = [ln.strip() for ln in block.splitlines() if ln.startswith("  ") and not ln.startswith("      ")]
    assert commands[:3] == [
        "python3 -m bagit --validate .",
        "sha256sum -c manifest-sha256.txt",
        "sha256sum -c tagmanifest-sha256.txt",
    ]
    assert commands[3].startswith(f"xmllint --noout --schema {XSD_PATH} ")
    assert commands[4].startswith("chatarchief verify-package . --public-key")
    bagit_run = subprocess.run(
        [sys.executable, "-m", "bagit", "--validate", "."], cwd=pkg, capture_output=True, text=True
    )
    assert bagit_run.returncode == 0, bagit_run.stderr
    assert "is valid" in bagit_run.stderr
    for manifest in ("manifest-sha256.txt", "tagmanifest-sha256.txt"):
        done = subprocess.run(["sha256sum", "-c", "--strict", manifest], cwd=pkg, capture_output=True, text=True)
        assert done.returncode == 0 and "FAILED" not in done.stdout, done.stdout + done.stderr
    mdto_files = sorted((pkg / "data").rglob("*.MDTO.xml"))
    assert len(mdto_files) >= 5
    if shutil.which("xmllint"):
        done = subprocess.run(["bash", "-c", commands[3]], cwd=pkg, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    schema = etree.XMLSchema(etree.parse(str(pkg / XSD_PATH)))
    for p in mdto_files:
        doc = etree.parse(str(p))
        assert schema.validate(doc), (p, schema.error_log.last_error)
        # the schemaLocation each file names is the shipped XSD, relative to the file
        location = doc.getroot().get("{http://www.w3.org/2001/XMLSchema-instance}schemaLocation").split()
        assert location[0] == M and (p.parent / location[1]).resolve() == (pkg / XSD_PATH).resolve()


def test_documentation_files_say_where_things_are(january: tuple[LogDir, Path]) -> None:
    """LEESMIJ names each conversation's folder with its name, the record range and the messages' own dates;
    formaten.txt describes the record lines; the XSD is the Nationaal Archief's copy (pinned hash)."""
    _, pkg = january
    text = (pkg / "LEESMIJ.txt").read_text("utf-8")
    crisis = dossier_dir(pkg, "alpha")
    assert f"data/{crisis.relative_to(pkg / 'data').as_posix()}/  Crisisoverleg (chat met" in text
    assert "Records 0..12 (13 records) van het log" in text
    assert "Verzenddatums van de berichten zelf: 2023-11-14." in text
    formats = (pkg / "documentatie/formaten.txt").read_text("utf-8")
    for word in ("events.jsonl", "sent_at", "withheld", "leaves.txt", "pakbon"):
        assert word in formats
    sha = hashlib.sha256((pkg / XSD_PATH).read_bytes()).hexdigest()
    assert sha == "048d745a17f479995f14c938d342b2f13382072d0fdf1f1b28113126df715648"
    assert "CC BY-SA 4.0" in (pkg / "documentatie/MDTO-XML1.0.1.NOTICE").read_text()


# -- published begrippen, as an archive's pre-ingest validation checks them ---------------------------------


def test_mdto_passes_the_pre_ingest_rules_of_an_archive(january: tuple[LogDir, Path]) -> None:
    """The Noord-Hollands Archief's MDTO schematron rules, as XPath: one aggregatieniveau (Serie/Dossier...),
    exactly one beperkingGebruik whose begripCode/begripLabel pair is on the Archiefwet 1995 list, checksum
    algorithm SHA-256. Our own begrippen carry a code that is in the shipped list, which the MDTO names by path."""
    _, pkg = january
    own = (pkg / BEGRIPPEN_PATH).read_text("utf-8")
    for p in sorted((pkg / "data").rglob("*.MDTO.xml")):
        doc = etree.parse(str(p))
        for io in doc.iterfind("m:informatieobject", NS):
            assert io.xpath("count(m:aggregatieniveau)", namespaces=NS) == 1
            assert io.findtext("m:aggregatieniveau/m:begripLabel", namespaces=NS) in ("Serie", "Dossier")
            assert io.xpath("count(m:beperkingGebruik)", namespaces=NS) == 1
            code = io.findtext("m:beperkingGebruik/m:beperkingGebruikType/m:begripCode", namespaces=NS)
            label = io.findtext("m:beperkingGebruik/m:beperkingGebruikType/m:begripLabel", namespaces=NS)
            assert OPENBAARHEID.get(code or "") == label
        for b in doc.iterfind("m:bestand", NS):
            assert re.fullmatch(
                r"SHA-(224|256|384|512)",
                b.findtext("m:checksum/m:checksumAlgoritme/m:begripLabel", namespaces=NS) or "",
            )
        for begrip in doc.iterfind(".//m:begripBegrippenlijst", NS):
            if begrip.findtext("m:verwijzingNaam", namespaces=NS) == "Begrippenlijst Chatarchief":
                path = begrip.findtext("m:verwijzingIdentificatie/m:identificatieKenmerk", namespaces=NS)
                assert path == BEGRIPPEN_PATH and (pkg / path).is_file()
                parent = begrip.getparent()
                pair = (parent.findtext("m:begripCode", namespaces=NS), parent.findtext("m:begripLabel", namespaces=NS))
                assert f'"{pair[0]}","{pair[1]}"' in own


def test_record_lines_are_plain_text_by_pronom_and_no_made_up_namespace(january: tuple[LogDir, Path]) -> None:
    """events.jsonl is PRONOM x-fmt/111 "Plain Text File" (JSON Lines has no PUID), never "Onbekend formaat";
    no XML file declares a `.invalid` namespace (the pakbon has none: no pakbon namespace is published)."""
    _, pkg = january
    sidecar = etree.parse(str(dossier_dir(pkg, "alpha") / "events.jsonl.bestand.MDTO.xml"))
    assert sidecar.findtext(".//m:bestandsformaat/m:begripCode", namespaces=NS) == "x-fmt/111"
    assert sidecar.findtext(".//m:bestandsformaat/m:begripLabel", namespaces=NS) == "Plain Text File"
    for p in sorted((pkg / "data").rglob("*.xml")):
        assert b"Onbekend formaat" not in p.read_bytes()
        for el in etree.parse(str(p)).iter():
            assert all(".invalid" not in (uri or "") for uri in el.nsmap.values()), p
    assert etree.parse(str(pkg / "data/pakbon.xml")).getroot().tag == "pakbon"


# -- 2. names people know ---------------------------------------------------------------------------------


def test_series_dossiers_and_folders_have_names_people_know(january: tuple[LogDir, Path]) -> None:
    """Serie: the organisation. Dossier: the room name, who took part, the month. Folders: the room's name
    and a short hash, shell-safe (no `!` or `:` of a raw room id); an unnamed room is `chat-...`."""
    _, pkg = january
    serie = next((pkg / "data").glob("chatarchief-*.MDTO.xml"))
    assert etree.parse(str(serie)).findtext("m:informatieobject/m:naam", namespaces=NS) == (
        "Zakelijke chatberichten Ministerie van Tests"
    )
    crisis = dossier_dir(pkg, "alpha")
    assert re.fullmatch(r"Crisisoverleg-2024-01-[0-9a-f]{10}", crisis.name)
    assert re.fullmatch(r"chat-2024-01-[0-9a-f]{10}", dossier_dir(pkg, "beta").name)
    naam = etree.parse(str(crisis.with_name(crisis.name + ".MDTO.xml"))).findtext(
        "m:informatieobject/m:naam", namespaces=NS
    )
    assert naam == "Crisisoverleg (chat met @minister:example.org), januari 2024"
    for p in (pkg / "data").rglob("*"):
        if p.is_dir():
            assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", p.name), p


def test_a_renamed_dossier_folder_is_caught(january: tuple[LogDir, Path], tmp_path: Path) -> None:
    """A folder given another name (keeping its hash, so it still looks derived), with the manifests, MDTO
    and pakbon left to the re-derivation: the room name in its records gives another folder."""
    log, jan = january
    pkg = copy(jan, tmp_path)
    crisis = dossier_dir(pkg, "alpha")
    forged = crisis.with_name(crisis.name.replace("Crisisoverleg", "Vakantieplannen"))
    crisis.rename(forged)
    crisis.with_name(crisis.name + ".MDTO.xml").rename(forged.with_name(forged.name + ".MDTO.xml"))
    _rebag_all(pkg)
    with pytest.raises(PackageIntegrityError, match="room's name in its records gives the folder"):
        verify_package(pkg, _key(log))  # type: ignore[arg-type]


@given(st.text(max_size=80))
def test_slug_is_shell_safe_for_any_room_name(name: str) -> None:
    """Whatever a room is called (emoji, `!room:server`, `-rf`, RTL marks), the folder part is ASCII letters,
    digits and inner `-`, at most 60 bytes: it can be pasted into bash unquoted."""
    s = slug(name)
    assert re.fullmatch(r"([A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)?", s) and len(s) <= 60


# -- documentatie/ is re-derived like every other file ------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("begrippen", "begrippenlijst-chatarchief.csv is not the one"),
        ("added", "documentatie/ is not what a package holds"),
        ("leesmij", "LEESMIJ.txt is not the one"),
    ],
)
def test_edited_documentation_is_caught(
    january: tuple[LogDir, Path], tmp_path: Path, change: str, message: str
) -> None:
    """An edited begrippenlijst, a file slipped into documentatie/, or an edited LEESMIJ, with every manifest
    rebuilt to match: verify-package re-derives them and refuses (exit 1 on the command line)."""
    log, jan = january
    pkg = copy(jan, tmp_path)
    if change == "begrippen":
        p = pkg / BEGRIPPEN_PATH
        p.write_bytes(p.read_bytes().replace(b"Deelnemer", b"Toeschouwer"))
    elif change == "added":
        (pkg / "documentatie/extra-uitleg.txt").write_text("vertrouw ons maar\n")
    else:
        p = pkg / "LEESMIJ.txt"
        p.write_bytes(p.read_bytes().replace(b"uitslag 0 = intact", b"uitslag 1 = intact"))
    _rebag_all(pkg)
    with pytest.raises(PackageIntegrityError, match=re.escape(message)):
        verify_package(pkg, _key(log))  # type: ignore[arg-type]


# -- 3. metadata that agrees with itself, 4. the interim package ----------------------------------------------


def _mdto_text(pkg: Path) -> str:
    return "".join(p.read_text("utf-8") for p in sorted((pkg / "data").rglob("*.xml")))


def test_closed_month_metadata_agrees_with_itself(january: tuple[LogDir, Path]) -> None:
    """One range notation everywhere; Bagging-Date = the day of the newest checkpoint; dekkingInTijd = the
    messages' own dates (November 2023 here: sent then, appended in January), not the month's bounds."""
    _, pkg = january
    info = (pkg / "bag-info.txt").read_text()
    assert "Chatarchief-Range: 0..12 (13 records)" in info and "records 0..12 (13 records)," in info
    assert f"Bagging-Date: {sealed_day(pkg)}" in info
    assert "Chatarchief-Message-Dates: 2023-11-14" in info
    assert "records 0..12 (13 records) van het log" in (pkg / "data/pakbon.xml").read_text()
    crisis = dossier_dir(pkg, "alpha")
    doc = etree.parse(str(crisis.with_name(crisis.name + ".MDTO.xml")))
    assert doc.findtext(".//m:dekkingInTijdBegindatum", namespaces=NS) == "2023-11-14"
    assert doc.findtext(".//m:dekkingInTijdEinddatum", namespaces=NS) == "2023-11-14"
    assert "maand verzegeld" in _mdto_text(pkg) and "tussentijds" not in _mdto_text(pkg)


def test_interim_package_then_the_whole_month_extends_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An official leaves on 10 January: `interim=True` writes January so far, labelled interim (never "maand
    verzegeld", coverage not beyond its seal). After the month, the whole month's package verifies with
    `--previous` the interim one (same start, its records a prefix); February does not extend the interim."""
    log = create_archive_log(tmp_path)
    monkeypatch.setattr(schema_module, "now_ms", lambda: ms(2024, 1, 3))  # the checkpoint's signing clock
    append(log, monkeypatch, [(ms(2024, 1, 3), [event(1), event(2)])])
    monkeypatch.setattr(package_module, "now_ms", lambda: ms(2024, 1, 10))
    interim = snapshot(
        log.data_dir, log.keys, Month(2024, 1), tmp_path / "jan-interim", OPTIONS, seal=seal_for(log), interim=True
    )
    monkeypatch.undo()
    assert interim.status == "open month, interim" and (interim.start, interim.end) == (0, 4)
    info = (interim.path / "bag-info.txt").read_text()
    assert "Bagging-Date: 2024-01-03" in info and "-interim" in info and "Chatarchief-Range: 0..3 (4 records)" in info
    assert "maand verzegeld" not in _mdto_text(interim.path) and "tussentijds" in _mdto_text(interim.path)
    assert "TUSSENTIJDS PAKKET" in (interim.path / "LEESMIJ.txt").read_text()
    ends = [
        date.fromisoformat(e.text)
        for e in etree.parse(str(next((interim.path / "data").rglob("chat-*.MDTO.xml")))).iterfind(
            ".//m:dekkingInTijdEinddatum", NS
        )
    ]
    assert ends and all(e <= date(2024, 1, 3) for e in ends)
    verify_package(interim.path, _key(log))  # type: ignore[arg-type]

    append(log, monkeypatch, [(ms(2024, 1, 20), [event(3)]), (ms(2024, 2, 2), [event(4)])])
    monkeypatch.undo()
    whole = snapshot(log.data_dir, log.keys, Month(2024, 1), tmp_path / "jan", OPTIONS, seal=seal_for(log))
    assert whole.status == "closed month" and (whole.start, whole.end) == (0, 5)
    report = verify_package(whole.path, _key(log), previous=interim.path)  # type: ignore[arg-type]
    assert (report.start, report.end) == (0, 5)
    feb = snapshot(log.data_dir, log.keys, Month(2024, 2), tmp_path / "feb", OPTIONS, seal=seal_for(log))
    verify_package(feb.path, _key(log), previous=whole.path)  # type: ignore[arg-type]
    with pytest.raises(PackageIntegrityError, match="previous package ends at record 4, this one starts at 5"):
        verify_package(feb.path, _key(log), previous=interim.path)  # type: ignore[arg-type]


def test_interim_of_an_ended_month_is_refused(tmp_path: Path) -> None:
    """--interim is for the month under way: for a month that has ended it is a usage error (exit 2) that says
    to write the whole package; without --interim an open month's error points at --interim."""
    log = create_archive_log(tmp_path)
    with pytest.raises(UsageError, match="without --interim"):
        snapshot(log.data_dir, log.keys, Month(2024, 1), tmp_path / "x", OPTIONS, seal=seal_for(log), interim=True)
    today = date.today()
    with pytest.raises(UsageError, match="add --interim"):
        snapshot(log.data_dir, log.keys, Month(today.year, today.month), tmp_path / "y", OPTIONS, seal=seal_for(log))


def test_cli_snapshot_interim_writes_and_labels_the_month_so_far(tmp_path: Path) -> None:
    """`chatarchief snapshot --month <this month> --interim` exits 0 and says interim with the range written
    the one way; the same command for an ended month exits 2 with one line."""
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    config = tmp_path / "c.toml"
    config.write_text(
        '[organisation]\nname = "Ministerie van Testzaken"\narchive_creator_id = "mvtz"\n'
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\nkey_file = "{secrets / "k.key"}"\n'
    )
    runner = CliRunner()
    assert runner.invoke(app, ["init", "--config", str(config)]).exit_code == 0
    month = date.today().strftime("%Y-%m")
    done = runner.invoke(
        app, ["snapshot", "--config", str(config), "--month", month, "--interim", "--out", str(tmp_path / "pkg")]
    )
    assert done.exit_code == 0, done.output
    assert "interim: the month so far" in done.output and "records 0..1 (2 records)" in done.output
    refused = runner.invoke(
        app, ["snapshot", "--config", str(config), "--month", "2024-01", "--interim", "--out", str(tmp_path / "old")]
    )
    assert refused.exit_code == 2 and not (tmp_path / "old").exists()

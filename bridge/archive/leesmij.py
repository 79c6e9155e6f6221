"""The package's own documentation: LEESMIJ.txt and the `documentatie/` tag folder (pure: values in, bytes out).

An archivist must understand a package without this software or its repository,
so each package carries, as BagIt tag files (listed in tagmanifest-sha256.txt,
re-derived by verify-package like every other file):

* `LEESMIJ.txt`: what the package is, what is where, what is proven and what
  is declared, and how to check it with standard tools (bagit, sha256sum, an
  XSD validator) and with `chatarchief verify-package`;
* `documentatie/MDTO-XML1.0.1.xsd`: the Nationaal Archief's schema (every
  `*.MDTO.xml` points at it with a relative `xsi:schemaLocation`), with its
  attribution in `documentatie/MDTO-XML1.0.1.NOTICE`;
* `documentatie/begrippenlijst-chatarchief.csv`: the few concepts no published
  list has (the MDTO refers to it by name and path); published lists are used
  everywhere else (`mdto.py`);
* `documentatie/formaten.txt`: the record lines (events.jsonl, proof/*.jsonl),
  the proof files and the pakbon vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources

DOCS = "documentatie"
XSD_NAME = "MDTO-XML1.0.1.xsd"
XSD_PATH = f"{DOCS}/{XSD_NAME}"
NOTICE_PATH = f"{DOCS}/MDTO-XML1.0.1.NOTICE"
BEGRIPPEN_PATH = f"{DOCS}/begrippenlijst-chatarchief.csv"
FORMATEN_PATH = f"{DOCS}/formaten.txt"
#: The name under which the MDTO refers to our own list, and where the file is (from the package's folder).
BEGRIPPEN_NAME = "Begrippenlijst Chatarchief"
BEGRIPPEN_BRON = "pad in dit pakket"


@dataclass(frozen=True)
class OwnBegrip:
    code: str
    label: str
    used_for: str
    definition: str


#: Concepts for which no published begrippenlijst exists (see mdto.py for the published ones used).
OWN_BEGRIPPEN: tuple[OwnBegrip, ...] = (
    OwnBegrip(
        "Chatarchief/DekkingInTijd/Berichten/1.0",
        "Looptijd berichten",
        "dekkingInTijdType",
        "De eerste en laatste dag (Europe/Amsterdam) waarop een bericht in dit dossier is verstuurd, volgens de"
        " eigen verzendtijd van de berichten; achtergehouden berichten tellen niet mee.",
    ),
    OwnBegrip(
        "Chatarchief/Event/Wijziging/1.0",
        "Wijziging",
        "eventType",
        "Een deelnemer heeft een eerder bericht bewerkt; elke eerdere versie staat in het pakket.",
    ),
    OwnBegrip(
        "Chatarchief/Event/VerwijderingInChat/1.0",
        "Verwijdering in chat",
        "eventType",
        "Een deelnemer heeft een bericht in de chat verwijderd; het origineel staat in het pakket.",
    ),
    OwnBegrip(
        "Chatarchief/Event/Achterhouding/1.0",
        "Achterhouding",
        "eventType",
        "De inhoud van een gebeurtenis is achtergehouden na een beslissing (record in het pakket).",
    ),
    OwnBegrip(
        "Chatarchief/Relatie/Deelnemer/1.0",
        "Deelnemer",
        "betrokkeneTypeRelatie",
        "Iemand die in deze maand iets in het gesprek heeft gestuurd (niet achtergehouden).",
    ),
)


def code_of(label: str) -> str | None:
    """The begripCode of one of our own concepts."""
    return next((b.code for b in OWN_BEGRIPPEN if b.label == label), None)


def begrippenlijst_csv() -> bytes:
    def cell(text: str) -> str:
        return '"' + text.replace('"', '""') + '"'

    rows = ["begripCode,begripLabel,gebruiktVoor,definitie"]
    rows += [",".join(cell(t) for t in (b.code, b.label, b.used_for, b.definition)) for b in OWN_BEGRIPPEN]
    return ("\r\n".join(rows) + "\r\n").encode("utf-8")  # RFC 4180 line ends


@cache
def xsd_bytes() -> bytes:
    return resources.files("bridge.archive").joinpath(f"schema/{XSD_NAME}").read_bytes()


@cache
def notice_bytes() -> bytes:
    return resources.files("bridge.archive").joinpath("schema/NOTICE").read_bytes()


FORMATEN = """\
Formaten in dit pakket (Chatarchief)
====================================

1. Recordregels: data/<serie>/<dossier>/events.jsonl en data/proof/*.jsonl
--------------------------------------------------------------------------
Bestandsformaat: JSON Lines, UTF-8 platte tekst (PRONOM x-fmt/111 "Plain Text
File"): elke regel is één JSON-object (RFC 8259) met gesorteerde sleutels en
zonder spaties, afgesloten met een regeleinde (LF). Eén regel = één record van
het log, in de volgorde van het log.

Een bericht of andere gebeurtenis (events.jsonl):
  {"ciphertext_sha256": hex, "event": {...}, ["files": {blob-id: "media/<seq>-<naam>"}],
   "header": base64 (82 bytes), "salt": base64 (16 bytes), "seq": n}
  seq                 volgnummer van het record in het log (0, 1, 2, ...)
  event               de gebeurtenis zoals vastgelegd:
    source            "matrix" of "signal"
    conversation      het gesprek (Matrix-room-id, Signal-groep of gesprekspartner)
    event_id          het kenmerk van het bericht bij de chatdienst
    kind              message, edit, deletion, reaction, attachment, membership,
                      state, retention_change, poll, notice, undecryptable, unknown
    sender            afzender (Matrix-gebruikers-ID of Signal-nummer/-ID)
    sent_at           verzendtijd volgens de afzender/server, milliseconden sinds
                      1970-01-01T00:00:00Z (UTC)
    received_at       ontvangsttijd bij de archiveringsbot (ms, UTC)
    content           de genormaliseerde inhoud (bij een bericht: "body" = tekst)
    relates_to        het event_id waar een bewerking, verwijdering of reactie
                      over gaat (een bewerking verandert nooit het origineel)
    attachments       bijlagen: sha256, grootte, mediatype, bestandsnaam, blob-id
    raw               het volledige originele bericht van de chatdienst
  files               waar de bijlagen van dit record in het dossier staan
  header, salt, ciphertext_sha256
                      de bouwstenen van de Merkle-leaf (zie 3): samen met de
                      inhoud bewijzen ze dat dit precies het record van het log is

Een afgeschermd (achtergehouden) record heeft geen inhoud maar een grafsteen:
  {"ciphertext_sha256", "commitment": base64, "header", "seq",
   "withheld": {"reason", "by", "at_ms", "decision_seq"}}
  decision_seq is het record met de beslissing; die staat in proof/other-records.jsonl
  of proof/decisions-before.jsonl.

Andere records (data/proof/other-records.jsonl):
  beslissing: {"ciphertext_sha256", "decision": {...}, "header", "salt", "seq"}
  sleutel:    {"ciphertext_sha256", "header", "key": {...}, "salt", "seq"}
  bijlage:    {"blob": {...}, "ciphertext_sha256", "header", "salt", "seq"}
data/proof/decisions-before.jsonl: beslissingen van eerdere maanden die nog gelden,
  elk met "inclusion": [hex, ...] (RFC 9162-bewijs tegen checkpoint-start.txt).
data/proof/missing-media.jsonl: {"blob_id", "path", "seq"} per bijlage die bij het
  maken van het pakket ontbrak (normaal leeg).

2. Tijden en maanden
--------------------
Alle tijden in de records zijn milliseconden UTC. Een pakket bevat de records die
in de kalendermaand (tijdzone in data/proof/range.json) aan het log zijn
toegevoegd. Berichten die later zijn geïmporteerd, staan dus in de maand van
import; hun eigen datums staan in bag-info.txt (Chatarchief-Message-Dates) en per
dossier in dekkingInTijd van de MDTO.

3. Bewijsbestanden (data/proof/)
--------------------------------
range.json              maand, tijdzone, vensters (ms UTC), start en end (end niet
                        inbegrepen), status
leaves.txt              per record de Merkle-leaf, hex, één per regel:
                        SHA-256(0x00 || header || SHA-256(salt || inhoud) || ciphertext_sha256)
checkpoint-*.txt        ondertekende checkpoints (C2SP signed note, Ed25519):
                        oorsprong, aantal records, Merkle-root (base64), tijd
frontier-start.json     de rechterrand van de boom bij start
consistency-proof.json  RFC 9162-bewijs dat de boom bij end die bij start uitbreidt
closing.json            (soms) bewijs dat de maand voorbij was
package.json            de labels (organisatie, tijdzone, maand): verklaard, niet bewezen

4. Pakbon (data/pakbon.xml)
---------------------------
De MDTO-SIP-specificatie vraagt een pakbon maar legt het formaat niet vast. Deze
pakbon is XML zonder namespace met deze elementen: pakbon (versie="1") >
identificatie, naam, aanmaaktijd (tijd van het ondertekende checkpoint dat de
inhoud vastlegt), mdtoVersie, archiefvormer (naam, kenmerk), bijzonderheden,
informatieobjecten (informatieobject niveau= pad= kenmerk=, tekst = naam),
bestanden (bestand pad= omvang= sha256=), totalen (informatieobjecten=,
bestanden=, bestandenZonderMdto=, omvangZonderMdto=). Paden zijn relatief aan data/.

5. Metagegevens (*.MDTO.xml)
----------------------------
MDTO-XML 1.0.1 van het Nationaal Archief (schema: documentatie/MDTO-XML1.0.1.xsd).
Per map een <naam>.MDTO.xml (Serie: het chatarchief van de organisatie; Dossier:
één gesprek in één maand) en naast elk bestand <bestand>.bestand.MDTO.xml.
Gepubliceerde begrippenlijsten: Aggregatieniveaus MDTO, Waarderingen MDTO,
EventTypeLijst MDTO (Creatie, Bevriezing), ChecksumAlgoritme MDTO (SHA-256),
Openbaarheid - Archiefwet 1995 (begripCode en begripLabel), PRONOM-register.
Eigen begrippen, waar geen gepubliceerde lijst bestaat:
documentatie/begrippenlijst-chatarchief.csv.
"""


def formaten() -> bytes:
    return FORMATEN.encode("utf-8")


@dataclass(frozen=True)
class LeesmijInfo:
    package: str
    organisation: str
    month: str
    timezone: str
    records: str  # derive.range_text
    message_dates: str  # derive.Coverage.text
    key_name: str
    interim: bool
    bagging_date: str
    dossiers: Sequence[tuple[str, str]]  # (folder relative to data/, name)
    #: The package has proof/liveness.json (gaps and heartbeats) / proof/witnessed.json (cosignatures). Packages
    #: made before either have none, and their LEESMIJ stays as it was.
    liveness: bool = False
    witnessed: bool = False
    #: The package has proof/signing-keys.json (the log's signing key was rotated; packages without rotations
    #: have none, and their LEESMIJ stays as it was).
    signing_keys: bool = False


LIVENESS = [
    "Gaten en hartslagen",
    "- data/proof/liveness.json somt de gaten in de vastlegging op (soort, begin en eind,",
    "  gesprek, recordnummer): de bot draaide niet, de homeserver of de signal-cli-daemon was",
    "  weg, of een Matrix-gat kon niet worden gevuld. Ook de hartslagen: aantal, eerste en",
    "  laatste, en de langste stilte tussen twee tekenen van leven. Een stille maand (hartslag",
    "  elk kwartier) is zo te onderscheiden van een bot die niet draaide (een stilte van dagen).",
    "  Het bestand is afgeleid uit de records; verify-package leidt het opnieuw af.",
    "",
]

WITNESSED = [
    "Getuigen (witnesses)",
    "- data/proof/witnessed.json bevat checkpoints van het log die onafhankelijke getuigen",
    "  (C2SP tlog-witness) medeondertekenden, elk met een bewijs dat het dit pakket voortzet.",
    "  Wie het log herschrijft, ook met de sleutel, krijgt die handtekeningen niet opnieuw.",
    "  Leg de publieke sleutels van de getuigen vast (van de getuigen zelf, niet uit dit",
    "  pakket) en controleer met",
    "  chatarchief verify-package . --public-key LOG.pub \\",
    "      --witness-key GETUIGE1.pub --witness-key GETUIGE2.pub --quorum 2",
    "",
]


SIGNING_KEYS = [
    "Nieuwe ondertekensleutel (sleutelrotatie)",
    "- De ondertekensleutel van het log is vervangen. data/proof/signing-keys.json bevat elk",
    "  rotatierecord: de nieuwe publieke sleutel, ondertekend door de oude en de nieuwe sleutel,",
    "  met het checkpoint erover (door beide ondertekend) en een RFC 9162-inclusiebewijs.",
    '  In proof/other-records.jsonl: {"ciphertext_sha256", "header", "salt", "seq",',
    '  "signing_key": {...}}. Leg alleen de OORSPRONKELIJKE publieke sleutel van het log vast',
    "  (LOG.pub, van de archiefvormer): verify-package volgt de keten van rotaties vanaf die",
    "  sleutel; een checkpoint moet ondertekend zijn door de sleutel die toen gold. Een pakket",
    "  zonder dit bestand, of met een vervalste rotatie, is niet intact.",
    "",
]


def leesmij(info: LeesmijInfo) -> bytes:
    lines = [
        f"LEESMIJ - Chatarchief-pakket {info.package}",
        "",
        f"Zakelijke chatberichten van {info.organisation}, maand {info.month} ({info.timezone}).",
    ]
    if info.interim:
        lines += [
            f"TUSSENTIJDS PAKKET: de maand tot en met {info.bagging_date}; de maand was toen nog niet",
            "voorbij. Het pakket van de hele maand volgt later en breidt dit pakket uit",
            "(chatarchief verify-package HELE-MAAND --previous DIT-PAKKET).",
        ]
    lines += [
        f"Records {info.records} van het log {info.key_name}.",
        f"Verzenddatums van de berichten zelf: {info.message_dates}.",
        "Een record hoort bij de maand waarin het aan het log is toegevoegd: later geïmporteerde",
        "berichten staan in de maand van import en houden hun eigen datum.",
        "",
        "Wat staat waar",
        "  LEESMIJ.txt, bag-info.txt, bagit.txt    dit bestand en de BagIt-gegevens (RFC 8493)",
        "  manifest-sha256.txt                     SHA-256 van elk bestand onder data/",
        "  tagmanifest-sha256.txt                  SHA-256 van de bestanden buiten data/",
        f"  {XSD_PATH:<38}  het MDTO-schema van het Nationaal Archief",
        f"  {BEGRIPPEN_PATH:<38}  eigen begrippen (waar geen gepubliceerde lijst is)",
        f"  {FORMATEN_PATH:<38}  de opbouw van de recordregels en bewijsbestanden",
        "  data/pakbon.xml                         de pakbon: alle bestanden met omvang en SHA-256",
        "  data/<serie>.MDTO.xml                   de serie: het chatarchief van de organisatie",
        "  data/<serie>/<dossier>.MDTO.xml         een dossier: één gesprek in deze maand",
        "  data/<serie>/<dossier>/events.jsonl     alle records van het gesprek (de bron)",
        "  data/<serie>/<dossier>/transcript.html  het gesprek om te lezen (in elke browser)",
        "  data/<serie>/<dossier>/media/           bijlagen",
        "  data/proof/                             het bewijs (checkpoints, leaves, range)",
    ]
    if info.dossiers:
        lines += ["", f"Gesprekken ({len(info.dossiers)})"]
        lines += [f"  data/{folder}/  {name}" for folder, name in info.dossiers]
    else:
        lines += [
            "",
            "Gesprekken: geen. In deze maand is geen chatbericht aan het log toegevoegd (het pakket",
            "bewijst dat: het bereik hierboven is leeg of bevat alleen andere records).",
        ]
    lines += [
        "",
        "Wat is bewezen",
        "- De regels in events.jsonl en data/proof/*.jsonl zijn de records van het log, in",
        "  volgorde, compleet: elke regel geeft de Merkle-leaf uit data/proof/leaves.txt, en die",
        "  leaves geven de ondertekende checkpoints (data/proof/checkpoint-*.txt, Ed25519).",
        "- Alle andere bestanden die een mens leest - transcript.html, alle *.MDTO.xml,",
        "  pakbon.xml, proof/range.json, bag-info.txt, dit bestand, documentatie/, de map- en",
        "  bestandsnamen - zijn uit die records afgeleid. verify-package leidt ze opnieuw af en",
        "  vergelijkt ze byte voor byte.",
        "- Een afgeschermd bericht (withheld) toont alleen de beslissing die het afschermt; die",
        "  beslissing staat als record in het pakket.",
        "- Media: de SHA-256 in het (bewezen) record moet kloppen met het bestand; een",
        "  ontbrekend bestand mag alleen als het in proof/missing-media.jsonl staat.",
        f"- Bagging-Date ({info.bagging_date}) is de dag van het nieuwste ondertekende checkpoint",
        "  in het pakket: toen lag de inhoud vast; het pakket is die dag of later gemaakt.",
        "",
        "Wat is verklaard, niet bewezen",
        "- data/proof/package.json: naam en kenmerk van de organisatie, tijdzone, log-id en maand.",
        "  Dit zijn labels voor de weergave; de maker van het pakket verklaart ze.",
        "",
    ]
    if info.liveness:
        lines += LIVENESS
    if info.witnessed:
        lines += WITNESSED
    if info.signing_keys:
        lines += SIGNING_KEYS
    lines += [
        "Controleren (in deze map)",
        "  python3 -m bagit --validate .",
        "      BagIt: elk bestand tegen de manifesten (pip install bagit)",
        "  sha256sum -c manifest-sha256.txt",
        "  sha256sum -c tagmanifest-sha256.txt",
        "      hetzelfde met alleen coreutils",
        f"  xmllint --noout --schema {XSD_PATH} $(find data -name '*.MDTO.xml')",
        "      elke MDTO tegen het schema (xmllint uit libxml2-utils)",
        "  chatarchief verify-package . --public-key LOG.pub [--previous VORIG-PAKKET]",
        "      alles hierboven plus het bewijs; uitslag 0 = intact, 1 = niet intact",
        "      LOG.pub is de publieke sleutel van het log (bij de archiefvormer op te vragen).",
        "",
    ]
    return "\n".join(lines).encode("utf-8")

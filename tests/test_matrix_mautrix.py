"""Live Matrix traffic from a second client library (mautrix-python), through the real Synapse, archived by the bot.

matrix-nio is what the officials in the other live tests use; a normaliser tuned to nio's shapes would pass
those and still fail on other clients. Here a mautrix client sends what nio does not produce the same way:
formatted bodies built by mautrix's content classes, a reply with an Element-style quoted fallback, a thread
reply, an edit and an edit of that edit (mautrix adds `m.new_content` itself), an Element poll with a vote
and an end, and a sticker; the archived records and their transcript are asserted.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import lxml.html
import pytest
from mautrix.client import Client
from mautrix.types import EventType, Format, MessageType, TextMessageEventContent

from bridge.archive.lookahead import Lookahead
from bridge.archive.transcript import TranscriptEntry, write_transcript
from bridge.dev.synapse import SynapseServer
from bridge.events import Kind
from tests.support.officials import OfficialFactory, ok, unique_name
from tests.test_matrix_source import Bot, MemorySink, bot, invite_bot, wait_event  # noqa: F401  (bot: fixture)

pytestmark = pytest.mark.synapse

POLL_START = EventType.find("org.matrix.msc3381.poll.start", t_class=EventType.Class.MESSAGE)
POLL_RESPONSE = EventType.find("org.matrix.msc3381.poll.response", t_class=EventType.Class.MESSAGE)
POLL_END = EventType.find("org.matrix.msc3381.poll.end", t_class=EventType.Class.MESSAGE)


@pytest.fixture
async def carol(synapse: SynapseServer) -> AsyncIterator[Client]:
    """A user on mautrix-python (no nio involved)."""
    name = unique_name("carol")
    user_id, token = await synapse.register_user_async(name, f"pw-{name}")
    client = Client(mxid=user_id, base_url=synapse.url, token=token)
    try:
        yield client
    finally:
        await client.api.session.close()


def _text(body: str, html: str | None = None) -> TextMessageEventContent:
    content = TextMessageEventContent(msgtype=MessageType.TEXT, body=body)
    if html is not None:
        content.format, content.formatted_body = Format.HTML, html
    return content


async def test_mautrix_traffic_is_archived_faithfully(bot: Bot, official: OfficialFactory, carol: Client) -> None:  # noqa: F811
    """Formatted text, a reply with a quoted fallback, a thread reply, an edit and an edit of the edit, a poll
    (start, vote, end) and a sticker sent by mautrix are each archived with the kind, text and relation
    they carry; the transcript shows the reply's fallback once, the poll's result and the sticker."""
    alice = await official("alice")
    bot.allowed = frozenset({alice.user_id})
    sink = MemorySink()
    await bot.start(sink)
    room_id = await invite_bot(alice, bot, encrypted=False)
    ok(await alice.client.room_invite(room_id, carol.mxid))
    await carol.join_room(room_id)
    original = await alice.send_text(room_id, "Zullen we de nota vandaag sturen?")

    ids: dict[str, str] = {}
    ids["formatted"] = await carol.send_message(room_id, _text("**ja**, vandaag", "<strong>ja</strong>, vandaag"))
    reply = _text(
        f"> <{alice.user_id}> Zullen we de nota vandaag sturen?\n\nMits de minister tekent",
        f"<mx-reply><blockquote>In reply to {alice.user_id}<br>Zullen we de nota vandaag sturen?</blockquote>"
        "</mx-reply>Mits de minister tekent",
    )
    reply.set_reply(original)
    ids["reply"] = await carol.send_message(room_id, reply)
    thread = _text("in de draad")
    thread.set_thread_parent(original)
    ids["thread"] = await carol.send_message(room_id, thread)
    first_edit = _text("Mits de minister vandaag tekent")
    first_edit.set_edit(ids["reply"])
    ids["edit"] = await carol.send_message(room_id, first_edit)
    second_edit = _text("Mits de minister morgen tekent")
    second_edit.set_edit(ids["edit"])  # an edit of the edit (the spec says edit the original; clients differ)
    ids["edit2"] = await carol.send_message(room_id, second_edit)
    start: dict[str, Any] = {
        "org.matrix.msc3381.poll.start": {
            "question": {"org.matrix.msc1767.text": "Versturen?"},
            "kind": "org.matrix.msc3381.poll.disclosed",
            "max_selections": 1,
            "answers": [{"id": "ja", "org.matrix.msc1767.text": "Ja"}, {"id": "nee", "org.matrix.msc1767.text": "Nee"}],
        },
        "org.matrix.msc1767.text": "Versturen?\n1. Ja\n2. Nee",
    }
    ids["poll"] = await carol.send_message_event(room_id, POLL_START, start)
    relation = {"rel_type": "m.reference", "event_id": ids["poll"]}
    ids["vote"] = await carol.send_message_event(
        room_id, POLL_RESPONSE, {"m.relates_to": relation, "org.matrix.msc3381.poll.response": {"answers": ["ja"]}}
    )
    ids["end"] = await carol.send_message_event(
        room_id,
        POLL_END,
        {"m.relates_to": relation, "org.matrix.msc3381.poll.end": {}, "org.matrix.msc1767.text": "Klaar"},
    )
    ids["sticker"] = await carol.send_sticker(room_id, "mxc://example.org/sticker", text="Duim omhoog")
    for event_id in ids.values():
        await wait_event(sink, event_id)

    got = {name: sink.find(event_id) for name, event_id in ids.items()}
    assert all(e is not None and e.sender == carol.mxid and e.problem is None for e in got.values()), got
    formatted = got["formatted"]
    assert formatted is not None and formatted.kind is Kind.MESSAGE
    assert formatted.content["formatted_body"] == "<strong>ja</strong>, vandaag"
    assert got["reply"] is not None and got["reply"].content["reply_to"] == original
    assert got["thread"] is not None and got["thread"].content["thread_root"] == original
    edit, edit2 = got["edit"], got["edit2"]
    assert edit is not None and edit.kind is Kind.EDIT and edit.relates_to == ids["reply"]
    assert edit.content["body"] == "Mits de minister vandaag tekent"  # mautrix's m.new_content, not "* ..."
    assert edit2 is not None and edit2.kind is Kind.EDIT and edit2.relates_to == ids["edit"]
    poll = got["poll"]
    assert poll is not None and poll.kind is Kind.POLL and poll.content["poll"]["question"] == "Versturen?"
    assert got["vote"] is not None and got["vote"].content["poll"] == {"action": "vote", "answers": ["ja"]}
    assert got["end"] is not None and got["end"].relates_to == ids["poll"]
    sticker = got["sticker"]
    assert sticker is not None and sticker.kind is Kind.ATTACHMENT and sticker.content["sticker"] is True
    assert sticker.attachments[0].url == "mxc://example.org/sticker"

    room = [e for e in sink.unique().values() if e.conversation == room_id]
    out = io.BytesIO()
    entries = [TranscriptEntry(i, e) for i, e in enumerate(room)]
    write_transcript(out, title="t", conversation=room_id, month="m", entries=entries, lookahead=Lookahead.of(room))
    page = out.getvalue().decode()
    # the quoted fallback is not shown again: outside the original's body the text is only in quotes of it
    # (the reply's and the thread reply's snippet links), never as message text
    doc = lxml.html.document_fromstring(page)
    said = doc.xpath('//text()[contains(., "Zullen we de nota vandaag sturen?")]')
    outside_quotes = [t for t in said if not t.getparent().xpath('ancestor-or-self::a[@class="quote"]')]
    assert len(outside_quotes) == 1 and len(said) > 1
    assert "<bdi>Ja</bdi>: 1</li>" in page and "sticker: <bdi>Duim omhoog</bdi>" in page

"""The writer's Bloom filter of dedup tags (`bridge.log.dedup.TagFilter`): never a false negative, rarely a
false hit, for the log's 16-byte keyed tags (whose own bits are the probes) and for tags of other lengths."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.log import dedup
from bridge.log.crypto import keyed_tag
from bridge.log.dedup import TagFilter


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.binary(min_size=16, max_size=16) | st.binary(min_size=0, max_size=40), max_size=300),
    st.lists(st.binary(min_size=0, max_size=40), max_size=100),
    st.integers(min_value=1, max_value=64),
)
def test_hits_is_membership_and_never_misses_a_tag_added(
    added: list[bytes], others: list[bytes], capacity: int
) -> None:
    """`hits(tags)` is `[t for t in tags if t in f]` in order, and holds every tag added (any length, across
    the filter's growth: a tiny first part forces several)."""
    f = TagFilter(capacity)
    f.update(added[: len(added) // 2])
    for tag in added[len(added) // 2 :]:
        f.add(tag)
    probe = others + added
    assert f.hits(probe) == [t for t in probe if t in f]
    assert f.hits(added) == added


def test_the_logs_16_byte_tags_rarely_hit_a_stranger() -> None:
    """Keyed 16-byte tags (`schema.dedup_tag`'s form): about 1 false hit in 1,400 lookups with one part."""
    key = os.urandom(32)
    f = TagFilter(capacity=20_000)
    f.update(keyed_tag(key, "event", "matrix", "!r:x", f"$e{i}") for i in range(20_000))
    strangers = [keyed_tag(key, "event", "matrix", "!r:x", f"$other{i}") for i in range(20_000)]
    assert len(f.hits(strangers)) < 40  # 14 expected


def test_a_tag_that_is_not_bytes_is_not_held() -> None:
    f = TagFilter()
    f.add(b"x" * 16)
    assert "x" * 16 not in f and None not in f and b"x" * 16 in f


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.binary(min_size=16, max_size=16), max_size=300),
    st.lists(st.binary(min_size=16, max_size=16) | st.binary(min_size=0, max_size=40), max_size=100),
    st.integers(min_value=1, max_value=64),
)
def test_the_word_probes_set_and_test_the_bits_the_int_probes_do(
    added: list[bytes], probe: list[bytes], capacity: int
) -> None:
    """16-byte tags probed from their bytes as 32-bit words (`dedup._words`) set exactly the bits, in exactly
    the parts, that the 128-bit int probes of any other tag set, and `hits` answers the same, across growth."""
    by_words, by_ints = TagFilter(capacity), TagFilter(capacity)
    by_words.update(added)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dedup, "_words", lambda tags: None)
        by_ints.update(added)
        expected = by_ints.hits(probe + added)
    assert by_words._parts == by_ints._parts and by_words._count == by_ints._count
    assert by_words.hits(probe + added) == expected
    if added and dedup._NATIVE_WORDS:
        assert dedup._words(added) is not None  # the word path ran (else this compares the int path with itself)


def test_expected_tags_grow_the_filter_in_fewer_parts_and_no_more_memory() -> None:
    """With the tags still to come announced as an import does (`expect`, after each batch), the filter holds
    every tag in fewer parts than doubling makes, in no more memory; with an estimate that falls short of the
    truth it still holds every tag (a part more)."""
    tags = [os.urandom(16) for _ in range(5000)]

    def grown(hint: float | None) -> TagFilter:
        f = TagFilter(64)
        for start in range(0, len(tags), 100):
            if hint is not None:
                f.expect(int((len(tags) - start) * hint))
            f.update(tags[start : start + 100])
        assert f.hits(tags) == tags
        return f

    plain, exact, short = grown(None), grown(1.0), grown(0.5)
    assert len(plain._parts) == 7  # 64, 128, ..., 4096
    assert len(exact._parts) < len(plain._parts) and len(short._parts) <= len(plain._parts)
    assert sum(len(bits) for bits, _, _ in exact._parts) <= sum(len(bits) for bits, _, _ in plain._parts)
    exact.expect(0)  # nothing more expected (the import ended): the next part doubles again
    newest = exact._parts[-1][2]
    exact.update(os.urandom(16) for _ in range(newest))
    assert exact._parts[-1][2] == 2 * newest and exact.hits(tags) == tags

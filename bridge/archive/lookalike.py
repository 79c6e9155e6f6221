"""Names and ids that can make one sender look like another (pure).

`visible(text)` turns every invisible, bidi-control or unusual-space character into
a marker `⟨U+XXXX⟩`, so a zero-width joiner or a right-to-left override in a display
name or an id is seen, not obeyed. `skeleton(text)` is the comparison key for
"looks the same": invisibles removed, NFKC, casefold, and the common Cyrillic and
Greek letters that look like Latin ones folded to those (a short table, not the
full Unicode confusables list). `lookalikes` (and `Participants.lookalikes`) lists each pair of
participants that look alike once (a display name whose skeleton equals another participant's name, id
or id localpart; an id whose skeleton equals another's), the later-appearing id as its subject: what the
transcript's notice shows and marks.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

#: Shown as a marker in names and ids: bidi controls and marks, zero-width and other default-ignorable
#: characters, Hangul fillers, tag characters, variation selectors but the emoji ones, and spaces other
#: than U+0020 (NBSP and friends make two names look equal).
_INVISIBLE = re.compile(
    "[\u00a0\u00ad\u034f\u061c\u115f\u1160\u1680\u17b4\u17b5\u180b-\u180f\u2000-\u200f\u2028-\u202f"
    "\u205f-\u206f\u2800\u3000\u3164\ufe00-\ufe0d\ufeff\uffa0\U000e0000-\U000e0fff"
    # the other format characters (Unicode category Cf): Arabic and Syriac marks, annotation, Egyptian,
    # shorthand and musical format controls
    "\u0600-\u0605\u06dd\u070f\u0890\u0891\u08e2\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a]"
)
#: Removed before comparing (the emoji variation selectors too).
_IGNORED = re.compile(_INVISIBLE.pattern[:-1] + "\ufe0e\ufe0f]")

#: Cyrillic and Greek letters that look like Latin ones (after casefold), folded for comparison.
_HOMOGLYPHS = str.maketrans(
    {
        "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
        "т": "t", "у": "y", "х": "x", "і": "i", "ї": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "ԛ": "q", "ԝ": "w",
        "һ": "h", "ӏ": "l", "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o",
        "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ɡ": "g", "ı": "i",
    }
)  # fmt: skip


def visible(text: str) -> str:
    """`text` with each invisible or bidi-control character replaced by a visible `⟨U+XXXX⟩`."""
    if text.isascii():
        return text
    return _INVISIBLE.sub(lambda m: f"⟨U+{ord(m.group()):04X}⟩", text)


def skeleton(text: str) -> str:
    """The comparison key: invisibles removed, NFKC, casefold, homoglyphs folded, spaces collapsed."""
    folded = unicodedata.normalize("NFKC", _IGNORED.sub("", text)).casefold()
    folded = _IGNORED.sub("", folded).translate(_HOMOGLYPHS)
    return " ".join(folded.split())


def _localpart(user_id: str) -> str | None:
    """`alice` of a Matrix id `@alice:server`; None for other ids."""
    if user_id.startswith("@") and ":" in user_id:
        return user_id[1:].split(":", 1)[0]
    return None


class Participants:
    """Every id and display name of a conversation-month; answers "does this look like someone else?"."""

    def __init__(self) -> None:
        self._names: dict[str, set[str]] = {}  # id -> display names seen

    def add(self, user_id: str, name: str | None = None) -> None:
        names = self._names.get(user_id)
        if names is None:  # not `setdefault`: it would make a set on every call (once per message rendered)
            names = self._names[user_id] = set()
        if name:
            names.add(name)

    @property
    def names(self) -> dict[str, set[str]]:
        """Id -> the display names seen, in order of first appearance (what `add` fills)."""
        return self._names

    def add_all(self, ids: Iterable[str]) -> None:
        for user_id in ids:
            self.add(user_id)

    def lookalikes(self) -> list[Lookalike]:
        """Every look-alike pair among the participants seen so far (see `lookalikes`)."""
        return lookalikes(self._names)


@dataclass(frozen=True)
class Lookalike:
    """One look-alike finding: `subject` (the later-appearing id, which carries the marker) looks like `other`
    (the earlier one; None for a finding about `subject` alone). `why` is the marker's text, `detail` the
    notice's (it names the display names involved)."""

    subject: str
    other: str | None
    why: str
    detail: str


def lookalikes(names: Mapping[str, Iterable[str]]) -> list[Lookalike]:
    """Every look-alike pair of `names` (id -> display names, in order of first appearance), once per pair.

    The code cannot tell which of two look-alikes is the impostor, so each pair is reported once and the
    later-appearing id is the subject. Rules, first match per pair: ids with the same skeleton; a display
    name whose skeleton is another's id or id localpart; two display names with the same skeleton; and,
    alone, a display name that is empty once invisibles are removed. A group of k look-alike ids or names
    gives k-1 pairs (each with the first of the group), so a crowd of "Jan"s stays linear; every id that
    looks like an earlier one is the subject of at least one finding.
    """
    order = list(names)
    ids: dict[str, list[int]] = {}
    id_like: dict[str, list[int]] = {}  # ids and id localparts: what a display name must not look like
    held: dict[str, list[tuple[int, str]]] = {}
    empty: list[tuple[int, str]] = []
    for i, user_id in enumerate(order):
        ids.setdefault(skeleton(user_id), []).append(i)
        id_like.setdefault(skeleton(user_id), []).append(i)
        if (local := _localpart(user_id)) is not None:
            id_like.setdefault(skeleton(local), []).append(i)
        for name in sorted(set(names[user_id])):
            key = skeleton(name)
            if key:
                held.setdefault(key, []).append((i, name))
            else:
                empty.append((i, name))
    found: dict[tuple[int, int], Lookalike] = {}

    def pair(a: int, b: int, why: str, detail: str) -> None:
        if a != b and (key := (min(a, b), max(a, b))) not in found:
            found[key] = Lookalike(order[max(a, b)], order[min(a, b)], why, detail)

    for group in ids.values():
        first, *rest = group
        for j in rest:
            pair(first, j, f"id lijkt op {order[first]}", "de ids lijken op elkaar")
    for key, holders in held.items():
        for i, name in holders:  # a name that looks like another's id
            for j in dict.fromkeys(id_like.get(key, [])):
                if i > j:
                    pair(i, j, f"weergavenaam lijkt op de id {order[j]}", f"weergavenaam “{name}” lijkt op de id")
                elif i < j:
                    pair(i, j, f"id lijkt op de weergavenaam van {order[i]}", f"id lijkt op weergavenaam “{name}”")
        (first, first_name), *rest_names = sorted(holders)
        for j, name in rest_names:  # a name that looks like another's name
            pair(first, j, f"weergavenaam lijkt op die van {order[first]}", f"“{name}” lijkt op “{first_name}”")
    out = sorted(found.items())
    alone = [
        (i, Lookalike(order[i], None, "weergavenaam is leeg zonder onzichtbare tekens", f"“{name}”"))
        for i, name in empty
    ]
    return [finding for _, finding in sorted([(key[1], f) for key, f in out] + alone, key=lambda t: t[0])]

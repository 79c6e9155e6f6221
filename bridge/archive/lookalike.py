"""Names and ids that can make one sender look like another (pure).

`visible(text)` turns every invisible, bidi-control or unusual-space character into
a marker `⟨U+XXXX⟩`, so a zero-width joiner or a right-to-left override in a display
name or an id is seen, not obeyed. `skeleton(text)` is the comparison key for
"looks the same": invisibles removed, NFKC, casefold, and the common Cyrillic and
Greek letters that look like Latin ones folded to those (a short table, not the
full Unicode confusables list). `Participants` flags a display name whose skeleton
equals another participant's name or id, and an id whose skeleton equals another's.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

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
        names = self._names.setdefault(user_id, set())
        if name:
            names.add(name)

    def add_all(self, ids: Iterable[str]) -> None:
        for user_id in ids:
            self.add(user_id)

    def name_warning(self, user_id: str, name: str) -> str | None:
        """Why `name` (shown for `user_id`) may be mistaken for another participant, or None."""
        key = skeleton(name)
        if not key:
            return "display name is empty once invisible characters are removed"
        for other in sorted(self._names):
            if other == user_id:
                continue
            if name == other or key == skeleton(other) or key == skeleton(_localpart(other) or other):
                return f"display name looks like the id {other}"
            if any(skeleton(n) == key for n in self._names[other]):
                return f"display name looks like that of {other}"
        return None

    def id_warning(self, user_id: str) -> str | None:
        """Why the id `user_id` may be mistaken for another participant's id, or None."""
        key = skeleton(user_id)
        for other in sorted(self._names):
            if other != user_id and skeleton(other) == key:
                return f"id looks like {other}"
        return None

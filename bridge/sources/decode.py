"""Decoding for both normalisers (Matrix and Signal): input to a plain JSON dict (or its kept bytes), typed field reads.

Contract (pure; never raises for any input):

* `decode(raw)` returns a `dict` that canonical JSON holds exactly (orjson's
  fresh parse of bytes/text, or an independent deep copy of a Mapping), so its
  values have exact JSON types (never subclasses), or an `Undecodable` that
  keeps the input's exact bytes and says why.
* Undecodable: not JSON, not a JSON object, a key repeated within one object
  (parsers disagree on which value wins), any integer literal outside
  [-2**63, 2**64 - 1] (never rounded to a float), NaN, lone surrogates, non-str
  keys, nesting canonical JSON cannot encode, non-JSON Python values.
* The field reads (`opt_str`, `req_id`, ...) return a field of the expected
  type or raise `Malformed` naming it; null counts as absent.

Why bytes are cheap: orjson's parse is already plain JSON (str keys, no NaN,
no lone surrogates, integers within 64 bits), except that integer literals
beyond 64 bits come back as floats. So a parse with no float and shallow
nesting is kept as is, after one walk over its values. Only a parse with a
float (Matrix forbids floats, so this is rare) pays for the exact checks: a
stdlib re-parse that sees integer literals as written, then a canonical
encode/re-parse round trip.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeGuard, TypeVar

import orjson

from bridge import events
from bridge.errors import DataError
from bridge.events import JSONDict

#: Digit runs long enough to be an integer literal beyond 64 bits (or in a string).
_LONG_DIGITS = re.compile(rb"\d{19,}")
_INT_MIN, _UINT_MAX = -(2**63), 2**64 - 1
#: A key spaced before its colon (`"k" :`): the fast duplicate-key count does not see it.
_SPACED_COLON = re.compile(rb'"[ \t\r\n]+:')
#: Nesting kept without a round trip; deeper goes the slow way (orjson encodes at most 254 levels).
_FAST_DEPTH = 64
#: Deepest input kept as parsed JSON; deeper input is kept as its bytes (see _decode_mapping).
MAX_DEPTH = 200


@dataclass(frozen=True, slots=True)
class Undecodable:
    """Input kept as bytes: `data` (what the event id is hashed from), why not, and a salvaged dict.

    `salvage` is a parsed dict that could not be kept exactly; its string ids
    are still worth using.
    """

    data: bytes
    problem: str
    salvage: Mapping[Any, Any] | None = None


def decode(raw: object) -> JSONDict | Undecodable:
    """`raw` as a plain JSON dict, or kept as bytes with the reason."""
    if type(raw) is bytes:  # the import path: one line of a file
        return _decode_bytes(raw)
    if isinstance(raw, Mapping):
        return _decode_mapping(raw, None)
    if isinstance(raw, str):
        return _decode_bytes(raw.encode("utf-8", "surrogatepass"))
    if isinstance(raw, bytes | bytearray | memoryview):
        return _decode_bytes(bytes(raw))
    return Undecodable(reencode(raw), f"input is a {type(raw).__name__}, not an event")


def plain_copy(value: Mapping[Any, Any]) -> JSONDict | None:
    """A plain-JSON deep copy of `value`, or None if canonical JSON would change it."""
    try:
        as_dict = dict(value)
        copied = orjson.loads(events.canonical_json(as_dict))
    except (events.EncodingError, TypeError, ValueError):
        return None
    return copied if copied == as_dict else None


def reencode(value: object) -> bytes:
    """Best-effort bytes of a non-JSON Python value, so that it can still be kept."""
    try:
        return json.dumps(value, default=repr).encode("ascii")
    except (TypeError, ValueError, RecursionError):
        pass
    try:
        return repr(value).encode("utf-8", "backslashreplace")
    except Exception:  # a repr that fails (e.g. an int too long to print)
        return f"<unrepresentable {type(value).__name__}>".encode()


def accepted_as_parsed(data: bytes, keys: int) -> bool:
    """The decoder's one-walk acceptance of `data` as orjson parsed it, given `keys`, the parsed object's key
    count as `_plain_keys` gives it (-1: not plain): no more `":` in the bytes than keys (so no duplicate key
    orjson merged away) and no key spaced before its colon. Shared with the import's fast path
    (`sources.matrix.fast`), which counts the keys of a known shape without the walk."""
    return keys >= 0 and data.count(b'":') <= keys and not _SPACED_COLON.search(data)


def _decode_bytes(data: bytes) -> JSONDict | Undecodable:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return Undecodable(data, "not JSON")
    if type(parsed) is not dict:
        return Undecodable(data, "not a JSON object")
    if accepted_as_parsed(data, _plain_keys(parsed, _FAST_DEPTH)):
        return parsed  # the common case in one walk: the two checks below would both pass
    duplicate = _duplicate_key(data, parsed)
    if duplicate is not None:
        # orjson keeps the last of two equal keys; which one a reader sees is not ours to choose
        return Undecodable(data, f"duplicate JSON key {duplicate[:60]!r}", parsed)
    if _plain_as_parsed(parsed, _FAST_DEPTH):  # no float, so no integer beyond 64 bits either
        return parsed
    # a float (perhaps an integer beyond 64 bits) or deep nesting: the exact checks
    if _LONG_DIGITS.search(data) and not _integers_fit(data):
        return Undecodable(data, "integer beyond 64 bits", parsed)
    return _decode_mapping(parsed, data)


def _decode_mapping(value: Mapping[Any, Any], original: bytes | None) -> JSONDict | Undecodable:
    if _deeper_than(value, MAX_DEPTH):
        # The Event nests `raw` (and state content) a few levels further, and orjson
        # refuses to encode past 254 levels: keep such input as bytes instead.
        data = original if original is not None else reencode(value)
        return Undecodable(data, f"nested deeper than {MAX_DEPTH} levels", value)
    copied = plain_copy(value)
    if copied is None:
        data = original if original is not None else reencode(value)
        return Undecodable(data, "not representable as canonical JSON", value)
    return copied


def _duplicate_key(data: bytes, parsed: dict[str, Any]) -> str | None:
    """A key that occurs twice in one object of `data`, or None.

    Fast path: every key of compact or ordinarily spaced JSON ends in `":`, so
    when the text holds no more `":` than the parse holds keys (and no key is
    spaced before its colon), no key was repeated. Otherwise (repeats, or `":`
    inside string values) the stdlib parser walks the pairs as written.
    """
    try:
        keys = _count_keys(parsed)
    except RecursionError:  # nesting deeper than Python's stack: let the exact walk below decide
        keys = -1
    if data.count(b'":') <= keys and not _SPACED_COLON.search(data):
        return None
    found: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in items:
            if key in seen and not found:
                found.append(key)
            seen.add(key)
        return dict(items)

    try:
        json.loads(data, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return None  # orjson parsed it; whatever the stdlib refuses here is judged elsewhere
    return found[0] if found else None


def _count_keys(value: dict[str, Any] | list[Any]) -> int:
    """Keys in every object of a parse (recursive: the usual event is two or three levels deep)."""
    n = 0
    if type(value) is dict:
        n = len(value)
        value = value.values()  # type: ignore[assignment]
    for item in value:
        kind = type(item)
        if kind is dict or kind is list:
            n += _count_keys(item)  # type: ignore[arg-type]
    return n


def _deeper_than(value: object, limit: int) -> bool:
    """True if containers nest more than `limit` levels (iterative: no recursion limit)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, Mapping):
            stack.extend((child, depth + 1) for child in item.values() if isinstance(child, Mapping | list | tuple))
        elif isinstance(item, list | tuple):
            stack.extend((child, depth + 1) for child in item if isinstance(child, Mapping | list | tuple))
    return False


def _plain_keys(value: dict[str, Any] | list[Any], depth: int) -> int:
    """`_count_keys` when `_plain_as_parsed(value, depth)`, else -1: both checks in one walk."""
    if depth == 0:
        return -1
    n = 0
    item: Any
    if type(value) is dict:
        n = len(value)
        value = value.values()  # type: ignore[assignment]
    for item in value:
        kind = type(item)
        if kind is str or kind is int:
            continue
        if kind is float:
            return -1
        if kind is dict or kind is list:
            inner = _plain_keys(item, depth - 1)
            if inner < 0:
                return -1
            n += inner
    return n


def _plain_as_parsed(value: dict[str, Any] | list[Any], depth: int) -> bool:
    """True if an orjson parse holds no float and nests under `depth`: canonical JSON keeps it exactly."""
    if depth == 0:
        return False
    item: Any
    for item in value.values() if type(value) is dict else value:
        kind = type(item)
        if kind is str or kind is int:
            continue
        if kind is float or ((kind is dict or kind is list) and not _plain_as_parsed(item, depth - 1)):
            return False
    return True


def _integers_fit(data: bytes) -> bool:
    """Re-parse with the stdlib, which keeps integer literals exact, and check their range."""
    try:
        json.loads(data, parse_int=_checked_int)
    except (ValueError, RecursionError):
        return False
    return True


def _checked_int(literal: str) -> int:
    if len(literal) > 21:  # longer than any 64-bit integer; also avoids huge int() work
        raise ValueError("integer too long")
    number = int(literal)
    if not _INT_MIN <= number <= _UINT_MAX:
        raise ValueError("integer beyond 64 bits")
    return number


# --- field reads: a present field of the wrong type is malformed; null counts as absent -----


class Malformed(DataError):
    """The event breaks the Matrix spec; the message becomes the Event's `problem`."""


_P = ParamSpec("_P")
_T = TypeVar("_T")


def soft(problems: list[str], read: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T | None:
    """`read(...)`, or None with its `Malformed` text added to `problems`: for an optional field whose
    bad value should be marked on the event, not make the whole event unknown."""
    try:
        return read(*args, **kwargs)
    except Malformed as exc:
        problems.append(str(exc))
        return None


def json_copy(value: Any) -> Any:
    """An independent copy of a decoded value (exact: `decode` only yields what canonical JSON holds)."""
    return orjson.loads(orjson.dumps(value))


def is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def opt_str(d: JSONDict, key: str, where: str = "") -> str | None:
    value = d.get(key)
    if value is None or isinstance(value, str):
        return value
    raise Malformed(f"{where}{key} is not a string")


def req_str(d: JSONDict, key: str, where: str = "") -> str:
    value = d.get(key)
    if isinstance(value, str):
        return value
    raise Malformed(f"{where}{key} is missing" if value is None else f"{where}{key} is not a string")


def req_id(d: JSONDict, key: str, where: str = "") -> str:
    value = req_str(d, key, where)
    if not value:
        raise Malformed(f"{where}{key} is empty")
    return value


def opt_dict(d: JSONDict, key: str, where: str = "") -> JSONDict | None:
    value = d.get(key)
    if value is None or isinstance(value, dict):
        return value
    raise Malformed(f"{where}{key} is not an object")


def req_dict(d: JSONDict, key: str, where: str = "") -> JSONDict:
    value = d.get(key)
    if isinstance(value, dict):
        return value
    raise Malformed(f"{where}{key} is missing" if value is None else f"{where}{key} is not an object")


def opt_int(d: JSONDict, key: str, where: str = "") -> int | None:
    value = d.get(key)
    if value is None or is_int(value):
        return value
    raise Malformed(f"{where}{key} is not an integer")


def opt_bool(d: JSONDict, key: str, where: str = "") -> bool | None:
    value = d.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise Malformed(f"{where}{key} is not a boolean")

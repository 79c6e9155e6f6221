"""The error root (bridge.errors): one root, evidence as text, the JSON form `verify --json` prints."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import bridge
from bridge.archive.verify_package import PackageIntegrityError
from bridge.errors import ChatarchiefError, Check, LogIntegrityError


def test_every_exception_class_of_the_package_descends_from_the_root() -> None:
    """Every exception class defined in `bridge` is a ChatarchiefError, so the CLI's `_guard` handles them all."""
    outside = []
    for info in pkgutil.walk_packages(bridge.__path__, "bridge."):
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            ours = cls.__module__ == info.name and issubclass(cls, BaseException)
            if ours and not issubclass(cls, ChatarchiefError):
                outside.append(f"{info.name}.{name}")
    assert outside == []


def test_evidence_is_text_and_the_message_carries_it() -> None:
    """Hashes become hex and sizes text; the message names the record, the reason and both values."""
    err = LogIntegrityError(7, "stored bytes do not match", b"\x01\x02", 3, check=Check.LEAF)
    assert (err.expected, err.found) == ("0102", "3")
    assert str(err) == "record 7: stored bytes do not match (expected 0102, found 3)"
    assert err.to_json() == {
        "intact": False,
        "check": "leaf",
        "seq": 7,
        "reason": "stored bytes do not match",
        "expected": "0102",
        "found": "3",
    }


def test_package_errors_keep_their_message_and_carry_the_record() -> None:
    """A package failure's reason already names file, line and record: `seq` is data, not a prefix."""
    err = PackageIntegrityError(Check.PACKAGE_ORDER, "dossier x line 2: record 9 appears twice", seq=9)
    assert str(err) == "dossier x line 2: record 9 appears twice"
    assert err.seq == 9 and err.to_json()["check"] == "package_order"

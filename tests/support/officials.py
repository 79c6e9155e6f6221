"""Officials for integration tests: re-exported from `bridge.dev.officials` (shared with the demo)."""

from bridge.dev.officials import Official, OfficialFactory, make_official, ok, poll_until, unique_name

__all__ = ["Official", "OfficialFactory", "make_official", "ok", "poll_until", "unique_name"]

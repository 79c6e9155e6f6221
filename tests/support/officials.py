"""Officials for integration tests: re-exported from `bridge.devclients` (shared with the demo)."""

from bridge.devclients import Official, OfficialFactory, make_official, ok, poll_until, unique_name

__all__ = ["Official", "OfficialFactory", "make_official", "ok", "poll_until", "unique_name"]

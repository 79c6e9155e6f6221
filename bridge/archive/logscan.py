"""Compatibility name for `bridge.log.view.LogView` (the scheduler imports it from here; no SQL here)."""

from bridge.log.view import LogView

__all__ = ["LogView"]

"""The harness's errors; the tree is drawn in `peers`."""

from __future__ import annotations


class PeerError(Exception):
    """Root of the harness's errors."""


class ToolMissingError(PeerError):
    """An executable the harness needs is not installed."""


class PeerStartError(PeerError):
    """A peer did not start, did not load the lab data, or does not hold the expected counts."""

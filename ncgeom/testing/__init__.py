"""Testing aids: Hypothesis strategies (`ncgeom.testing.strategies`) and the plugin
conformance suite (`ncgeom.testing.conformance`)."""

from .conformance import ConformanceError, check_plugin

__all__ = ["ConformanceError", "check_plugin"]

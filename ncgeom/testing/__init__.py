"""Testing aids: Hypothesis strategies (`ncgeom.testing.strategies`)."""

__all__: list[str] = []

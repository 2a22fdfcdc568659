"""Validation suites run over a run's tables before publishing."""

from validators.suite import ValidationReport, validate_accepted

__all__ = ["ValidationReport", "validate_accepted"]

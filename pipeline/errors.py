"""Errors the CLI turns into exit codes (see DESIGN.md: 2 bad input, 3 gate failed, 1 internal)."""

from __future__ import annotations


class SynthcatError(Exception):
    """Base of the errors synthcat reports to users without a traceback."""

    exit_code = 1


class BadInputError(SynthcatError):
    """Bad input or usage: a manifest, config or argument the user must fix (exit 2).

    The message names the file and, where known, the row and field.
    """

    exit_code = 2


class GateFailedError(SynthcatError):
    """A quality gate or the validation suite failed, so nothing was published (exit 3)."""

    exit_code = 3

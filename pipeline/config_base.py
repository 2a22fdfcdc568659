"""The base of every job-config section: strict (unknown keys refused), frozen, and templates checked."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A part of the job config: an unknown key is an error, and a parsed config never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def fillable(template: str, fields) -> str:
    """`template` if text fills it: a conversion (`!z`), a format spec (`:d`) or a field nested in
    one (`{title:{x}}`) that would fail at planning fails here, naming the template."""
    try:
        template.format_map(dict.fromkeys(fields, "text"))
    except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
        raise ValueError(f"template {template!r} cannot be filled in ({type(exc).__name__}: {exc})") from None
    return template

"""Class ids of a dataset's labels, kept from run to run: `<root>/_classes.json`.

A label's id is its place in the list, and the list only grows: a class added by a later run
gets the next ids (new labels of one publish in sorted order), and a class no longer published
keeps its id. So a model trained on yesterday's dataset reads today's ids the same way. The list
is written under the publish lock after each commit; the dataset card declares it as the `label`
column's `ClassLabel` names, so `load_dataset(<root>)` gives those ids.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import SynthcatError
from pipeline.fsops import write_json

CLASSES = "_classes.json"


def class_names(root: Path, labels) -> list[str]:
    """The dataset's class names in id order: the recorded ones, then those of `labels` not among
    them (sorted)."""
    known = _recorded(Path(root) / CLASSES)
    recorded = set(known)
    return known + sorted({label for label in labels if label is not None} - recorded)


def record_classes(root: Path, names: list[str]) -> None:
    """Write `names` (class_names' result) as the dataset's class list, when it has grown."""
    path = Path(root) / CLASSES
    if _recorded(path) != names:
        write_json(path, {"names": names})


def _recorded(path: Path) -> list[str]:
    """The class list written at `path`, [] when there is none yet."""
    if not path.is_file():
        return []
    try:
        known = json.loads(path.read_text(encoding="utf-8"))["names"]
    except (ValueError, KeyError, TypeError) as exc:
        raise SynthcatError(f"{path}: not a class list ({type(exc).__name__}: {exc}); "
                            "restore it from a backup: the ids of the published labels depend on it") from None
    if not (isinstance(known, list) and all(isinstance(name, str) for name in known)):
        raise SynthcatError(f"{path}: not a class list (names must be a list of text)")
    return known

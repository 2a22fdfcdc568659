"""Step 4: the Great Expectations suite over the accepted rows; nothing is published if it fails."""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.errors import GateFailedError
from pipeline.steps.gate import gated_tables
from pipeline.steps.state import STATE, editing_state, read_state


def validate(staging: Path) -> dict:
    """Run the Great Expectations suite over the accepted rows; a failure raises GateFailedError."""
    from validators import validate_accepted

    state, tick = read_state(staging), time.perf_counter()
    accepted, _ = gated_tables(staging)
    report = validate_accepted(accepted, min_clip_score=state["scorer"]["min_clip_score"],
                               run_id=state["run_id"], run_date=state["run_date"]).to_dict()
    with editing_state(staging) as record:
        record.update(validation=report, timings={**record["timings"], "validate": time.perf_counter() - tick})
    if not report["success"]:
        failed = [r for r in report["results"] if not r["success"]]
        names = "; ".join(f"{r['expectation']}({r.get('column') or ''}): observed {r.get('observed')}"
                          for r in failed[:5])
        raise GateFailedError(f"validation failed, nothing published ({len(failed)} expectations "
                              f"failed; details in {staging / STATE}): {names}")
    return {"success": True, "expectations": len(report["results"])}

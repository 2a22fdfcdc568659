"""Step 4: the Great Expectations suite over the accepted rows; nothing is published if it fails."""

from __future__ import annotations

import logging
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
                              f"failed; details in {staging / STATE}{_report_of(staging)}): {names}")
    return {"success": True, "expectations": len(report["results"])}


def _report_of(staging: Path) -> str:
    """", the run's report: <path>" for the error; a report that cannot be written (its cause logged)
    does not hide the validation failure."""
    from pipeline.steps.publish import failed_run_report

    try:
        return f", the run's report: {failed_run_report(staging)}"
    except Exception:  # noqa: BLE001 - the validation failure is the error to raise
        logging.getLogger(__name__).warning("the report of the failed run could not be written", exc_info=True)
        return ""

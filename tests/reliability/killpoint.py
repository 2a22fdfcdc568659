"""Run `synthcat` and SIGKILL the process at a named point: a crash no `finally` can soften.

    python killpoint.py generate:2 run --manifest ...   # killed entering the 2nd generate call
    python killpoint.py score:1 run ...                  # killed entering the 1st score call
    python killpoint.py publish:1 run ...                # killed right after the 1st partition swap
    python killpoint.py commit:1 run ...                 # killed right after the commit record

The point is reached through the real code path; only the moment of death is chosen, so the
test is deterministic instead of racing a timer against a 2-core machine.
"""

from __future__ import annotations

import os
import signal
import sys


def _die(point: str) -> None:
    print(f"killpoint: SIGKILL at {point}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_on_call(owner, name: str, nth: int, point: str, after: bool = False) -> None:
    real, calls = getattr(owner, name), []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == nth and not after:
            _die(point)
        result = real(*args, **kwargs)
        if len(calls) == nth and after:
            _die(point)
        return result

    setattr(owner, name, wrapper)


def main() -> int:
    point, argv = sys.argv[1], sys.argv[2:]
    stage, nth = point.split(":")
    if stage == "generate":
        from pipeline.stages.generate import GenerateStage as owner
        _kill_on_call(owner, "generate", int(nth), point)  # what both the fused and the plain stage call
    elif stage == "score":
        from pipeline.stages.score import ScoreStage as owner
        _kill_on_call(owner, "__call__", int(nth), point)
    elif stage == "publish":
        from pipeline import publish as owner
        _kill_on_call(owner, "_swap_in", int(nth), point, after=True)
    elif stage == "commit":
        from pipeline import publish as owner
        _kill_on_call(owner, "publish_run", int(nth), point, after=True)
    else:
        raise SystemExit(f"unknown kill point {point!r}")
    from pipeline.cli import main as synthcat

    return synthcat(argv)


if __name__ == "__main__":
    sys.exit(main())

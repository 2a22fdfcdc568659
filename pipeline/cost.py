"""What a run cost: device-seconds held by generation, per accepted image and per 1,000.

The generation step holds its devices from the moment its workers start (model loading
included) until the last batch is out, so device-seconds = that step's wall time x the devices
its model stages hold: GPUs when any stage asks for one, else the CPU cores they are granted.
Regeneration rounds add their own time, and where a run keeps its models set up between rounds
(pipeline/warm_models.py) the time they sit idle meanwhile, while the gates run or until the
run's next task takes them up, counts too (`held_idle_seconds`). Steps that generate at the same
time on the run's shared model hosts count their common time once: the record keeps each
holder's spans of held time (`spans`, epoch seconds) and sums the union. Prices come from the
job config (`cost:`).
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.config import Cost


def devices_held(stages: Sequence) -> tuple[str, float]:
    """(`gpu`, GPUs) when a model stage holds GPUs, else (`cpu`, CPU cores of the model stages).

    Stateless stages (encoding) run as short tasks beside the model workers and hold nothing.
    """
    workers = [s for s in stages if not getattr(s, "stateless", False)]
    gpus = sum(s.resources.num_gpus * s.resources.actors for s in workers)
    if gpus > 0:
        return "gpu", gpus
    return "cpu", sum(s.resources.num_cpus * s.resources.actors for s in workers)


def add_held(previous: dict | None, kind: str, count: float, holder: str, start: float, end: float,
             idle: float = 0.0, rounds: int = 1) -> dict:
    """The run's device record after `holder` held `count` devices of `kind` from `start` to `end`
    (epoch seconds), the first `idle` seconds of it set up and idle (models kept between rounds,
    or left by an earlier step), the rest generating (`rounds` rounds).

    A holder is the run's shared model hosts (every step that used them), or one step's own
    workers. Its spans are merged: two Airflow tasks of a run generating at the same time on the
    run's hosts hold those devices once, not twice. Different holders' times add up."""
    previous = previous or {}
    if previous and "spans" not in previous:  # written before spans were kept (a run in flight across an upgrade)
        base = {"seconds": previous.get("seconds", 0.0), "held_idle_seconds": previous.get("held_idle_seconds", 0.0)}
    else:  # its totals carry on under the spans'
        base = previous.get("base") or {"seconds": 0.0, "held_idle_seconds": 0.0}
    spans = {name: dict(held) for name, held in previous.get("spans", {}).items()}
    mine = spans.setdefault(holder, {"held": [], "busy": []})
    mine["held"] = _merged([*mine["held"], [start, end]])
    mine["busy"] = _merged([*mine["busy"], [min(start + idle, end), end]]) if rounds else mine["busy"]
    held = sum(_length(s["held"]) for s in spans.values())
    busy = sum(_length(s["busy"]) for s in spans.values())
    return {"kind": kind, "count": count, "seconds": base["seconds"] + held * count,
            "held_idle_seconds": base["held_idle_seconds"] + (held - busy) * count,
            "rounds": previous.get("rounds", 0) + rounds, "spans": spans, "base": base}


def add_held_idle(previous: dict | None, holder: str, end: float, idle: float) -> dict | None:
    """The record after `holder`'s models sat set up and idle for the `idle` seconds up to `end`
    (the last gate pass); unchanged where nothing was generated or nothing was held."""
    if not previous or idle <= 0:
        return previous
    return add_held(previous, previous["kind"], previous["count"], holder, end - idle, end, idle, rounds=0)


def _merged(spans: list) -> list[list[float]]:
    out: list[list[float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        elif b > a:
            out.append([a, b])
    return out


def _length(spans: list) -> float:
    return sum(b - a for a, b in spans)


def run_cost(device: dict | None, accepted: int, prices: Cost) -> dict:
    """Device-seconds per accepted image and the cost per 1,000 accepted images at `prices`."""
    if not device:  # nothing generated in this process (every shard was resumed or ran remotely)
        return {}
    kind, seconds = device["kind"], device["seconds"]
    hour_usd = prices.gpu_hour_usd if kind == "gpu" else prices.cpu_hour_usd
    usd = seconds / 3600 * hour_usd
    return {
        "device": kind, "devices": device["count"], "device_seconds": round(seconds, 3),
        "held_idle_seconds": round(device.get("held_idle_seconds", 0.0), 3),  # included in device_seconds
        "device_s_per_accepted": round(seconds / accepted, 4) if accepted else None,
        "hour_usd": hour_usd, "usd": round(usd, 6),
        # significant figures, not decimals: a cheap CPU run costs fractions of a cent per 1,000
        "usd_per_1000_accepted": float(f"{usd / accepted * 1000:.4g}") if accepted else None,
    }


def price(usd: float) -> str:
    """A price as money is written (2.50), and a price under a cent with its digits (0.004)."""
    return f"{usd:.2f}" if usd >= 0.01 or usd == 0 else f"{usd:.2g}"


def describe_cost(cost: dict) -> str:
    """One line for the run summary, e.g. `0.52 GPU-s per accepted image · $0.36 per 1,000 accepted
    (at $2.50 per GPU-hour)`; empty when the run has no cost record."""
    if not cost or cost.get("device_s_per_accepted") is None:
        return ""
    unit = "GPU-s" if cost["device"] == "gpu" else "CPU core-s"
    per_hour = "GPU-hour" if cost["device"] == "gpu" else "CPU core-hour"
    return (f"{cost['device_s_per_accepted']:.3g} {unit} per accepted image · "
            f"${cost['usd_per_1000_accepted']:.4g} per 1,000 accepted (at ${price(cost['hour_usd'])} per {per_hour})")

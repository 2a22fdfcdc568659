"""Small torch helpers shared by the GPU stages (imported inside `setup()`, never at import time)."""

from __future__ import annotations


def pick_device(num_gpus: float) -> str:
    """`cuda` when the stage was given a GPU and one is visible, else `cpu`.

    Decided inside the worker, never on the driver, so a CPU-only driver can run GPU actors.
    """
    import torch

    return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"


def limit_threads(num_cpus: float) -> None:
    """Keep torch inside the CPUs the executor granted, so actors do not oversubscribe cores."""
    import torch

    torch.set_num_threads(max(1, int(num_cpus)))

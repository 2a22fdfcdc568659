"""Resource faults: out of memory halves the generate batch and goes on; a full disk fails cleanly.

Out of memory is caused for real inside the UNet's forward: CUDA's `torch.OutOfMemoryError`
(raised as the CUDA allocator raises it; this machine has no GPU to exhaust) and a genuine
host-allocator failure (a tensor larger than the address space). The full disk is a real
size-limited tmpfs where the machine lets us mount one, else ENOSPC from the shard writer.
"""

from __future__ import annotations

import errno
import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pytest

from pipeline.cli import main
from reliability_support import DATASET, clean_run, published_rows, run_args, same_rows_as_clean

N = 4


@pytest.fixture(scope="module")
def stage(models_dir):
    from pipeline.models.presets import resolve_model
    from pipeline.stages.generate import GenerateStage

    model = resolve_model("tiny", models_dir)
    generate = GenerateStage(model.path, model.name, "sha", model.pipeline_class, steps=2, guidance_scale=7.5)
    generate.setup()
    return generate


@pytest.fixture(scope="module")
def items() -> pa.Table:
    return pa.table({"prompt": [f"a red mug, photo {i}" for i in range(N)], "negative_prompt": ["blurry"] * N,
                     "seed": list(range(11, 11 + N)), "width": [64] * N, "height": [64] * N})


def _pixels(table: pa.Table) -> np.ndarray:
    return np.stack([np.frombuffer(b, np.uint8) for b in table.column("pixels").to_pylist()]).astype(int)


def _fail_over(stage, images: int, fault: str, raised: list):
    """A UNet pre-hook that runs out of memory whenever it sees more than `images` images."""
    import torch

    def hook(module, args, kwargs):
        latents = args[0] if args else kwargs["sample"]
        if latents.shape[0] > 2 * images:  # classifier-free guidance doubles the UNet batch
            raised.append(latents.shape[0] // 2)
            if fault == "cuda":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            if fault == "host":
                torch.empty(latents.shape[0] << 46, dtype=torch.uint8)  # the allocator really fails
            raise RuntimeError("an unrelated bug")

    return stage._pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("fault", ["cuda", "host"])
def test_out_of_memory_halves_the_batch_and_goes_on(stage, items, fault):
    stage._max_batch = None
    reference = stage(items)
    raised: list[int] = []
    handle = _fail_over(stage, 1, fault, raised)
    try:
        out = stage(items)
        assert raised == [4, 2], "halved 4 -> 2 -> 1, each size tried once"
        assert stage._max_batch == 1
        again = stage(items)  # later batches start at the size that fit
    finally:
        handle.remove()
        stage._max_batch = None
    assert raised == [4, 2]
    assert out.num_rows == N and out.column("seed").to_pylist() == items.column("seed").to_pylist()
    assert out.column("pixels").to_pylist() == again.column("pixels").to_pylist()
    # one generator per image: smaller batches move a pixel by a level at most
    assert np.abs(_pixels(out) - _pixels(reference)).max() <= 2


@pytest.mark.parametrize("fault, error", [("cuda", "out of memory"), ("other", "unrelated bug")])
def test_what_cannot_be_halved_still_fails(stage, items, fault, error):
    raised: list[int] = []
    handle = _fail_over(stage, 0, fault, raised)  # even one image does not fit / not a memory error
    try:
        with pytest.raises(RuntimeError, match=error):
            stage(items)
    finally:
        handle.remove()
        stage._max_batch = None
    assert raised == ([4, 2, 1] if fault == "cuda" else [4])


# --- a full disk -----------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (None where this machine may not mount one)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True,
                       capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def _fill(folder, leave: int) -> None:
    """Fill the filesystem of `folder`, then free `leave` bytes."""
    filler = folder / "filler"
    # unbuffered: a buffered file would keep the bytes that did not fit and fail again on close
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    with open(filler, "r+b") as handle:
        handle.truncate(max(0, filler.stat().st_size - leave))


def test_a_full_disk_fails_cleanly_keeps_published_data_and_resumes(tmp_path_factory, small_disk, monkeypatch,
                                                                   capsys):
    clean = clean_run(tmp_path_factory.getbasetemp())
    disk = small_disk or tmp_path_factory.mktemp("no-tmpfs")
    out = disk / "out"
    shutil.copytree(clean.out, out)  # the date already published once
    args = run_args(clean.manifest, clean.config, out, "full")
    if small_disk is not None:
        _fill(disk, leave=48 * 1024)  # room to plan, not to finish: it fills up mid-run
    else:  # no mount here: the shard writer meets ENOSPC, as a full disk raises it
        from pipeline.shards import ShardStore

        def no_space(self, shard, table):
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path(shard)))

        monkeypatch.setattr(ShardStore, "write", no_space)

    assert main(args) == 1
    err = capsys.readouterr().err
    assert "no space left on device" in err.lower() and "nothing was published" in err
    assert "--run-id full" in err and "Traceback" not in err
    rows = published_rows(out / DATASET)
    assert set(rows.column("run_id").to_pylist()) == {"clean"}  # the earlier data is intact
    same_rows_as_clean(rows, clean)
    assert not (out / DATASET / "_runs" / "full").exists()

    # Space freed: the same run id resumes and publishes the clean rows.
    monkeypatch.undo()
    (disk / "filler").unlink(missing_ok=True)
    assert main(args) == 0
    rows = published_rows(out / DATASET)
    same_rows_as_clean(rows, clean)
    assert set(rows.column("run_id").to_pylist()) == {"full"}

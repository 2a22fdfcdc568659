"""Weights load from safetensors only: no `trust_remote_code`, nothing is ever unpickled.

Two kinds of proof: the code is scanned for every way to unpickle or run remote code (and the
scanner is shown to catch each), and model folders holding a booby-trapped pickle -- one that
creates a file when unpickled -- are refused or loaded without the pickle ever running.
"""

from __future__ import annotations

import ast
import pickle
import shutil
from pathlib import Path

import pytest

from pipeline.errors import BadInputError

REPO = Path(__file__).resolve().parents[2]
SCANNED = [p for folder in ("pipeline", "validators", "dags") for p in sorted((REPO / folder).rglob("*.py"))]
UNPICKLERS = {("pickle", "load"), ("pickle", "loads"), ("torch", "load"), ("joblib", "load"), ("dill", "load"),
              ("dill", "loads"), ("cloudpickle", "load"), ("cloudpickle", "loads"), ("pd", "read_pickle"),
              ("pandas", "read_pickle"), ("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load"),
              ("marshal", "loads"), ("shelve", "open")}
PICKLE_MODULES = {"pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "ray.cloudpickle"}


def _keyword(call: ast.Call, name: str):
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value.value if isinstance(keyword.value, ast.Constant) else keyword.value
    return None


def problems_in(source: str, where: str = "<code>") -> list[str]:
    """Every unsafe model-loading or unpickling construct in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = f"{where}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{line}: imports {n}" for n in names if n in PICKLE_MODULES]
        if not isinstance(node, ast.Call):
            continue
        function = node.func
        name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
        owner = getattr(function.value, "id", "") if isinstance(function, ast.Attribute) else ""
        if (owner, name) in UNPICKLERS:
            found.append(f"{line}: {owner}.{name}()")
        if _keyword(node, "trust_remote_code") not in (None, False):
            found.append(f"{line}: trust_remote_code")
        if _keyword(node, "allow_pickle") not in (None, False):
            found.append(f"{line}: allow_pickle")
        if name == "from_pretrained" and (_keyword(node, "use_safetensors") is not True
                                          or _keyword(node, "local_files_only") is not True):
            found.append(f"{line}: from_pretrained without use_safetensors=True, local_files_only=True")
        if name == "load_lora_weights" and _keyword(node, "weight_name") is None \
                and _keyword(node, "use_safetensors") is not True:
            found.append(f"{line}: load_lora_weights without a weight_name or use_safetensors=True")
        pretrained = _keyword(node, "pretrained")
        if name.startswith("create_model") and pretrained is not None and not (
                isinstance(pretrained, str) and pretrained.endswith(".safetensors")):
            found.append(f"{line}: open_clip pretrained= not a .safetensors file")
    return found


def test_the_code_never_unpickles_or_trusts_remote_code():
    problems = [p for path in SCANNED for p in problems_in(path.read_text(encoding="utf-8"),
                                                             str(path.relative_to(REPO)))]
    assert problems == []


@pytest.mark.parametrize("snippet", [
    "import pickle", "from ray import cloudpickle as c\nimport dill", "torch.load('w.pt')",
    "pickle.loads(b)", "yaml.load(text)", "np.load('a.npy', allow_pickle=True)",
    "AutoModel.from_pretrained('x', trust_remote_code=True, use_safetensors=True, local_files_only=True)",
    "Pipe.from_pretrained('x', local_files_only=True)", "pipe.load_lora_weights('dir')",
    "open_clip.create_model_and_transforms('ViT-B-32', pretrained='model.bin')", "pd.read_pickle(p)",
])
def test_the_scanner_catches_each_unsafe_construct(snippet):
    assert problems_in(snippet)


def _trap(path: Path, sentinel: Path) -> None:
    """A pickle that creates `sentinel` the moment anything unpickles it."""

    class Trap:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    path.write_bytes(pickle.dumps({"weight": Trap()}))


def test_a_diffusers_folder_with_pickled_weights_never_runs_the_pickle(models_dir, tmp_path):
    from pipeline.models.presets import resolve_model
    from pipeline.stages.generate import GenerateStage

    source = resolve_model("tiny", models_dir).path
    folder = tmp_path / "diffusion"
    shutil.copytree(source, folder)
    sentinel = tmp_path / "pwned"
    for weights in (folder / "unet").glob("*.safetensors"):
        weights.unlink()
    _trap(folder / "unet" / "diffusion_pytorch_model.bin", sentinel)

    stage = GenerateStage(folder, "tiny", "sha", "StableDiffusionPipeline", steps=2, guidance_scale=7.5)
    with pytest.raises((OSError, ValueError)):  # diffusers: no safetensors for the unet
        stage.setup()
    assert not sentinel.exists(), "the pickle was unpickled"

    for weights in folder.rglob("*.safetensors"):  # no safetensors anywhere: refused up front
        weights.unlink()
    (tmp_path / "models" / "mine").mkdir(parents=True)
    shutil.move(folder, tmp_path / "models" / "mine" / "diffusion")
    from pipeline.models import presets

    with pytest.raises(BadInputError, match="no .safetensors weights"):
        presets._require_safetensors(tmp_path / "models" / "mine" / "diffusion", "model preset 'mine'")
    assert not sentinel.exists()


def test_a_scorer_folder_with_pickled_weights_is_refused(models_dir, tmp_path):
    from pipeline.models.presets import resolve_scorer

    clip = resolve_scorer("tiny", models_dir).path
    mine = tmp_path / "models" / "tiny"
    shutil.copytree(models_dir / "tiny", mine)  # every file `tiny` needs stays, so nothing retrains
    sentinel = tmp_path / "pwned"
    # open_clip's local-dir loader ranks this name above e.g. `model.safetensors` and unpickles it
    _trap(mine / "clip" / "open_clip_pytorch_model.bin", sentinel)
    with pytest.raises(BadInputError, match="pickle weights .*open_clip_pytorch_model.bin"):
        resolve_scorer("tiny", tmp_path / "models")
    assert not sentinel.exists() and clip.is_dir()

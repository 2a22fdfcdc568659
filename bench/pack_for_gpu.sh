#!/usr/bin/env bash
# Pack what a bare CUDA + PyTorch image lacks for `synthcat bench` on an offline GPU machine:
#   bench/pack_for_gpu.sh [OUT_DIR] [PYTHON_VERSION]      (defaults: .gpu, 3.12)
# Downloads the x86-64 wheels of synthcat's remaining dependencies (the versions in .venv),
# unpacks them, and writes three xz archives of under 30 MB each: OUT_DIR/a (Ray and small
# packages), OUT_DIR/b (diffusers, open_clip, Great Expectations, faiss, ...), OUT_DIR/c (fonts
# and babel). Ray's binaries are stripped and its jars, RLlib, Serve, Train, Tune and dashboard
# client left out (a run imports none of them). Babel keeps the packaged markets' languages.
# On the GPU machine: `tar xJf a/a.tar.xz -C /tmp/site` (and b, c), then
# `PYTHONPATH=/tmp/site:$PWD bench/gpu.sh sd15-arch`.
set -euo pipefail
out=${1:-.gpu}
pyver=${2:-3.12}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
names=(ray diffusers open_clip_torch great_expectations faiss-cpu ImageHash PyWavelets altair cryptography cffi
       pycparser jsonschema jsonschema-specifications referencing rpds-py marshmallow mistune ruamel.yaml tzlocal
       pydantic pydantic_core annotated-types typing-inspection ftfy wcwidth babel fontpkg fontpkg-noto-sans
       fontpkg-noto-sans-arabic fontpkg-noto-sans-thai noto-cjk-sans-jp-regular importlib_metadata colorful)
mapfile -t pins < <("$root/.venv/bin/python" -c 'import sys, importlib.metadata as md
for n in sys.argv[1:]: print(f"{n}=={md.version(n)}")' "${names[@]}")
platforms=()
for p in manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 manylinux_2_34 manylinux2014; do
  platforms+=(--platform "${p}_x86_64")
done
pip_args=(--no-deps --only-binary=:all: --python-version "$pyver" --implementation cp "${platforms[@]}")
python3 -m pip download -q "${pip_args[@]}" -d "$work/whl" "${pins[@]}"
python3 -m pip install -q "${pip_args[@]}" --no-compile --ignore-requires-python --target "$work/site" "$work"/whl/*.whl
cd "$work/site"
rm -rf ray/jars ray/rllib ray/serve ray/llm ray/train ray/tune ray/dashboard/client ray/cpp bin share images open_clip_train
find . -name __pycache__ -prune -exec rm -rf {} +
find babel/locale-data -name '*.dat' | grep -v -E '/(root|en|de|ja|pt|th|vi|ar)(_[A-Za-z0-9_]+)?\.dat$' | xargs rm -f
find . -type f \( -name '*.so*' -o -path './ray/core/src/*' \) -print0 | while IFS= read -r -d '' f; do
  if file "$f" | grep -q 'ELF.*not stripped'; then strip --strip-unneeded "$f"; fi
done
c=(babel babel-* fontpkg fontpkg-* fontpkg_* noto_cjk_sans_jp_regular noto_cjk_sans_jp_regular-*)
b=(diffusers diffusers-* open_clip open_clip_torch-* great_expectations great_expectations-* faiss faiss_cpu*
   cryptography cryptography-* cffi cffi-* _cffi_backend* pycparser pycparser-* pywt pywavelets-* imagehash ImageHash-*)
mkdir -p "$root/$out/a" "$root/$out/b" "$root/$out/c"
# shellcheck disable=SC2206
a=($(ls | grep -v -x -F -f <(printf '%s\n' "${b[@]}" "${c[@]}")))
tar cf - "${c[@]}" | xz -T0 -6 > "$root/$out/c/c.tar.xz"
tar cf - "${b[@]}" | xz -T0 -6 > "$root/$out/b/b.tar.xz"
tar cf - "${a[@]}" | xz -T0 -6 > "$root/$out/a/a.tar.xz"
ls -l "$root/$out"/*/*.tar.xz

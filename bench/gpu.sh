#!/usr/bin/env bash
# The GPU figures of bench/README.md on one GPU, with what a failed or stuck run leaves behind:
#   bench/gpu.sh PRESET [OUT_DIR] [LIMIT_S]
# writes OUT_DIR/PRESET.json (naive and engine figures first, end-to-end ones when the run ends),
# OUT_DIR/PRESET.log (the command's output) and OUT_DIR/PRESET-ray-logs.tgz (Ray's worker logs).
# After LIMIT_S seconds the benchmark gets SIGINT: it keeps the figures it has and says so.
# BENCH_ARGS replaces the preset's item counts (e.g. "--items 100 --batch-size 32 --naive-items 8");
# TAG, if set, goes into the file names (PRESET-TAG.json), so variants of one preset do not overwrite.
set -uo pipefail
preset=${1:?usage: bench/gpu.sh sd15-arch|sd-turbo-arch [OUT_DIR] [LIMIT_S]}
out=${2:-bench}
limit=${3:-900}
case $preset in
  sd15-arch) args=(--items 200 --batch-size 32 --naive-items 32) ;;      # 304 items
  sd-turbo-arch) args=(--items 800 --batch-size 64 --naive-items 64) ;;  # 1,178 items
  *) args=() ;;
esac
[[ -n ${BENCH_ARGS:-} ]] && read -ra args <<<"$BENCH_ARGS"
mkdir -p "$out"
name=$preset${TAG:+-$TAG}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv,noheader
timeout -s INT "$limit" "${PYTHON:-python3}" -m pipeline.cli bench --preset "$preset" --gpus 1 "${args[@]}" \
  --json "$out/$name.json" 2>&1 | tee "$out/$name.log"
rc=${PIPESTATUS[0]}
tar czf "$out/$name-ray-logs.tgz" -C /tmp/ray/session_latest logs 2>/dev/null
exit "$rc"

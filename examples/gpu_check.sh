#!/usr/bin/env bash
# The GPU check of issue 17, in one script (under 8 minutes on one GPU): writes one JSON.
#
#   examples/gpu_check.sh                      # on the GPU: small and base presets, bf16
#   examples/gpu_check.sh --device cpu --tiny  # the script's own test: tiny sizes on the CPU
#
# For each preset: `detailclip bench` (step time, FLOPs and MFU against the device's bf16 peak,
# peak memory), then short pretraining runs with and without --compile (images/s from
# metrics.jsonl, steps after the first), then a few steps under `torchrun --nproc_per_node 1`
# (DDP over NCCL on a GPU, gloo on the CPU). Options: --device NAME, --out DIR, --tiny.
set -euo pipefail

device=cuda
out=gpu_check
tiny=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --device) device="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --tiny) tiny=1; shift ;;
        *) echo "error: unknown option $1 (use --device NAME, --out DIR, --tiny)" >&2; exit 2 ;;
    esac
done

PY="${PYTHON:-python}"
mkdir -p "$out"
if [[ $tiny == 1 ]]; then
    presets=(tiny); batch=4; steps=3; repeats=1
    # Shrink the preset so that the check itself takes seconds.
    printf '%s' '{"preset": "tiny", "model": {"vision": {"depth": 1}, "text": {"layers": 1}, "head": {"out_dim": 64}}}' \
        > "$out/tiny.json"
    config=(--config "$out/tiny.json")
else
    presets=(small base); batch=""; steps=30; repeats=5
    config=()
fi
precision=bf16
[[ $device == cpu ]] && precision=fp32  # bf16 autocast on CPU measures nothing a GPU user needs

for preset in "${presets[@]}"; do
    echo "== $preset: bench" >&2
    "$PY" -m detailclip_cli bench --preset "$preset" --device "$device" --sections train,flops,memory \
        --repeats "$repeats" --warmup 1 ${batch:+--batch-size $batch} --format json --output "$out/bench-$preset.json"
    for compile in no-compile compile; do
        [[ $tiny == 1 && $compile == compile ]] && continue  # compiling takes minutes on a CPU
        echo "== $preset: pretrain --$compile" >&2
        run="$out/run-$preset-$compile"
        preset_or_config=(--preset "$preset"); [[ $tiny == 1 ]] && preset_or_config=("${config[@]}")
        "$PY" -m detailclip_cli pretrain "${preset_or_config[@]}" --device "$device" --precision "$precision" \
            --steps "$steps" ${batch:+--batch-size $batch} --log-every 1 --save-every "$steps" "--$compile" \
            --out "$run" --force >/dev/null
    done
    echo "== $preset: torchrun --nproc_per_node 1" >&2
    preset_or_config=(--preset "$preset"); [[ $tiny == 1 ]] && preset_or_config=("${config[@]}")
    "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m detailclip_cli pretrain "${preset_or_config[@]}" \
        --device "$device" --precision "$precision" --steps 3 ${batch:+--batch-size $batch} --log-every 1 \
        --save-every 3 --out "$out/run-$preset-torchrun" --force >/dev/null
done

"$PY" - "$out" "$device" "${presets[@]}" <<'PYEOF'
import json, sys
from pathlib import Path

out, device, presets = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
record = {"device": device, "presets": {}}
try:
    import torch
    record["torch"] = torch.__version__
    if device.startswith("cuda") and torch.cuda.is_available():
        record["gpu"] = torch.cuda.get_device_name()
except ImportError:
    pass


def images_per_sec(run: Path) -> float | None:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] if run.exists() else []
    later = [r["images_per_sec"] for r in rows[1:]]  # the first step includes start-up (and compiling)
    return sum(later) / len(later) if later else None


for preset in presets:
    run_json = out / f"run-{preset}-torchrun" / "run.json"
    record["presets"][preset] = {
        "bench": json.loads((out / f"bench-{preset}.json").read_text()),
        "images_per_sec": {c: images_per_sec(out / f"run-{preset}-{c}") for c in ("no-compile", "compile")},
        "torchrun_processes": json.loads(run_json.read_text())["processes"],
        "torchrun_images_per_sec": images_per_sec(out / f"run-{preset}-torchrun"),
    }
(out / "gpu_check.json").write_text(json.dumps(record, indent=1))
print(out / "gpu_check.json")
PYEOF

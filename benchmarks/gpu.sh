#!/usr/bin/env bash
# Run the benchmarks on a CUDA machine with random-init RN50 (speed does not depend on weight values): scaling,
# extraction, training cost, and (with the ray extra installed) extraction and a grid on Ray, N GPUs -> N actors.
#
#   bash benchmarks/gpu.sh [OUT_DIR]          # default OUT_DIR: benchmarks/results/gpu
#   QUICK=1 bash benchmarks/gpu.sh /tmp/x     # smoke test (~1-2 min)
#   QUICK=1 DEVICE=cpu BACKBONE=tiny-rn bash benchmarks/gpu.sh /tmp/x   # the script's own smoke test on a CPU
#   WHEELS=dir bash benchmarks/gpu.sh          # offline machine: install missing packages from a wheel folder
#                                              # (pip download --no-deps open_clip_torch ftfy wcwidth regex timm ...)
#
# Budget: under 14 minutes in total on one H100-class GPU (the two --gpu-decode extraction runs: ~1 min each). The machine needs only this repository and torch with
# CUDA: no shared datasets (the training-cost benchmark uses generated JPEGs and reports timings only) and no
# weights download. Missing Python packages are pip-installed when PyPI is reachable; otherwise the script says
# what is missing and skips what cannot run.
set -u
cd "$(dirname "$0")/.."
OUT_DIR="${1:-benchmarks/results/gpu}"
DEVICE="${DEVICE:-cuda}"
PY="${PYTHON:-python}"
QUICK_FLAG=""
[ "${QUICK:-0}" = "1" ] && QUICK_FLAG="--quick"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT_DIR"
start=$(date +%s)
say() { echo "[gpu.sh $(( $(date +%s) - start ))s] $*"; }

# -- environment -----------------------------------------------------------------------------------------------
if [[ "$DEVICE" == cuda* ]] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    say "torch with CUDA is required: $("$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1 | tail -1)"
    exit 2
fi
WHEELS="${WHEELS:-}"
[ -z "$WHEELS" ] && [ -d .cache/wheels ] && WHEELS=.cache/wheels
pip_try() {  # pip install with a short timeout; never fatal. --no-deps: never replace the machine's CUDA torch.
    local src=()
    [ -n "$WHEELS" ] && src=(--find-links "$WHEELS")
    timeout 180 "$PY" -m pip install --disable-pip-version-check -q --retries 1 --timeout 15 --no-deps "${src[@]}" "$@" \
        >/tmp/gpu_sh_pip.log 2>&1 || { say "pip install $* failed (offline?): $(tail -1 /tmp/gpu_sh_pip.log)"; return 1; }
}
if ! "$PY" -c "import clip_adapter" 2>/dev/null; then
    say "clip_adapter not importable: pip install -e . (no deps, no build isolation: works offline)"
    pip_try --no-build-isolation -e . || true
    if ! "$PY" -c "import clip_adapter" 2>/dev/null; then
        say "falling back to PYTHONPATH=src"
        export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi
# import name -> PyPI name of what the RN50 benchmarks need
declare -A PKG=([torchvision]=torchvision [open_clip]=open_clip_torch [timm]=timm [safetensors]=safetensors
                [PIL]=pillow [numpy]=numpy [tqdm]=tqdm [ftfy]=ftfy [wcwidth]=wcwidth [regex]=regex [yaml]=pyyaml
                [huggingface_hub]=huggingface_hub)
# One interpreter start for all checks (imports are slow): prints the modules that fail to import.
missing_modules() {
    "$PY" -c '
import importlib, sys
bad = []
for m in sys.argv[1:]:
    try:
        importlib.import_module(m)
    except Exception:
        bad.append(m)
print(" ".join(bad))' "$@" 2>/dev/null
}
read -r -a missing <<< "$(missing_modules numpy PIL torchvision safetensors tqdm yaml wcwidth ftfy regex huggingface_hub timm open_clip)"
if [ ${#missing[@]} -gt 0 ]; then
    say "missing modules: ${missing[*]}; trying pip${WHEELS:+ (wheels from $WHEELS)}"
    for mod in "${missing[@]}"; do
        # torchvision must match the installed torch; pip can only help if the right build is reachable.
        pip_try "${PKG[$mod]}"
    done
fi
read -r -a still <<< "$(missing_modules torchvision open_clip safetensors PIL numpy tqdm clip_adapter)"
if [ ${#still[@]} -gt 0 ]; then
    say "cannot run: still missing ${still[*]} (pip install $(for m in "${still[@]}"; do printf '%s ' "${PKG[$m]:-$m}"; done))"
    exit 3
fi
"$PY" -m pip list 2>/dev/null | grep -iE "^(torch|torchvision|open.clip|timm|safetensors|numpy|pillow) " || true
"$PY" -c "import clip_adapter, torch; print('clip_adapter', clip_adapter.__version__, 'torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" || exit 3

# -- benchmarks (one at a time) --------------------------------------------------------------------------------
status=0
run() {  # run NAME TIMEOUT_S CMD...
    local name=$1 limit=$2; shift 2
    say "$name: $*"
    timeout "$limit" "$@" || { rc=$?; say "$name FAILED (exit $rc)"; status=1; }
}
BB=(--backbone "${BACKBONE:-RN50}" --pretrained none --device "$DEVICE" --out "$OUT_DIR")
# In-process cells: GPU peaks are reset per cell (torch.cuda.reset_peak_memory_stats); saves 9 interpreter starts.
run scaling 150 "$PY" benchmarks/scaling.py --device "$DEVICE" --out "$OUT_DIR" --in-process $QUICK_FLAG
run extraction 150 "$PY" benchmarks/extraction.py "${BB[@]}" --synthetic --images 2048 \
    --batch-sizes 32 128 256 --workers 0 4 8 --name extraction_rn50 $QUICK_FLAG
run training_cost 180 "$PY" benchmarks/training_cost.py "${BB[@]}" --synthetic --synthetic-classes 100 \
    --seeds 1 --epochs 20 --views 1 5 10 20 --long-epochs 200 --num-workers 8 $QUICK_FLAG
# Issue #22: the stacked grid search (4 alphas, 3 seeds; stacked vs one by one) and the encoder variants (today's
# path, channels_last, bf16/fp16 autocast, torch.compile) on the GPU, lite and RN50 side by side.
run batched_search 120 "$PY" benchmarks/batched_search.py --device "$DEVICE" --out "$OUT_DIR" $QUICK_FLAG
# Every encoder option of the CLI on the GPU: --precision bf16/fp16 and --compile through the library's own runner
# (ONNX Runtime is a CPU option and is skipped on CUDA), each compared with today's features (cosine distance).
run encoder_variants 240 "$PY" benchmarks/encoder_variants.py --device "$DEVICE" --open-clip "${BACKBONE:-RN50}" \
    --images 256 --micro-batch 64 --rounds 3 --out "$OUT_DIR" $QUICK_FLAG
# --gpu-decode (nvjpeg decoding + pinned loader memory) in the full cache path, at cells of the extraction run above
# (same images, CPU decoding), alone and with bf16. Off by default until these numbers say otherwise.
GD=(--synthetic --images 2048 --batch-sizes 128 256 --workers 4 8)
[ -n "$QUICK_FLAG" ] && GD=(--synthetic)
if [[ "$DEVICE" == cuda* ]]; then
    run extraction_gpu_decode 120 "$PY" benchmarks/extraction.py "${BB[@]}" "${GD[@]}" --gpu-decode \
        --name extraction_rn50_gpu_decode $QUICK_FLAG
    run extraction_bf16_gpu_decode 120 "$PY" benchmarks/extraction.py "${BB[@]}" "${GD[@]}" --precision bf16 \
        --gpu-decode --name extraction_rn50_bf16_gpu_decode $QUICK_FLAG
fi
# -- Ray: N GPUs -> N encoder actors -------------------------------------------------------------------------------
# Extraction images/s with 1..N encoder actors (one per GPU) vs the plain path, and a small grid plain vs Ray.
# Expected: the Ray path scales with the number of GPUs until JPEG decoding (Ray Data CPU tasks, ~100-200 img/s per
# core at 224 px) saturates the CPUs; with one GPU it matches the plain path minus the actors' start (seconds).
if "$PY" -c "import ray, ray.data" 2>/dev/null; then
    NGPU=$("$PY" -c "import torch; print(max(1, torch.cuda.device_count()))" 2>/dev/null || echo 1)
    ACTORS=(1); n=2; while [ "$n" -le "$NGPU" ]; do ACTORS+=("$n"); n=$((n * 2)); done
    [ "$DEVICE" = cpu ] && ACTORS=(1 2)
    run ray_scaling 300 "$PY" benchmarks/ray_scaling.py --backbone "${BACKBONE:-RN50}" --pretrained none \
        --device "$DEVICE" --images 4096 --batch-size 128 --workers 8 --actors "${ACTORS[@]}" --out "$OUT_DIR" $QUICK_FLAG
else
    say "Ray section skipped: ray is not installed (pip install 'clip-adapter[ray]')"
fi
say "done (status $status); results in $OUT_DIR:"
ls -l "$OUT_DIR"
exit $status

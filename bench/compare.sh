#!/usr/bin/env bash
# Side-by-side: memlab vs PyTorch on the same networks, same step, same machine, one after the
# other: training step (median of 8), forward at batch 256 and at the training batch (medians of
# 8), Heun sampling throughput (18 steps, batch 256), for improved-diffusion's UNet and, when
# EDM_DIR points at a checkout of NVlabs/edm, EDM's DDPM++ (SongUNet) against EDM's own code.
#
# Usage: bash bench/compare.sh      (after `cargo build --release --workspace`)
# PyTorch: python3 -m venv V && V/bin/pip install torch numpy requests; PYTHON=V/bin/python.
# Quick run: STEPS=3 REPS=2 SAMPLE_BATCH=0 bash bench/compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STEPS=${STEPS:-8}
REPS=${REPS:-8}
SB=${SAMPLE_BATCH:-256}
threads=$("$PY" -c 'import os; print(len(os.sched_getaffinity(0)))')
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $threads threads;" \
  "AVX-512: $(grep -q avx512f /proc/cpuinfo && echo yes || echo no)"
compare() { # name; memlab's extra arguments in the array MARGS, PyTorch's in TARGS
  local M T
  M=$(target/release/memlab bench train --steps "$STEPS" --forward-reps "$REPS" --sample-batch "$SB" "${MARGS[@]}" 2>/dev/null)
  T=$("$PY" bench/torch_unet.py --steps "$STEPS" --forward-reps "$REPS" --sample-batch "$SB" --threads "$threads" "${TARGS[@]}")
  "$PY" - "$1" "$M" "$T" <<'PY'
import json, sys
name, m, t = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
if "skipped" in t:
    print(f"{name}: PyTorch comparison skipped: {t['skipped']}"); sys.exit(0)
print(f"\n{name}: parameters memlab {m['parameters']:,}, torch {t['parameters']:,} ({t['framework']})")
print(f"{'':34} {'memlab':>10} {'PyTorch':>10} {'ratio':>7}")
def row(label, key, unit="s", inverse=False):
    a, b = m[key], t[key]
    if a is None or b is None or a != a or b != b:
        return
    r = b / a if inverse else a / b
    print(f"{label:34} {a:>9.3f}{unit} {b:>9.3f}{unit} {r:>7.2f}")
row(f"train step, batch {m['batch']}", "train_step_s")
row(f"forward, batch {m['forward_batch']}", "forward_s")
row(f"forward, batch {m['batch']}", "forward_small_s")
if m.get("sample_batch"):
    row(f"Heun {m['sample_steps']} steps x {m['sample_batch']} (img/s)", "sample_images_per_s", "", inverse=True)
print("(ratio = memlab time / PyTorch time; for img/s, PyTorch rate / memlab rate: < 1 means memlab is faster)")
PY
}
MARGS=(); TARGS=()
compare "improved-diffusion UNet (ch 32, mult 1-2-2, 2 blocks, attn 8x8)"
if [ -n "${EDM_DIR:-}" ]; then
  MARGS=(--arch ddpmpp --params "$(printf 'channels = 32\nchannel_mult = [1, 2, 2]\nnum_blocks = 1\nattn_resolutions = [16]\ndropout = 0.0')")
  TARGS=(--arch ddpmpp --edm "$EDM_DIR" --channels 32 --channel-mult 1 2 2 --num-blocks 1 --attn-resolutions 16)
  compare "DDPM++ (EDM SongUNet, ch 32, mult 1-2-2, 1 block, attn 16x16)"
else
  echo "DDPM++: set EDM_DIR to a checkout of NVlabs/edm to compare against EDM's own network"
fi

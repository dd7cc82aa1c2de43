#!/usr/bin/env bash
# Side-by-side: memlab vs PyTorch on the same networks, same step, same machine, one after the
# other: training step (median of 8), forward at batch 256 and at the training batch (medians of
# 8), Heun sampling throughput (18 steps, batch 256), for improved-diffusion's UNet and, when
# EDM_DIR points at a checkout of NVlabs/edm, EDM's DDPM++ (SongUNet) against EDM's own code.
#
# Usage: bash bench/compare.sh      (after `cargo build --release --workspace`)
# PyTorch: python3 -m venv V && V/bin/pip install torch numpy requests; PYTHON=V/bin/python.
# Each row: medians over ROUNDS (default 3) alternating runs of the two frameworks.
# Quick run: STEPS=3 REPS=2 SAMPLE_BATCH=0 ROUNDS=1 bash bench/compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STEPS=${STEPS:-8}
REPS=${REPS:-8}
SB=${SAMPLE_BATCH:-256}
ROUNDS=${ROUNDS:-3}
threads=$("$PY" -c 'import os; print(len(os.sched_getaffinity(0)))')
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $threads threads;" \
  "AVX-512: $(grep -q avx512f /proc/cpuinfo && echo yes || echo no)"
compare() { # name; memlab's extra arguments in the array MARGS, PyTorch's in TARGS
  # ROUNDS > 1 alternates the two frameworks that many times (memlab, PyTorch, memlab, ...) and
  # reports each framework's median over the rounds, with the spread of the per-round ratios:
  # on a shared machine the speed drifts over minutes, and one block per framework would put
  # that drift into the ratio.
  local Ms=() Ts=() r
  for ((r = 1; r <= ROUNDS; r++)); do
    Ms+=("$(target/release/memlab bench train --steps "$STEPS" --forward-reps "$REPS" --sample-batch "$SB" "${MARGS[@]}" 2>/dev/null)")
    Ts+=("$("$PY" bench/torch_unet.py --steps "$STEPS" --forward-reps "$REPS" --sample-batch "$SB" --threads "$threads" "${TARGS[@]}")")
  done
  "$PY" - "$1" "$ROUNDS" "${Ms[@]}" "${Ts[@]}" <<'PY'
import json, statistics, sys
name, rounds = sys.argv[1], int(sys.argv[2])
ms = [json.loads(a) for a in sys.argv[3:3 + rounds]]
ts = [json.loads(a) for a in sys.argv[3 + rounds:3 + 2 * rounds]]
if any("skipped" in t for t in ts):
    print(f"{name}: PyTorch comparison skipped: {ts[0].get('skipped')}"); sys.exit(0)
m, t = ms[0], ts[0]
print(f"\n{name}: parameters memlab {m['parameters']:,}, torch {t['parameters']:,} ({t['framework']})")
spread_head = f" {'per-round ratios':>18}" if rounds > 1 else ""
print(f"{'':34} {'memlab':>10} {'PyTorch':>10} {'ratio':>7}{spread_head}")
def ok(v):
    return v is not None and v == v
def row(label, key, unit="s", inverse=False):
    a = [x[key] for x in ms if ok(x.get(key))]
    b = [x[key] for x in ts if ok(x.get(key))]
    if len(a) != rounds or len(b) != rounds:
        return
    ratio = (lambda x, y: y / x) if inverse else (lambda x, y: x / y)
    am, bm = statistics.median(a), statistics.median(b)
    line = f"{label:34} {am:>9.3f}{unit} {bm:>9.3f}{unit} {ratio(am, bm):>7.2f}"
    if rounds > 1:
        per = [ratio(x, y) for x, y in zip(a, b)]
        line += f" {min(per):>9.2f} – {max(per):.2f}"
    print(line)
row(f"train step, batch {m['batch']}", "train_step_s")
row(f"forward, batch {m['forward_batch']}", "forward_s")
row(f"forward, batch {m['batch']}", "forward_small_s")
if m.get("sample_batch"):
    row(f"Heun {m['sample_steps']} steps x {m['sample_batch']} (img/s)", "sample_images_per_s", "", inverse=True)
print("(ratio = memlab time / PyTorch time; for img/s, PyTorch rate / memlab rate: < 1 means memlab is faster;"
      + (f" medians of {rounds} alternating rounds)" if rounds > 1 else " one round)"))
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

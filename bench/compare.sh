#!/usr/bin/env bash
# Side-by-side: memlab vs PyTorch on the same UNet, same step, same machine, one after the other.
# Usage: bash bench/compare.sh   (after `cargo build --release --workspace`; needs `pip install torch numpy`)
set -euo pipefail
cd "$(dirname "$0")/.."
M=$(target/release/memlab bench train "$@" 2>/dev/null)
T=$(python3 bench/torch_unet.py)
python3 - "$M" "$T" <<'PY'
import json, sys
m, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
if "skipped" in t:
    print("PyTorch comparison skipped:", t["skipped"]); print(json.dumps(m, indent=2)); sys.exit(0)
print(f"parameters: memlab {m['parameters']:,}  torch {t['parameters']:,}")
print(f"train step (batch {m['batch']}): memlab {m['train_step_s']:.3f} s  {t['framework']} {t['train_step_s']:.3f} s")
print(f"forward (batch {m['forward_batch']}): memlab {m['forward_s']:.3f} s  torch {t['forward_s']:.3f} s")
print(f"train step ratio to PyTorch: {m['train_step_s'] / t['train_step_s']:.2f}")
print(f"forward ratio to PyTorch: {m['forward_s'] / t['forward_s']:.2f}")
PY

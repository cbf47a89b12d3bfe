#!/bin/sh
# The GPU check of the digits-cnn demo: on a machine with an NVIDIA GPU and a Python that holds
# PyTorch, time its training on the GPU and on the CPU (samples/s, same network, same data
# shape), and show what digits-cnn picks there.
#
#   scripts/gpu-check.sh            # python3 by default; PYTHON=... to choose
#
# It needs only PyTorch and numpy (src/forgehub/demo/cnn.py imports nothing else of forgehub).
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
"$PY" - <<'PY'
import json, os, torch
from forgehub.demo import cnn

print(f"torch {torch.__version__}, CUDA visible: {torch.cuda.is_available()}")
rows = []
if torch.cuda.is_available():
    for batch in (256, 4096):
        rows.append(cnn.bench("cuda", batch=batch))
for batch in (256, 4096):
    rows.append(cnn.bench("cpu", samples=20_000, epochs=2, batch=batch))
for r in rows:
    print(f"{r['device']:<32} batch {r['batch']:>5}: {r['samples_per_s']:>12,.0f} samples/s")
gpu = {r["batch"]: r["samples_per_s"] for r in rows if r["device"].startswith("cuda")}
cpu = {r["batch"]: r["samples_per_s"] for r in rows if r["device"] == "cpu"}
for b in sorted(gpu):
    print(f"GPU/CPU at batch {b}: {gpu[b] / cpu[b]:.1f}x")
print("digits-cnn with device=auto trains on:", cnn.describe(cnn.pick_device("auto")))
out = os.environ.get("OUT")
if out:
    with open(os.path.join(out, "gpu-check.json"), "w") as fh:
        json.dump(rows, fh, indent=2)
PY

#!/usr/bin/env bash
# Run notebooks 03 and 04 in the GPU ("full") profile, unchanged, and collect what they recorded.
# Not yet run on a GPU: no machine was lent when it was written (see the closing note of issue 4).
# Meant for a borrowed CUDA machine whose Python has torch/torchvision/timm but not this project's
# other packages: those come as wheels in .whl/ (see the README's GPU section).
#   OUT=/some/folder bash benchmarks/gpu_profile.sh
set -euo pipefail
OUT=${OUT:-outputs/gpu}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__)" | tee -a "$OUT/gpu.txt"
python3 -m tutorial_lib run 03 04 --profile full --output-dir "$OUT" --results "$OUT/results.json" \
  -p NUM_WORKERS 8 -p CACHE_DIR /tmp/tutorial-cache -p FIGURES_DIR /tmp/tutorial-figures

#!/usr/bin/env bash
# One short GPU check (run on a lent GPU machine; CI never needs it): bench/gpu/check.py (fast step, loader, compiled
# and AOT inference against the measured bf16 peak; docs/performance.md), then paper-profile training throughput of every
# member, the CheXzero-size CLIP step, and a real `cxrlt train` under torchrun (nccl + bf16 autocast) on synthetic
# 512 px images. Usage: bash bench/gpu_check.sh [LOGDIR]
set -uo pipefail
LOG=${1:-gpu_check_out}
mkdir -p "$LOG"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$LOG/gpu.txt"
# kornia (the augmentation on the device) is not on the GPU machine: its wheels travel in bench/gpu/wheels, made here with
#   pip download --no-deps -d bench/gpu/wheels kornia==0.9.0 kornia_rs==0.2.0 --only-binary :all: --python-version 3.X
python3 -c "import kornia" 2>/dev/null || python3 -m pip install --quiet --no-index --find-links bench/gpu/wheels kornia kornia_rs 2>&1 | tail -2
python3 -c "import torch, timm, open_clip, kornia; print('torch', torch.__version__, 'timm', timm.__version__, 'open_clip', open_clip.__version__, 'kornia', kornia.__version__)" | tee -a "$LOG/gpu.txt"
timeout 480 python3 bench/gpu/check.py --out "$LOG/check" 2>&1 | grep -v Warning | tee "$LOG/check.txt"
timeout 200 python3 bench/train_throughput.py --profiles tiny paper --steps 5 2>&1 | grep -v Warning | tee "$LOG/train_throughput.txt"
timeout 100 python3 bench/zeroshot_throughput.py --profiles tiny paper --steps 5 2>&1 | grep -v Warning | tee "$LOG/zeroshot_throughput.txt"
D=$(mktemp -d)
python3 -m cxrlt.cli data synth --out "$D/data" --n-images 240 --size 512 --seed 0 --workers 8 > /dev/null 2>&1
timeout 150 python3 -m torch.distributed.run --standalone --nproc_per_node 1 -m cxrlt.cli train --member mixed/pcam \
  --config configs/paper.yaml --data "$D/data" --out "$D/run" --epochs 1 2>&1 | grep -vE "batch/s|img/s|Warning" | tail -5 | tee "$LOG/ddp_amp_train.txt"

#!/usr/bin/env bash
# Issue #6's GPU checks in one run on a lent device machine (/work/.library/device): the CUDA
# tests, then PPO on the batched CartPole with 2048 envs, recorded iterations (cuda_graph) and
# eager ones, appended to benchmarks/results/torch_env_ppo.md and copied to $OUT; last, the time
# and kernels of one replayed iteration (benchmarks/replay_profile.py). It took 114 s on an H200.
#
# The machine has PyTorch but not Gymnasium; bring its wheels first, here, in the repo's root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl gymnasium==1.4.0 farama-notifications
# then call the device tool's run with: command "bash benchmarks/gpu_check.sh", carry [".whl"], timeout_s 540.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"

timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_graphs.py tests/test_torch_envs.py -k "cuda" 2>&1 | tail -15

bench() { timeout "$1" python3 benchmarks/torch_env_ppo.py --device cuda --num-envs 2048 --save "${@:2}" 2>&1 | grep -v "^step"; }
# 10M steps: at 5M seed 0 evaluated 444 on the H200 (session 32), seeds 1 and 2 500
bench 180 --steps 10000000 --seeds 0 1 2                        # recorded iterations: steps/s and return
bench 90 --steps 5000000 --seeds 0 --set cuda_graph=false        # the same, every kernel launched from Python
bench 60 --steps 5000000 --seeds 0 --set num_steps=16 --set update_epochs=2  # half the updates per step
timeout 60 python3 benchmarks/replay_profile.py --num-envs 2048 --table 2>&1 | grep -v "^step"  # a replay's time and kernels
timeout 45 python3 benchmarks/replay_profile.py --num-envs 8192 2>&1 | grep -v "^step"
cp benchmarks/results/torch_env_ppo.md "$OUT/"

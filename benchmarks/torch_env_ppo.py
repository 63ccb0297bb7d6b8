"""PPO end to end on the batched PyTorch envs (``env_backend=torch``): steps/s and final return.

    python benchmarks/torch_env_ppo.py --device cuda --num-envs 2048 --steps 5000000 [--seeds 0 1 2]
        [--set key=value ...] [--save]

The envs, the policy, the rollout buffer and the update all live on ``--device``; the host only
sees one batch of episode statistics and the metrics per update. On a GPU each iteration after
the first two is a replayed CUDA graph (``cuda_graph=true``; ``--set cuda_graph=false`` runs
every kernel from Python instead). Training time excludes the start-up (building the agent, CUDA
context); steps/s counts all of it, and again from the end of the third iteration (after the two
eager ones and the record: the replays' rate). The policy is then evaluated for 20 deterministic
episodes in the real Gymnasium env on the host. With ``--save`` the table is appended, with the
date, device and command, to ``benchmarks/results/torch_env_ppo.md``.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policyopt import PPO  # noqa: E402  (policyopt before torch: policyopt/mkl_dispatch.py)
from policyopt.config import parse_set  # noqa: E402

import torch  # noqa: E402

# Many envs, few steps each: one rollout of 2048 x 32 = 64k transitions, 4 epochs of 4 minibatches;
# 5M steps reached 500, 485 and 500 (seeds 0-2) on the CPU (benchmarks/results/torch_env_ppo.md).
DEFAULTS = dict(num_steps=32, batch_size=16384, update_epochs=4, learning_rate=2.5e-3, gamma=0.99, gae_lambda=0.95,
                anneal_lr=True, clip_coef=0.2, ent_coef=0.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="CartPole-v1")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--num-envs", type=int, default=2048)
    p.add_argument("--steps", type=int, default=5_000_000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--save", action="store_true")
    args = p.parse_args()
    config = {**DEFAULTS, "cuda_graph": args.device.startswith("cuda"), **parse_set(args.overrides),
              "num_envs": args.num_envs, "env_backend": "torch"}
    rows = []
    for seed in args.seeds:
        agent = PPO(args.env, seed=seed, device=args.device, preset=False, config=config)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        marks = []  # (time, global_step) after each iteration; iterate() reads its metrics, so the device is done
        t0 = time.perf_counter()
        agent.learn(args.steps, progress=False, callback=lambda a, _: marks.append((time.perf_counter(), a.global_step)))
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        (t3, s3), (tn, sn) = marks[min(2, len(marks) - 2)], marks[-1]  # from the end of the third iteration
        score = float(np.mean(agent.evaluate(20)))
        rows.append(f"| {args.env} | {args.device} | {args.num_envs} | {agent.global_step} | {seed} | "
                    f"{agent.global_step / seconds:,.0f} | {(sn - s3) / (tn - t3):,.0f} | {seconds:.1f} | {score:.1f} |")
        print(rows[-1], flush=True)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    table = "\n".join(["| env | device | envs | steps | seed | steps/s | steps/s after 3 iterations | train s | eval return (20 ep) |",
                       "|---|---|---|---|---|---|---|---|---|", *rows])
    print(table)
    if args.save:
        path = Path(__file__).resolve().parent / "results" / "torch_env_ppo.md"
        command = " ".join(["python", "benchmarks/torch_env_ppo.py", *sys.argv[1:]])
        with path.open("a") as f:
            f.write(f"\n{datetime.date.today()}, {device}, torch {torch.__version__}: `{command}`\n"
                    f"config: {config}\n\n{table}\n")


if __name__ == "__main__":
    main()

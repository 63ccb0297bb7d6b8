"""Where a recorded PPO iteration's time goes (``cuda_graph=true``, ``env_backend=torch``).

    python benchmarks/replay_profile.py [--device cuda] [--num-envs 2048] [--table]

Trains the ``torch_env_ppo.py`` config until the iteration is recorded, then times 30 replays
of the record alone and 30 whole ``iterate()`` calls (the replay plus the host's work around it:
the learning rate and clip range in, the metrics and finished episodes out), and on a GPU counts
the kernels of a replay and their device time with the PyTorch profiler (``--table``: the 20
kernels that take the most).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from policyopt import PPO  # noqa: E402  (policyopt before torch: policyopt/mkl_dispatch.py)
from torch_env_ppo import DEFAULTS  # noqa: E402

import torch  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--num-envs", type=int, default=2048)
    p.add_argument("--table", action="store_true")
    args = p.parse_args()
    cuda = args.device.startswith("cuda")
    # 4 minibatches per epoch at any env count, as the default config has with 2048 envs
    config = {**DEFAULTS, "cuda_graph": True, "num_envs": args.num_envs, "env_backend": "torch",
              "batch_size": args.num_envs * DEFAULTS["num_steps"] // 4}
    agent = PPO("CartPole-v1", seed=0, device=args.device, preset=False, config=config)
    steps = args.num_envs * config["num_steps"]
    agent.learn(steps * 100, progress=False, callback=lambda a, _: a.num_updates < 4)  # 2 eager, the record, 1 replay
    runner = agent.runner
    assert runner.graph.recorded

    def timed(call, reps: int = 30) -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            call()
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / reps

    replay, iterate = timed(runner.graph), timed(runner.iterate)
    print(f"{args.num_envs} envs, {steps} steps per iteration: replay {replay * 1e3:.2f} ms ({steps / replay:,.0f} steps/s), "
          f"iterate() {iterate * 1e3:.2f} ms ({steps / iterate:,.0f} steps/s)")
    if cuda:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            timed(runner.graph, reps=3)
        events = prof.key_averages()
        kernels = [e for e in events if e.device_type.name == "CUDA"]
        print(f"per replay: {sum(e.count for e in kernels) / 3:.0f} kernels, "
              f"{sum(e.device_time_total for e in kernels) / 3e3:.2f} ms of kernel time")
        if args.table:
            print(events.table(sort_by="device_time_total", row_limit=20, max_name_column_width=60))


if __name__ == "__main__":
    main()

"""Random-action throughput of the batched torch CartPole next to Gymnasium's vector envs.

    python benchmarks/torch_env_throughput.py [--sizes 8 256 2048 8192] [--steps 1000]
                                              [--devices cpu cuda] [--threads 1]

(with policyopt installed, ``pip install -e .``, or ``PYTHONPATH=.`` from the repository root).

Prints a Markdown table of env steps per second (num_envs x steps / wall time) for
- policyopt's ``TorchVecEnv`` CartPole-v1 on each device (CUDA when available) and size,
  actions drawn on the device with ``torch.randint`` every step, autoreset included;
- Gymnasium's NumPy ``CartPoleVectorEnv`` (``vectorization_mode="vector_entry_point"``) at
  each size, actions drawn with NumPy;
- Gymnasium's ``SyncVectorEnv`` (one Python env per copy) at 8 envs.
Each measurement runs ``--warmup`` untimed steps first; on CUDA the clock is read only
after ``torch.cuda.synchronize()``.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np

from policyopt.envs.torch_envs import make_torch_vec_env  # policyopt before torch: policyopt/mkl_dispatch.py

import torch  # noqa: E402

ENV_ID = "CartPole-v1"


def steps_per_second(step: Callable[[], None], num_envs: int, steps: int, warmup: int, sync: Callable[[], None]) -> float:
    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return num_envs * steps / (time.perf_counter() - start)


def torch_env(num_envs: int, device: str, steps: int, warmup: int) -> float:
    env = make_torch_vec_env(ENV_ID, num_envs, seed=0, device=device)
    generator = torch.Generator(device).manual_seed(1)

    def step() -> None:
        env.step(torch.randint(0, 2, (num_envs,), device=device, generator=generator))

    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    return steps_per_second(step, num_envs, steps, warmup, sync)


def gymnasium_env(num_envs: int, mode: str, steps: int, warmup: int) -> float:
    envs = gym.make_vec(ENV_ID, num_envs, vectorization_mode=mode)
    envs.reset(seed=0)
    rng = np.random.default_rng(1)

    def step() -> None:
        envs.step(rng.integers(0, 2, num_envs))

    try:
        return steps_per_second(step, num_envs, steps, warmup, lambda: None)
    finally:
        envs.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 256, 2048, 8192])
    parser.add_argument("--steps", type=int, default=1000, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"], help="cuda is skipped when unavailable")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = [d for d in args.devices if d != "cuda" or torch.cuda.is_available()]

    gpu = f", {torch.cuda.get_device_name()}" if "cuda" in devices else ""
    print(f"# {ENV_ID} random-action throughput ({platform.processor() or platform.machine()}{gpu}, "
          f"torch {torch.__version__}, gymnasium {gym.__version__}, {args.threads} torch thread(s), {args.steps} steps)")
    print("| implementation | device | num_envs | env steps/s |")
    print("| --- | --- | ---: | ---: |")
    rows = [("gymnasium SyncVectorEnv", "cpu", 8, lambda: gymnasium_env(8, "sync", args.steps, args.warmup))]
    for n in args.sizes:
        rows.append(("gymnasium CartPoleVectorEnv", "cpu", n, lambda n=n: gymnasium_env(n, "vector_entry_point", args.steps, args.warmup)))
        for device in devices:
            rows.append(("policyopt TorchVecEnv", device, n, lambda n=n, d=device: torch_env(n, d, args.steps, args.warmup)))
    for name, device, n, measure in rows:
        print(f"| {name} | {device} | {n} | {measure():,.0f} |", flush=True)


if __name__ == "__main__":
    main()

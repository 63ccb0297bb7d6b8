"""Side-by-side benchmark: policyopt against stable-baselines3 on the same configuration.

    python benchmarks/compare.py --algo ppo --env CartPole-v1 --steps 100000 --seeds 0 1 2 --threshold 475
    python benchmarks/compare.py --algo sac --env Pendulum-v1 --steps 20000 --seeds 0 1 2 --threshold -200

Each (library, seed) trains in a fresh child process, one after the other (seed by seed, the
libraries back to back), so timings and peak memory do not leak between runs. Both libraries
get the same hyperparameters: the policyopt config (preset for the env + ``--set``
overrides) is translated to SB3 keywords.
Every ``--eval-every`` steps the training clock stops and both policies are evaluated the
same way (``--eval-episodes`` deterministic episodes on a fresh Gymnasium env, seeds
10000 + i); "time to threshold" is the training time (evaluation excluded) at the first
evaluation whose mean reaches ``--threshold``. The raw random-action throughput of each
library's vector env is measured too, in each training process just before and after it
trains: the ceiling for steps/s.

Importing policyopt takes Intel MKL past its CPU-vendor check on AMD CPUs, so that it runs
the kernels the CPU supports (``policyopt/mkl_dispatch.py``). The SB3 child runs with MKL's
own choice, as SB3's users get it; ``--sb3-mkl-dispatch`` gives SB3 the same kernels.

SAC: automatic entropy tuning maps to SB3's ``ent_coef="auto_<alpha>"`` with the same target
entropy; options SB3 has no equivalent for (a separate critic learning rate, delayed actor
updates) stop the script. A difference that remains: SB3 clamps the actor's log-std to
[-20, 2], policyopt squashes it smoothly into [-5, 2] (CleanRL's choice).

Prints a markdown table and a line timing the machine's kernels and interpreter with the
package versions (``machine_probe``), and appends both, with the date, machine and command, to
``benchmarks/results/<algo>_<env>.md`` when ``--save`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

LIBS = ("policyopt", "sb3")


def policyopt_agent(algo: str, env_id: str, overrides: dict, seed: int = 0) -> tuple[object, dict]:
    """The policyopt agent (preset + overrides) and its resolved config as a dict."""
    from policyopt.config import to_dict
    from policyopt.registry import get_algorithm

    agent = get_algorithm(algo)(env_id, seed=seed, config=overrides)
    return agent, to_dict(agent.config)


def linear(start: float):
    return lambda progress_remaining: progress_remaining * start


def sb3_model(algo: str, env_id: str, cfg: dict, seed: int):
    import torch
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.env_util import make_vec_env

    activation = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[cfg.get("activation", "relu")]
    if algo == "ppo":
        env = make_vec_env(env_id, n_envs=cfg["num_envs"], seed=seed)
        hidden = list(cfg["hidden_sizes"])
        return PPO(
            "MlpPolicy",
            env,
            n_steps=cfg["num_steps"],
            batch_size=cfg["batch_size"],
            n_epochs=cfg["update_epochs"],
            gamma=cfg["gamma"],
            gae_lambda=cfg["gae_lambda"],
            learning_rate=linear(cfg["learning_rate"]) if cfg["anneal_lr"] else cfg["learning_rate"],
            clip_range=linear(cfg["clip_coef"]) if cfg["anneal_clip"] else cfg["clip_coef"],
            ent_coef=cfg["ent_coef"],
            vf_coef=cfg["vf_coef"],
            max_grad_norm=cfg["max_grad_norm"],
            normalize_advantage=cfg["norm_adv"],
            target_kl=cfg["target_kl"],
            policy_kwargs=dict(
                net_arch=dict(pi=hidden, vf=hidden),
                activation_fn=activation,
                ortho_init=cfg["ortho_init"],
                log_std_init=cfg["log_std_init"],
                optimizer_kwargs=dict(eps=cfg["adam_eps"]),
            ),
            seed=seed,
            device="cpu",
        )
    if algo == "sac":
        if cfg["critic_learning_rate"] not in (None, cfg["learning_rate"]) or cfg["policy_frequency"] != 1:
            raise SystemExit("SB3 SAC has one learning rate and updates the actor after every critic update")
        env = make_vec_env(env_id, n_envs=cfg["num_envs"], seed=seed)
        return SAC(
            "MlpPolicy",
            env,
            learning_rate=cfg["learning_rate"],
            buffer_size=cfg["buffer_size"],
            learning_starts=cfg["learning_starts"],
            batch_size=cfg["batch_size"],
            tau=cfg["tau"],
            gamma=cfg["gamma"],
            train_freq=cfg["train_frequency"],
            gradient_steps=cfg["gradient_steps"],
            target_update_interval=cfg["target_network_frequency"],
            ent_coef=f"auto_{cfg['alpha']}" if cfg["autotune"] else cfg["alpha"],
            target_entropy="auto" if cfg["target_entropy"] is None else cfg["target_entropy"],
            policy_kwargs=dict(net_arch=list(cfg["hidden_sizes"]), activation_fn=activation),
            seed=seed,
            device="cpu",
        )
    raise SystemExit(f"no SB3 mapping for {algo}")


def evaluate(predict, env_id: str, episodes: int) -> float:
    import gymnasium as gym

    env = gym.make(env_id)
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=10_000 + i)
        done, total = False, 0.0
        while not done:
            obs, reward, terminated, truncated, _ = env.step(predict(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns))


class Clock:
    """Training time with evaluation pauses taken out, and the evaluation curve."""

    def __init__(self, args):
        self.args = args
        self.next_eval = args.eval_every
        self.eval_s = 0.0
        self.t0 = time.perf_counter()
        self.curve: list[tuple[int, float, float]] = []  # (steps, train seconds, mean return)

    def train_seconds(self) -> float:
        return time.perf_counter() - self.t0 - self.eval_s

    def maybe_eval(self, steps: int, predict) -> None:
        if steps < self.next_eval:
            return
        self.next_eval += self.args.eval_every
        t = time.perf_counter()
        train_s = self.train_seconds()
        self.curve.append((steps, train_s, evaluate(predict, self.args.env, self.args.eval_episodes)))
        self.eval_s += time.perf_counter() - t

    def time_to(self, threshold: float) -> tuple[float | None, int | None]:
        for steps, seconds, ret in self.curve:
            if ret >= threshold:
                return seconds, steps
        return None, None


def run_child(args) -> dict:
    if args.lib == "sb3" and not args.sb3_mkl_dispatch:
        # SB3 as its users run it: MKL's own kernel choice (policyopt's import would change it)
        os.environ["POLICYOPT_MKL_VENDOR_CHECK"] = "keep"
    import policyopt  # noqa: F401  (before torch: policyopt/mkl_dispatch.py)
    import torch

    torch.set_num_threads(args.threads)
    overrides = dict(kv.split("=", 1) for kv in args.set)
    agent, cfg = policyopt_agent(args.algo, args.env, overrides, args.seed)
    # the ceiling, measured in this process just before and just after training, so that it
    # sees the machine in the phase the training saw (a shared VM's speed drifts by 30%)
    raw_before = raw_env_sps(args.lib, args.env, cfg["num_envs"], args.raw_steps, cfg["env_backend"])
    if args.lib == "policyopt":
        clock = Clock(args)
        agent.learn(args.steps, progress=False, callback=lambda a, m: clock.maybe_eval(a.global_step, a.predict))
        train_s = clock.train_seconds()
        final = evaluate(agent.predict, args.env, args.final_episodes)
    else:
        import contextlib

        from stable_baselines3.common.callbacks import BaseCallback

        from policyopt.runtime import flush_denormals

        model = sb3_model(args.algo, args.env, cfg, args.seed)

        class Eval(BaseCallback):
            def _on_step(self) -> bool:
                clock.maybe_eval(self.num_timesteps, lambda o: model.predict(o, deterministic=True)[0])
                return True

        clock = Clock(args)
        # the mode policyopt's training runs in, on every torch thread, when asked for
        with flush_denormals() if args.sb3_flush_denormals else contextlib.nullcontext():
            model.learn(args.steps, callback=Eval())
        train_s = clock.train_seconds()
        final = evaluate(lambda o: model.predict(o, deterministic=True)[0], args.env, args.final_episodes)
    tt, ts = clock.time_to(args.threshold) if args.threshold is not None else (None, None)
    raw_after = raw_env_sps(args.lib, args.env, cfg["num_envs"], args.raw_steps, cfg["env_backend"])
    return {
        "lib": args.lib,
        "seed": args.seed,
        "sps": args.steps / train_s,
        "train_s": train_s,
        "time_to_threshold": tt,
        "steps_to_threshold": ts,
        "final_return": final,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "curve": clock.curve,
        "raw_sps": (raw_before + raw_after) / 2,
    }


def raw_env_sps(lib: str, env_id: str, num_envs: int, steps: int, backend: str = "gymnasium") -> float:
    """Random-action steps/s of the vector env each library trains on."""
    if lib == "policyopt":
        from policyopt.envs import make_vec_env

        envs = make_vec_env(env_id, num_envs, seed=0, backend=backend)
        envs.reset()
        space = envs.single_action_space
        actions = [np.stack([space.sample() for _ in range(num_envs)]) for _ in range(64)]
        t = time.perf_counter()
        for i in range(steps // num_envs):
            envs.step(actions[i % 64])
    else:
        from stable_baselines3.common.env_util import make_vec_env

        envs = make_vec_env(env_id, n_envs=num_envs, seed=0)
        envs.reset()
        actions = [np.stack([envs.action_space.sample() for _ in range(num_envs)]) for _ in range(64)]
        t = time.perf_counter()
        for i in range(steps // num_envs):
            envs.step(actions[i % 64])
    return (steps // num_envs) * num_envs / (time.perf_counter() - t)


def machine_probe() -> str:
    """One line that tells machines (and one machine's phases) apart: the time of a float32 matmul
    and of ``tanh`` at the sizes of these networks, and of a loop in plain Python, on one thread.
    policyopt spends most of its time in such kernels and SB3 more of its time in Python, so their
    ratio moves with the balance of the two (session 22: 2.67x on a VM whose matmul was 1.6x
    slower than before, where the same code had measured 3.27x)."""
    import importlib.metadata
    import timeit

    from policyopt import mkl_dispatch  # before torch: policyopt/mkl_dispatch.py
    import torch
    from policyopt.runtime import at_most_threads

    def best_us(f, calls: int) -> float:
        return min(timeit.repeat(f, number=calls, repeat=5)) / calls * 1e6

    a, h = torch.randn(256, 256), torch.randn(256, 64)
    with at_most_threads(1):
        matmul, tanh = best_us(lambda: a.mm(a), 200), best_us(lambda: torch.tanh(h), 1000)
    loop = best_us(lambda: sum(range(1000)), 1000)
    versions = []
    for name in ("torch", "numpy", "gymnasium", "stable_baselines3"):
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return (
        f"machine (one thread, best of 5): 256x256x256 matmul {matmul:.0f} us, tanh of 256x64 {tanh:.0f} us, "
        f"sum(range(1000)) in Python {loop:.1f} us; MKL kernels: {mkl_dispatch.code_path()} "
        f"(policyopt's vendor-check bypass: {mkl_dispatch.STATUS}); {', '.join(versions)}"
    )


def fmt(x, spec=".0f"):
    return "-" if x is None else format(x, spec)


def summarize(rows: list[dict], args) -> str:
    lines = [
        f"| library | steps/s (mean) | time to {args.threshold} (s, mean / per seed) | final return (mean / min) | peak RSS MB | raw env steps/s |",
        "|---|---|---|---|---|---|",
    ]
    by_lib = {lib: [r for r in rows if r["lib"] == lib] for lib in args.libs}
    for lib, rs in by_lib.items():
        sps = np.mean([r["sps"] for r in rs])
        times = [r["time_to_threshold"] for r in rs]
        reached = [t for t in times if t is not None]
        mean_t = np.mean(reached) if len(reached) == len(times) else None
        finals = [r["final_return"] for r in rs]
        lines.append(
            f"| {lib} | {sps:,.0f} | {fmt(mean_t, '.1f')} / {', '.join(fmt(t, '.1f') for t in times)} "
            f"| {np.mean(finals):.1f} / {np.min(finals):.1f} | {max(r['peak_rss_mb'] for r in rs):.0f} | {np.mean([r['raw_sps'] for r in rs]):,.0f} |"
        )
    if set(by_lib) >= {"policyopt", "sb3"}:
        ours, peer = by_lib["policyopt"], by_lib["sb3"]
        ratio = np.mean([r["sps"] for r in ours]) / np.mean([r["sps"] for r in peer])
        lines.append("")
        paired = ", ".join(f"{a['sps'] / b['sps']:.2f}" for a, b in zip(ours, peer))
        lines.append(f"steps/s ratio policyopt / sb3: **{ratio:.2f}x** (per seed: {paired})")
        t_ours = [r["time_to_threshold"] for r in ours]
        t_peer = [r["time_to_threshold"] for r in peer]
        if None not in t_ours and None not in t_peer:
            lines.append(f"time-to-threshold ratio policyopt / sb3: **{np.mean(t_ours) / np.mean(t_peer):.2f}** (lower is better)")
    if "policyopt" in by_lib:
        ours = by_lib["policyopt"]
        fractions = ", ".join(f"{r['sps'] / r['raw_sps']:.1%}" for r in ours)
        lines.append("")
        lines.append(
            f"policyopt training steps/s as a fraction of its raw env steps/s (each seed against the raw env "
            f"measured in its own process): **{np.mean([r['sps'] / r['raw_sps'] for r in ours]):.1%}** (per seed: {fractions})"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algo", default="ppo")
    p.add_argument("--env", default="CartPole-v1")
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--eval-every", type=int, default=5_000)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--final-episodes", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads, the same for both libraries")
    p.add_argument("--sb3-flush-denormals", action="store_true", help="run SB3 with denormals flushed to zero too")
    p.add_argument(
        "--sb3-mkl-dispatch", action="store_true", help="run SB3 with policyopt's MKL kernel choice too (mkl_dispatch.py)"
    )
    p.add_argument("--libs", nargs="+", default=list(LIBS), choices=LIBS)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="policyopt config override (mapped to SB3)")
    p.add_argument("--raw-steps", type=int, default=50_000)
    p.add_argument("--save", action="store_true", help="append the table to benchmarks/results/")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--lib", choices=LIBS, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child:
        print("RESULT " + json.dumps(run_child(args)), flush=True)
        return

    rows = []
    # seed by seed, the libraries back to back, so that a change in the machine's load (a shared
    # VM's neighbours) hits both libraries alike instead of one library's whole block
    for seed in args.seeds:
        for lib in args.libs:
            cmd = [sys.executable, __file__, "--child", "--lib", lib, "--seed", str(seed)] + [
                a for a in sys.argv[1:] if a not in ("--save",)
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            result = next((line[7:] for line in out.stdout.splitlines() if line.startswith("RESULT ")), None)
            if result is None:
                sys.stderr.write(out.stdout[-3000:] + out.stderr[-3000:])
                raise SystemExit(f"{lib} seed {seed} failed")
            row = json.loads(result)
            rows.append(row)
            print(
                f"{lib:10s} seed {seed}: {row['sps']:8,.0f} steps/s  train {row['train_s']:6.1f}s  "
                f"to threshold {fmt(row['time_to_threshold'], '.1f')}s ({fmt(row['steps_to_threshold'], 'd')} steps)  "
                f"final {row['final_return']:.1f}",
                flush=True,
            )
    table = summarize(rows, args) + "\n\n" + machine_probe()
    print()
    print(table)
    if args.save:
        header = (
            f"\n## {time.strftime('%Y-%m-%d')} — {platform.machine()}, {os.cpu_count()} cores, "
            f"torch threads {args.threads}\n\n`python benchmarks/compare.py {' '.join(sys.argv[1:])}`\n\n"
        )
        out = Path(__file__).parent / "results" / f"{args.algo}_{args.env}.md"
        out.parent.mkdir(exist_ok=True)
        with out.open("a") as f:
            f.write(header + table + "\n")
        print(f"\nappended to {out}")


if __name__ == "__main__":
    main()

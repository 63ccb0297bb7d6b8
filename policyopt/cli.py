"""The ``policyopt`` command: list, train, eval, plot, sweep.

Exit codes: 0 on success, 2 on bad input (one line on stderr starting with ``error:``),
1 on a failure during training, 128 + signal number when interrupted (after a checkpoint).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from policyopt import registry
from policyopt.checkpoint import CheckpointError
from policyopt.config import ConfigError, load_yaml, parse_set, presets, to_dict
from policyopt.envs.vector import EnvError

DEFAULT_ALGO = "ppo"
DEFAULT_ENV = "CartPole-v1"
FALLBACK_STEPS = 1_000_000

BAD_INPUT = (ConfigError, EnvError, CheckpointError, FileNotFoundError)


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one ``error:`` line and exit code 2."""

    def error(self, message: str) -> None:
        raise UsageError(message)


THREADS_HELP = (
    "torch CPU threads (default 1: RL networks are small, and a second thread only adds "
    "synchronization, which stalls badly when the env or another process holds the other core)"
)


def build_parser() -> Parser:
    parser = Parser(prog="policyopt", description="Policy optimization, from value iteration to SAC.")
    sub = parser.add_subparsers(dest="command", parser_class=Parser)

    p_list = sub.add_parser("list", help="algorithms (one per line), or one algorithm's default config")
    p_list.add_argument("algo", nargs="?", help="print this algorithm's default config and presets")

    p_train = sub.add_parser("train", help="train an agent and write a run directory")
    p_train.add_argument("algo", nargs="?", default=DEFAULT_ALGO, help=f"algorithm name (default {DEFAULT_ALGO})")
    p_train.add_argument("--env", default=None, help=f"Gymnasium env id (default {DEFAULT_ENV})")
    p_train.add_argument("--steps", type=_int, default=None, help="environment steps (default: the preset's budget)")
    p_train.add_argument("--seed", type=_int, default=0)
    p_train.add_argument("--num-envs", type=_int, default=None, help="parallel envs (sets num_envs)")
    p_train.add_argument("--run-dir", default=None, help="default runs/<env>__<algo>__<seed>__<timestamp>")
    p_train.add_argument("--config", default=None, help="YAML file of config key: value")
    p_train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p_train.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue this run from its last checkpoint")
    p_train.add_argument("--device", default="cpu")
    p_train.add_argument("--threads", type=_int, default=1, help=THREADS_HELP)
    p_train.add_argument("--no-preset", action="store_true", help="ignore the tuned preset for this env")
    p_train.add_argument("--eval-episodes", type=_int, default=20, help="evaluation episodes after training")
    p_train.add_argument("--checkpoint-every", type=_int, default=None, help="steps between checkpoints")
    p_train.add_argument("--eval-every", type=_int, default=0, metavar="N",
                         help="every N steps evaluate the greedy policy on 10 episodes, log eval/return and "
                              "keep the best policy in RUN_DIR/best_model.pt (default 0: off)")
    p_train.add_argument("--no-progress", action="store_true", help="no progress bar")
    p_train.add_argument("--workers", type=_int, default=None,
                         help="Ray rollout worker processes (sets workers; IMPALA's actors, or distributed on-policy sampling)")
    p_train.add_argument("--ray-address", default=None, help="Ray instance to join (default: start a local one)")

    p_eval = sub.add_parser("eval", help="evaluate a trained run")
    p_eval.add_argument("run_dir")
    p_eval.add_argument("--episodes", type=_int, default=10)
    p_eval.add_argument("--seed", type=_int, default=None, help="seed of the first episode (default: training seed + 10000)")
    p_eval.add_argument("--video", action="store_true", help="record videos to RUN_DIR/videos")
    p_eval.add_argument("--stochastic", action="store_true", help="sample actions instead of the mode")
    p_eval.add_argument("--best", action="store_true", help="the run's best_model.pt (train --eval-every), not its final model")
    p_eval.add_argument("--threads", type=_int, default=1, help=THREADS_HELP)

    p_plot = sub.add_parser("plot", help="learning curves of one or more runs")
    p_plot.add_argument("run_dirs", nargs="+")
    p_plot.add_argument("-o", "--output", default="curve.png")
    p_plot.add_argument("--metric", default="rollout/ep_return", help="column of metrics.csv to plot")
    p_plot.add_argument("--smooth", type=_int, default=1, help="moving-average window (rows)")

    p_sweep = sub.add_parser("sweep", help="grid or random search over configs and seeds, as Ray tasks")
    p_sweep.add_argument("config", help="sweep YAML: algo, env, steps, seeds, grid or random + trials (see policyopt.sweep)")
    p_sweep.add_argument("--out", default=None, help="output directory (default sweeps/<name>__<timestamp>)")
    p_sweep.add_argument("--address", default=None, help="Ray cluster to join (overrides the file's address)")
    return parser


def _int(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return int(value)


def cmd_list(args: argparse.Namespace) -> int:
    if args.algo is None:
        width = max(map(len, registry.names()))
        for name in registry.names():
            print(f"{name:<{width}}  {registry.describe(name)}")
        return 0
    cls = registry.get_algorithm(args.algo)
    print(f"# {args.algo}: {registry.describe(args.algo.lower())}")
    print("# default config")
    for key, value in to_dict(cls.Config()).items():
        print(f"{key}: {json.dumps(value)}")
    envs = sorted(presets(cls.name))
    if envs:
        print(f"# presets: {', '.join(envs)}")
    return 0


def default_run_dir(env_id: str, algo: str, seed: int) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{env_id.replace('/', '-')}__{algo}__{seed}__{stamp}"


def _print_eval(returns: list[float]) -> dict[str, float]:
    from policyopt.evaluation import summarize

    summary = summarize(returns)
    print(f"episodes: {len(returns)}")
    print(f"std_return: {summary['std_return']:.3f}")
    print(f"mean_return: {summary['mean_return']:.3f}")
    return summary


def cmd_train(args: argparse.Namespace) -> int:
    from policyopt.loops import resume

    if args.resume:
        if args.eval_every:
            raise ConfigError("--eval-every cannot be set with --resume: the run continues its own periodic evaluation")
        agent = resume(args.resume, total_steps=args.steps, progress=not args.no_progress, device=args.device)
        agent.close()
        run_dir = Path(args.resume)
    else:
        cls = registry.get_algorithm(args.algo)
        solver = getattr(cls, "solves_to_convergence", False)  # DP: --steps caps the iterations
        if args.eval_every and solver:
            raise ConfigError(f"--eval-every needs an algorithm that learns from env steps; {cls.name} solves the env's model")
        env_id = args.env or DEFAULT_ENV
        overrides: dict[str, Any] = {}
        if args.config:
            overrides.update(load_yaml(args.config))
        overrides.update(parse_set(args.overrides))
        if args.num_envs is not None:
            overrides["num_envs"] = args.num_envs
        if args.workers is not None:
            overrides["workers"] = args.workers
        if args.ray_address is not None:
            overrides["ray_address"] = args.ray_address
        if args.steps is not None and args.steps <= 0:
            raise ConfigError(f"--steps must be > 0, got {args.steps}")
        agent = cls(env_id, seed=args.seed, device=args.device, preset=not args.no_preset, config=overrides)
        steps = args.steps or agent.suggested_steps or (None if solver else FALLBACK_STEPS)
        run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(env_id, cls.name, args.seed)
        budget = "until converged" if steps is None else f"for {steps} {'iterations' if solver else 'steps'}"
        print(f"training {cls.name} on {env_id} {budget}, seed {args.seed} -> {run_dir}")
        try:
            evaluation = {"eval_every": args.eval_every} if args.eval_every else {}
            agent.learn(
                steps, run_dir=run_dir, progress=not args.no_progress, checkpoint_every=args.checkpoint_every, **evaluation
            )
        finally:
            agent.close()
    if getattr(agent, "best", None) is not None:
        print(f"best model: step {agent.best['step']}, eval/return {agent.best['return']:.3f} -> {run_dir / 'best_model.pt'}")
    if args.eval_episodes > 0:
        summary = _print_eval(agent.evaluate(args.eval_episodes))
        (run_dir / "eval.json").write_text(json.dumps({"episodes": args.eval_episodes, **summary}))
    return 0


def load_run(run_dir: str | Path, device: str = "cpu", best: bool = False):
    """The trained agent of a run directory: its final model, else its newest checkpoint;
    with ``best``, the best policy of its periodic evaluation."""
    from policyopt import checkpoint

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir} does not exist")
    if best:
        path = run_dir / "best_model.pt"
        if not path.exists():
            raise CheckpointError(f"{run_dir} holds no best_model.pt (train with --eval-every N to keep one)")
    else:
        path = run_dir / "model.pt"
    if not path.exists():
        path = checkpoint.CheckpointDir(run_dir).latest()
        if path is None:
            raise CheckpointError(f"{run_dir} holds no model.pt and no checkpoint")
    payload = checkpoint.load(path, map_location=device)
    cls = registry.get_algorithm(payload["agent"]["algo"])
    return cls.from_state(payload["agent"], device=device)


def cmd_eval(args: argparse.Namespace) -> int:
    agent = load_run(args.run_dir, best=args.best)
    video_dir = Path(args.run_dir) / "videos" if args.video else None
    returns = agent.evaluate(args.episodes, seed=args.seed, deterministic=not args.stochastic, video_dir=video_dir)
    for i, ret in enumerate(returns):
        print(f"episode {i}: {ret:.3f}")
    if video_dir is not None:
        print(f"videos: {video_dir}")
    _print_eval(returns)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from policyopt.plotting import plot_runs

    out = plot_runs(args.run_dirs, args.output, metric=args.metric, smooth_window=args.smooth)
    print(f"wrote {out}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from policyopt.sweep import load_sweep, run_sweep

    sweep = load_sweep(args.config)
    out = Path(args.out) if args.out else Path("sweeps") / f"{sweep.name}__{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"sweep {sweep.name}: {sweep.algo} on {sweep.env}, seeds {sweep.seeds} -> {out}")
    rows = run_sweep(sweep, out, address=args.address)
    print(f"wrote {out / 'summary.md'}")
    return 1 if any("error" in r for r in rows) else 0


COMMANDS = {"list": cmd_list, "train": cmd_train, "eval": cmd_eval, "plot": cmd_plot, "sweep": cmd_sweep}


def main(argv: list[str] | None = None) -> int:
    from policyopt.loops import NonFiniteError, TrainingInterrupted

    if argv is None and hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `policyopt list | head` ends quietly
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["train"]  # `policyopt` alone runs the main job: PPO on CartPole-v1
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            raise UsageError("choose a command: list, train, eval, plot, sweep")
        if getattr(args, "threads", None) is not None:
            if args.threads < 1:
                raise UsageError(f"--threads must be >= 1, got {args.threads}")
            import torch

            torch.set_num_threads(args.threads)
        return COMMANDS[args.command](args)
    except (UsageError, *BAD_INPUT) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NonFiniteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except TrainingInterrupted as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except Exception as exc:  # a failure during training: keep the traceback for the bug report
        traceback.print_exc()
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

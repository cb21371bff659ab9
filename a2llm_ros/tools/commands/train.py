"""``a2llm train``: the curriculum (stage 0 tokenizers/base, 1 connector, 2 LoRA reset,
3 affective tuning) on a FLAME-QA directory."""
from __future__ import annotations

import argparse
import sys
import shutil

HELP = "train stages 0-3 on a FLAME-QA set (resumable); --install-default ships the result"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None,
                        help="FLAME-QA directory (a2llm data synth); required unless --estimate")
    parser.add_argument("--out", default=None,
                        help="training output directory; required unless --estimate")
    parser.add_argument("--stage", default="all",
                        help="0, 1, 2, 3, a comma list, or 'all' (default)")
    parser.add_argument("--preset", default=None, choices=("tiny", "edge", "paper"),
                        help="training preset (default: the config file's, else tiny)")
    parser.add_argument("--config", default=None,
                        help="training config YAML (e.g. config/train_tiny.yaml)")
    parser.add_argument("--init", default=None,
                        help="where to start: a checkpoint (its config is the model's), "
                             "or a Step-Audio-2-mini folder itself (edge/paper: its weights "
                             "with new A²-LLM parts); default: random init (tiny)")
    parser.add_argument("--steps-scale", type=float, default=1.0,
                        help="multiply every run's steps (smoke tests)")
    parser.add_argument("--limit", type=int, default=0,
                        help="use at most this many training samples (smoke tests)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (overrides the config; use 1 on a busy machine)")
    parser.add_argument("--no-resume", action="store_true",
                        help="ignore saved resumable state (unfinished runs restart)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--estimate", action="store_true",
                        help="print each run's memory per GPU and expected step time (from "
                             "FLOPs and the GPU's peak) for the config and --init, and exit")
    parser.add_argument("--gpus", type=int, default=1,
                        help="with --estimate: GPUs the job will use (default 1)")
    parser.add_argument("--install-default", action="store_true",
                        help="copy the final checkpoint to the package's default checkpoint")


def parse_stages(text: str):
    """'all' | '2' | '0,1' -> sorted stage numbers."""
    if text == "all":
        return [0, 1, 2, 3]
    try:
        stages = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise SystemExit(f"--stage: expected 0-3, a comma list or 'all', got {text!r}")
    if not stages or any(s not in (0, 1, 2, 3) for s in stages):
        raise SystemExit(f"--stage: stages are 0, 1, 2, 3; got {text!r}")
    return stages


def _scaled(cfg, scale: float):
    from a2llm_ros.tools.training.config import STAGES, replace_stage
    if scale == 1.0:
        return cfg
    for run in STAGES:
        sc = cfg.stage(run)
        steps = max(1, int(round(sc.steps * scale))) if sc.steps else 0
        cfg = replace_stage(cfg, run, steps=steps, warmup_steps=min(sc.warmup_steps, steps),
                            log_every=max(1, min(sc.log_every, steps)),
                            checkpoint_every=max(1, min(sc.checkpoint_every, steps)))
    return cfg


def run(args) -> int:
    from a2llm_ros.tools.training.config import load_train_config
    stages = parse_stages(args.stage)
    overrides = {"threads": args.threads} if args.threads is not None else None
    cfg = _scaled(load_train_config(args.config, args.preset, overrides), args.steps_scale)
    if args.estimate:
        from a2llm_ros.tools.training.memory import print_estimate
        from a2llm_ros.tools.training.stages import start_config
        return print_estimate(cfg, start_config(cfg.preset_name, args.init),
                              world_size=args.gpus)
    if not args.data or not args.out:
        print("a2llm train: --data DIR (a FLAME-QA directory) and --out DIR are required",
              file=sys.stderr)
        return 2
    from a2llm_ros.tools.training.distributed import DistContext
    # one process, or this rank of a torchrun job (collectives fail after dist_timeout_s)
    ctx = DistContext.from_env(cfg.device, cfg.dist_timeout_s)
    try:
        return _train(args, cfg, stages, ctx)
    finally:
        ctx.close()


def _train(args, cfg, stages, ctx) -> int:
    import time

    from a2llm_ros.checkpoint_files import DEFAULT_CHECKPOINT
    from a2llm_ros.tools.training.data import TrainData, rejected_counts
    from a2llm_ros.tools.training.plot import plot_losses
    from a2llm_ros.tools.training.stages import Trainer
    say = print if ctx.is_main else (lambda *a, **k: None)
    t0 = time.time()
    try:
        data = TrainData(args.data, splits=("train",), limit=args.limit or None)
    except (FileNotFoundError, ValueError) as exc:
        print(f"a2llm train: cannot read the training data: {exc}", file=sys.stderr)
        return 2
    why = ", ".join(f"{code} {n}" for code, n in rejected_counts(data.rejected).items())
    say(f"training data: {len(data)} samples from {args.data}"
        + (f" ({len(data.rejected)} skipped: {why})" if data.rejected else "")
        + (f"; {ctx.world_size} ranks, {cfg.strategy}" if ctx.distributed else ""))
    try:
        trainer = Trainer(cfg, data, args.out, init=args.init, progress=not args.no_progress,
                          resume=not args.no_resume, ctx=ctx)
    except (OSError, ValueError) as exc:  # incl. config mismatch, bad checkpoint / backbone
        print(f"a2llm train: {exc}", file=sys.stderr)
        return 2
    for stage in stages:
        for summary in trainer.run_stage(stage):
            say(f"{summary['run']}: {summary['steps']} steps, {summary['seconds']} s")
    if not ctx.is_main:  # rank 0 plots, finalizes and installs
        return 0
    png = plot_losses(args.out)
    final = trainer.finalize()
    print(f"final checkpoint: {final}" + (f"; loss plot: {png}" if png else ""))
    if args.install_default:
        shutil.rmtree(DEFAULT_CHECKPOINT, ignore_errors=True)
        shutil.copytree(final, DEFAULT_CHECKPOINT)
        print(f"installed as the default checkpoint: {DEFAULT_CHECKPOINT}")
    print(f"total {time.time() - t0:.0f} s")
    return 0

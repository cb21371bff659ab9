"""Generic optimisation loop with resumable state, loss log and progress bar.

A run's directory holds::

    losses.jsonl          one JSON line per logged step (step, lr, losses, seconds)
    resume/               latest resumable state: model checkpoint (checkpoint/),
                          optimizer.safetensors, state.json (next step)
    checkpoint/           the model after the run (written by the caller)
    done.json             written when the run finished (summary)

Optimizer state is stored with safetensors (no pickle).  Batches are a pure
function of (seed, run, step) (see :mod:`a2llm_ros.tools.training.data`), so a
resumed run continues exactly where it stopped.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from typing import Callable, Dict, List, Optional

import torch
from safetensors.torch import load_file, save_file

from a2llm_ros.tools.training.config import StageConfig
from a2llm_ros.tools.training.distributed import (DistContext, clip_grad_norm, full_tensor,
                                                  is_sharded, replicated, shard_like)

RESUME_DIR, LOSSES_FILE, DONE_FILE = "resume", "losses.jsonl", "done.json"


def lr_at(step: int, cfg: StageConfig) -> float:
    """Linear warm-up then cosine decay to ``min_lr_ratio * lr``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    t = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    floor = cfg.min_lr_ratio
    return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def make_optimizer(params: List[torch.nn.Parameter], cfg: StageConfig) -> torch.optim.AdamW:
    """AdamW; matrices decay, vectors (norms, biases) do not."""
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(0.9, 0.98))


def optimizer_tensors(opt: torch.optim.Optimizer) -> Dict[str, torch.Tensor]:
    """Flat ``{"<param index>.<name>": tensor}`` of the optimizer state (the whole
    tensors of FSDP-sharded states: then every rank must call it)."""
    out = {}
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        for name, value in opt.state.get(p, {}).items():
            value = full_tensor(value) if torch.is_tensor(value) else torch.tensor(value)
            out[f"{i}.{name}"] = value.detach().cpu().contiguous()
    return out


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: Dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`optimizer_tensors` (same parameter order required)."""
    params = [p for g in opt.param_groups for p in g["params"]]
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        p = params[int(index)]
        state = opt.state.setdefault(p, {})
        # an FSDP-sharded parameter keeps this rank's shard of its moments
        state[name] = shard_like(value.to(p.device), p) if name != "step" else value.float()


class RunLog:
    """Append-only JSONL loss log of one run."""

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, LOSSES_FILE)

    def truncate_after(self, step: int) -> None:
        """Keep lines of the first ``step`` steps (a resumed run re-logs the rest)."""
        rows = [r for r in read_losses(self.path) if r["step"] <= step]
        with open(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)

    def write(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def read_losses(path: str) -> List[dict]:
    """Rows of a ``losses.jsonl`` (missing file -> empty)."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_loop(name: str, run_dir: str, cfg: StageConfig, params: List[torch.nn.Parameter],
             step_fn: Callable[[int], Dict[str, torch.Tensor]],
             save_state: Callable[[str], None], load_state: Callable[[str], None],
             resume: bool = True, progress: bool = True,
             after_step: Optional[Callable[[int], None]] = None,
             ctx: Optional[DistContext] = None,
             autocast: Optional[torch.dtype] = None) -> dict:
    """Optimise ``params`` for ``cfg.steps`` steps of ``step_fn(step) -> losses``.

    ``losses["objective"]`` (else ``losses["total"]``) is back-propagated; the
    other entries are logged.  ``save_state(dir)`` / ``load_state(dir)`` write /
    read the model part of the resumable state; every rank calls both (FSDP
    gathers shards to save), ``save_state`` writes on rank 0 only.  Under
    ``torchrun`` (``ctx``) the step runs inside DistributedDataParallel, which
    averages the gradients of the replicated ``params`` over the ranks (FSDP
    reduce-scatters those of sharded ones, see :func:`~.distributed.shard_layers`);
    rank 0 writes the log and the resumable state.
    ``autocast`` (e.g. ``torch.bfloat16``): the step's forward runs under CUDA
    autocast; the parameters and optimizer states stay float32.
    Returns a summary (final losses averaged over the last log window).
    """
    ctx = ctx or DistContext()
    os.makedirs(run_dir, exist_ok=True)
    opt = make_optimizer(params, cfg)
    log = RunLog(run_dir)
    start = _maybe_resume(run_dir, opt, load_state, ctx.is_main) if resume else 0
    if ctx.is_main:
        log.truncate_after(start)
    engine = _data_parallel(step_fn, replicated(params)) if ctx.distributed else step_fn
    sharded = any(is_sharded(p) for p in params)
    t0, window = time.time(), []
    bar = _progress(name, cfg.steps, start, progress and ctx.is_main)
    for step in range(start, cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        with torch.autocast("cuda", dtype=autocast or torch.bfloat16,
                            enabled=autocast is not None):
            losses = dict(engine(step))
        objective = losses.pop("objective", None)
        opt.zero_grad(set_to_none=True)
        (losses["total"] if objective is None else objective).backward()
        if cfg.grad_clip > 0 and sharded:
            clip_grad_norm(params, cfg.grad_clip, ctx)  # over the shards of all ranks
        elif cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        if after_step is not None:
            after_step(step)
        values = {k: float(v.detach()) for k, v in losses.items()}
        window.append(values)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            mean = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
            if ctx.is_main:
                log.write(dict(step=step + 1, lr=opt.param_groups[0]["lr"],
                               seconds=round(time.time() - t0, 2), **mean))
            bar.set_postfix({k: f"{v:.3f}" for k, v in mean.items() if "level" not in k})
            window = []
        bar.update(1)
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 \
                and step + 1 < cfg.steps:
            _save_resume(run_dir, opt, step + 1, save_state, ctx, sharded)
            ctx.barrier()
    bar.close()
    rows = read_losses(log.path)
    return {"run": name, "steps": cfg.steps, "seconds": round(time.time() - t0, 1),
            "final": rows[-1] if rows else {}}


class _Step(torch.nn.Module):
    """The step function as a module owning the trained parameters, for DDP."""

    def __init__(self, step_fn: Callable[[int], Dict[str, torch.Tensor]],
                 params: List[torch.nn.Parameter]):
        super().__init__()
        self.step_fn = step_fn
        self.trained = torch.nn.ParameterList(params)  # the same Parameter objects

    def forward(self, step: int) -> Dict[str, torch.Tensor]:
        return self.step_fn(step)


def _data_parallel(step_fn, params):
    """``step_fn`` run by DistributedDataParallel (gradients of ``params`` all-reduced
    in backward); ``step_fn`` itself when no parameter is replicated."""
    from torch.nn.parallel import DistributedDataParallel
    if not params:
        return step_fn
    module = _Step(step_fn, params)
    # every trained parameter takes part in every step (the wrapper holds no buffers)
    return DistributedDataParallel(module)


def _progress(name: str, total: int, start: int, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, initial=start, desc=f"train {name}", disable=not enabled,
                dynamic_ncols=True, mininterval=2.0)


def _save_resume(run_dir: str, opt, next_step: int, save_state, ctx: DistContext,
                 sharded: bool = False) -> None:
    """Rank 0 writes the resumable state; every rank calls ``save_state`` (and, with
    FSDP-``sharded`` parameters, gathers the optimizer state) for the collectives."""
    tmp = os.path.join(run_dir, RESUME_DIR + ".tmp")
    tensors = optimizer_tensors(opt) if ctx.is_main or sharded else {}
    if ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    save_state(os.path.join(tmp, "checkpoint"))
    if not ctx.is_main:
        return
    save_file(tensors, os.path.join(tmp, "optimizer.safetensors"))
    with open(os.path.join(tmp, "state.json"), "w") as f:
        json.dump({"next_step": next_step}, f)
    final = os.path.join(run_dir, RESUME_DIR)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def _maybe_resume(run_dir: str, opt, load_state, say: bool = True) -> int:
    path = os.path.join(run_dir, RESUME_DIR)
    state_file = os.path.join(path, "state.json")
    if not os.path.isfile(state_file):
        return 0
    with open(state_file) as f:
        next_step = int(json.load(f)["next_step"])
    load_state(os.path.join(path, "checkpoint"))
    load_optimizer_tensors(opt, load_file(os.path.join(path, "optimizer.safetensors")))
    if say:  # every rank loads the state; rank 0 tells
        print(f"resuming {os.path.basename(run_dir)} at step {next_step}")
    return next_step


def mark_done(run_dir: str, summary: dict) -> None:
    """Write ``done.json`` and drop the resumable state."""
    with open(os.path.join(run_dir, DONE_FILE), "w") as f:
        json.dump(summary, f, indent=2)
    shutil.rmtree(os.path.join(run_dir, RESUME_DIR), ignore_errors=True)


def is_done(run_dir: str) -> bool:
    return os.path.isfile(os.path.join(run_dir, DONE_FILE))

"""Data-parallel training under ``torchrun`` (torch.distributed, DDP).

``torchrun`` starts one process per device and sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` (and the rendezvous address); :meth:`DistContext.from_env`
joins the process group (gloo on CPU, NCCL on CUDA).  Without ``WORLD_SIZE``
(a plain ``a2llm train``) the context is a single process and nothing here
communicates.

Semantics the trainer keeps whatever the world size:

* ``batch_size`` is the global batch: every rank draws the same global batch
  (a pure function of seed, run and step) and takes its contiguous share
  (:meth:`DistContext.shard`); augmentation is seeded per sample and position,
  so a sample looks the same on any rank.
* Losses are token means of the global batch: each rank scales its local
  means by its share of the global token count (:func:`global_objective`), so
  DDP's averaged gradient equals the gradient of the single-process loss, and
  the logged values are the global means.
* Rank 0 writes logs, resumable state and checkpoints; the others wait at a
  barrier and read them.  When a rank dies, ``torchrun`` stops the others and
  names the failed rank; the collective timeout bounds any wait.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Dict, Mapping, Sequence

import torch
import torch.distributed as dist

#: Seconds a collective may wait for the other ranks before the job fails.
DEFAULT_TIMEOUT_S = 600.0
#: Which token count normalises each loss term (see :func:`term_counts`).
TERM_COUNT = {"text_ce": "text", "speech_ce": "speech", "asr_ce": "asr", "motion_ce": "motion"}
#: Losses that are sums of the terms (recomputed from the global terms).
COMPOSED = ("lm", "total")


@dataclass
class DistContext:
    """This process's place in the job: ``rank`` of ``world_size``, device index."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and prints (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, device: str = "auto",
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> "DistContext":
        """The context ``torchrun`` describes in the environment (single process if none)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if cuda:
            torch.cuda.set_device(local)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo",
                                    timeout=datetime.timedelta(seconds=timeout_s))
        return cls(rank=rank, world_size=world, local_rank=local)

    def device_name(self, device: str) -> str:
        """``device`` with this rank's CUDA index (``cuda`` -> ``cuda:LOCAL_RANK``)."""
        if self.distributed and device in ("cuda", "auto") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return device

    def shard(self, items: Sequence, what: str = "batch") -> list:
        """This rank's contiguous share of a global batch (sizes must divide evenly)."""
        n = len(items)
        if n % self.world_size:
            raise ValueError(f"{what}: a global batch of {n} does not divide over "
                             f"{self.world_size} ranks; make it a multiple of the world size")
        per = n // self.world_size
        return list(items[self.rank * per:(self.rank + 1) * per])

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_sum(self, values: Mapping[str, float]) -> Dict[str, float]:
        """Sum of ``values`` over all ranks (same keys on every rank)."""
        if not self.distributed:
            return dict(values)
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(t)  # gloo/nccl sum
        return dict(zip(keys, t.tolist()))

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` [n, ...] of every rank concatenated in rank order [n * ranks, ...]
        (equal shapes on every rank)."""
        if not self.distributed:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def close(self) -> None:
        """Leave the process group (end of the job)."""
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def global_objective(losses: Dict[str, torch.Tensor], counts: Mapping[str, float],
                     ctx: DistContext, weights: Mapping[str, float]) -> Dict[str, torch.Tensor]:
    """Local token-mean losses -> the global batch's, for backward and for the log.

    ``counts``: this rank's tokens per count kind (:data:`TERM_COUNT`);
    ``weights``: how ``total`` combines the terms (``{"text_ce": 1, ...}``).
    Returns the losses with global detached values, plus ``objective``: the
    local loss whose DDP-averaged gradient is the global total's gradient.
    """
    if not ctx.distributed:
        return losses
    totals = ctx.all_sum(counts)
    factor = {k: ctx.world_size * counts[k] / totals[k] if totals[k] else 0.0 for k in counts}
    objective = losses["total"] * 0.0
    for name, weight in weights.items():
        if name in losses:
            objective = objective + weight * losses[name] * factor[_count_kind(name)]
    sums = {name: float(value.detach()) * counts[_count_kind(name)]
            for name, value in losses.items()
            if name not in COMPOSED and _count_kind(name) in counts}
    sums = ctx.all_sum(sums)
    out = {name: torch.tensor(value / max(totals[_count_kind(name)], 1e-12))
           for name, value in sums.items()}
    lm_terms = [k for k in ("text_ce", "speech_ce", "asr_ce") if k in out]
    if lm_terms:
        out["lm"] = sum((out[k] * weights.get(k, 0.0) for k in lm_terms), torch.tensor(0.0))
    out["total"] = sum((out[k] * w for k, w in weights.items() if k in out), torch.tensor(0.0))
    out["objective"] = objective
    return out


def equal_shares(losses: Dict[str, torch.Tensor], ctx: DistContext) -> Dict[str, torch.Tensor]:
    """Losses that are means over equally many items per rank (RVQ-VAE windows):
    the global value is the mean over ranks; ``objective`` is the local total."""
    if not ctx.distributed:
        return losses
    sums = ctx.all_sum({k: float(v.detach()) for k, v in losses.items()})
    out = {k: torch.tensor(v / ctx.world_size) for k, v in sums.items()}
    out["objective"] = losses["total"]
    return out


def _count_kind(name: str) -> str:
    if name.startswith("motion_ce"):
        return "motion"
    return TERM_COUNT.get(name, "rows")

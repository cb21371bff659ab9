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

Strategies (``TrainConfig.distributed``): DDP replicates the model and
all-reduces the trained parameters' gradients.  FSDP (PyTorch's FSDP2,
:func:`shard_layers`) shards each LLM decoder layer over the ranks in the runs
whose step runs the LLM (base, joint, affective): a layer's weights are
all-gathered for its forward and backward and its gradients reduce-scattered;
the remaining trained parameters (encoder, adaptor, embeddings and head,
connector) stay replicated under DDP.  Checkpoints gather the shards
(:func:`full_parameters`).
"""
from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from dataclasses import dataclass
from typing import Dict, Iterator, List, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn

#: Seconds a collective may wait for the other ranks before the job fails.
DEFAULT_TIMEOUT_S = 600.0
#: Which token count normalises each loss term (see :func:`term_counts`).
TERM_COUNT = {"text_ce": "text", "speech_ce": "speech", "asr_ce": "asr", "motion_ce": "motion"}
#: Losses that are sums of the terms (recomputed from the global terms).
COMPOSED = ("lm", "total")
#: Added to the gradient norm before dividing (as torch.nn.utils.clip_grad_norm_).
CLIP_EPS = 1e-6
#: FSDP2's warning for a unit returning a view: the decoder layers return their keys
#: and values (views), and nothing writes into those in place (model/qwen2.py).
VIEW_WARNING = r"FSDP2-wrapped module .* returned a view tensor"


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


# ----------------------------------------------------------------------------- FSDP

def is_sharded(tensor: object) -> bool:
    """Whether ``tensor`` is a DTensor (an FSDP-sharded parameter, gradient or state)."""
    from torch.distributed.tensor import DTensor
    return isinstance(tensor, DTensor)


def shard_layers(layers: Sequence[nn.Module],
                 params: List[nn.Parameter]) -> List[nn.Parameter]:
    """Shard every module of ``layers`` (LLM decoder layers) over the ranks (FSDP2).

    Each layer is its own FSDP unit: its parameters, trained or frozen, are split
    along dim 0; its forward and backward all-gather them and free them again
    (``reshard_after_forward``), and the gradients of its trained parameters are
    reduce-scattered (averaged).  Call after the run's parameters are frozen or
    unfrozen.  Returns ``params`` with the sharded ones replaced by their DTensor
    parameters (the optimizer must hold those).
    """
    from torch.distributed.fsdp import fully_shard
    warnings.filterwarnings("ignore", message=VIEW_WARNING)
    owner = {}  # id(parameter) -> (module, attribute name)
    for layer in layers:
        for module in layer.modules():
            for name, param in module.named_parameters(recurse=False):
                owner[id(param)] = (module, name)
    for layer in layers:
        fully_shard(layer, reshard_after_forward=True)
    return [getattr(*owner[id(p)]) if id(p) in owner else p for p in params]


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a DTensor (a collective: every rank calls it), else itself."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def shard_like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A full tensor shaped like ``param``, as ``param`` holds it: this rank's shard as
    a DTensor when ``param`` is sharded (no communication), else ``value`` itself."""
    if not is_sharded(param):
        return value
    from torch.distributed.tensor import distribute_tensor
    return distribute_tensor(value.detach(), param.device_mesh, param.placements,
                             src_data_rank=None)


@contextlib.contextmanager
def full_parameters(module: nn.Module, keep: bool = True,
                    load: bool = False) -> Iterator[None]:
    """Inside: the FSDP-sharded parameters of ``module`` are whole CPU tensors.

    Every rank must enter (the shards are all-gathered).  ``keep``: this rank
    swaps them in (rank 0, to save a checkpoint); the others only take part in
    the gathering.  ``load``: the whole tensors are overwritten inside (a resume
    state is copied in) and each rank keeps its shard of the new values on exit.
    Without sharded parameters (one process, DDP) nothing happens.
    """
    swapped = []
    for owner in module.modules():
        for name, param in list(owner.named_parameters(recurse=False)):
            if not is_sharded(param):
                continue
            whole = param.full_tensor()  # collective, in the same order on every rank
            if keep or load:
                owner._parameters[name] = nn.Parameter(whole.detach().cpu(),
                                                       param.requires_grad)
                swapped.append((owner, name, param))
    try:
        yield
    finally:
        for owner, name, param in swapped:
            if load:
                new = owner._parameters[name].detach().to(param.device, param.dtype)
                with torch.no_grad():
                    param.to_local().copy_(shard_like(new, param).to_local())
            owner._parameters[name] = param


def replicated(params: Sequence[nn.Parameter]) -> List[nn.Parameter]:
    """The parameters of ``params`` that every rank holds whole (not FSDP-sharded)."""
    return [p for p in params if not is_sharded(p)]


def clip_grad_norm(params: Sequence[nn.Parameter], max_norm: float,
                   ctx: DistContext) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` over sharded and replicated gradients together.

    A sharded gradient's squares are summed over the ranks' shards; a replicated
    one (equal on every rank after DDP) counts once.  Returns the total 2-norm.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    local = [g.to_local() for g in grads if is_sharded(g)]
    whole = [g for g in grads if not is_sharded(g)]
    device = (local + whole)[0].device
    squares = torch.zeros((), dtype=torch.float32, device=device)
    for g in local:
        squares = squares + g.float().pow(2).sum()
    if ctx.distributed:
        dist.all_reduce(squares)  # the shards' squares of all ranks
    for g in whole:
        squares = squares + g.float().pow(2).sum()
    total = squares.sqrt()
    scale = torch.clamp(max_norm / (total + CLIP_EPS), max=1.0)
    for g in local + whole:
        g.mul_(scale.to(g.dtype))
    return total

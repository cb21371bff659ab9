"""Configuration of the training curriculum (:class:`TrainConfig`).

One :class:`StageConfig` per optimisation run of the curriculum:

* ``rvq``       stage 0: motion RVQ-VAE on FLAME windows
* ``base``      stage 0: the audio LLM itself (audio encoder + LLM, LM loss)
                when no pretrained audio LLM exists (``tiny``: trained from
                scratch on the FLAME-QA answers); ``steps: 0`` skips it
                (edge / paper start from a pretrained backbone)
* ``connector`` stage 1: Motion Connector with the LLM frozen
* ``joint``     stage 2: "LoRA reset" — fresh LoRA + connector, LM + motion loss
* ``affective`` stage 3: affective instruction tuning on the high-intensity subset

Presets: ``tiny`` (the shipped default checkpoint: 2 CPU cores, < 30 min),
``edge`` and ``paper`` (CUDA).  The YAML files ``config/train_<preset>.yaml``
hold the same values; :func:`load_train_config` reads them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, TYPE_CHECKING, Tuple

from a2llm_ros.configbase import ConfigBase

if TYPE_CHECKING:
    import torch

STAGES = ("rvq", "base", "connector", "joint", "affective")
#: Curriculum stage number -> optimisation runs in it.
STAGE_RUNS = {0: ("rvq", "base"), 1: ("connector",), 2: ("joint",), 3: ("affective",)}
#: Where stage 1 keeps the frozen LLM's hidden states (:attr:`TrainConfig.hidden_cache`).
HIDDEN_CACHES = ("memory", "disk", "recompute")
#: Training compute precisions (:attr:`TrainConfig.precision`).
PRECISIONS = ("auto", "bf16", "fp32")
#: Multi-process strategies under ``torchrun`` (:attr:`TrainConfig.distributed`).
STRATEGIES = ("auto", "ddp", "fsdp")
#: What ``distributed: auto`` means per preset (unlisted presets: DDP).
AUTO_STRATEGY = {"tiny": "ddp", "edge": "ddp", "paper": "fsdp"}
#: Runs whose LLM decoder layers ``fsdp`` shards (the runs whose step runs the LLM).
SHARDED_RUNS = ("base", "joint", "affective")


@dataclass
class StageConfig(ConfigBase):
    """Optimiser and length of one training run."""

    steps: int = 100
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1       # cosine decay floor (fraction of lr)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    log_every: int = 10
    checkpoint_every: int = 100     # resumable state every N steps

    def __post_init__(self):
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("StageConfig: steps >= 0, batch_size >= 1, lr > 0")


@dataclass
class AugmentConfig(ConfigBase):
    """Question-audio augmentation (helps the held-out voice)."""

    prob: float = 0.8
    speed_min: float = 0.88
    speed_max: float = 1.12
    gain_db: float = 6.0
    noise_prob: float = 0.3
    noise_snr_db: float = 20.0
    pad_max_s: float = 0.25
    # Vocal-tract-length perturbation: the spectrum's frequency axis is scaled
    # by a factor drawn from [warp_min, warp_max] (formants and pitch move,
    # tempo does not) with probability warp_prob; 0 turns it off.
    warp_prob: float = 0.0
    warp_min: float = 0.9
    warp_max: float = 1.1
    # A silence of pause_min_s..pause_max_s inserted at a quiet spot inside the speech
    # (a question spoken with a pause, as people do) with probability pause_prob; 0 is off.
    pause_prob: float = 0.0
    pause_min_s: float = 0.2
    pause_max_s: float = 0.7

    def __post_init__(self):
        if not 0.0 <= self.warp_prob <= 1.0 or not 0.0 < self.warp_min <= self.warp_max:
            raise ValueError("AugmentConfig: warp_prob in [0, 1] and 0 < warp_min <= warp_max "
                             f"required, got {self.warp_prob}, {self.warp_min}, {self.warp_max}")
        if not 0.0 <= self.pause_prob <= 1.0 or not 0.0 <= self.pause_min_s <= self.pause_max_s:
            raise ValueError("AugmentConfig: pause_prob in [0, 1] and 0 <= pause_min_s <= "
                             f"pause_max_s required, got {self.pause_prob}, {self.pause_min_s}, "
                             f"{self.pause_max_s}")


_TINY = dict(
    rvq=dict(steps=2000, batch_size=32, lr=2e-3, warmup_steps=20, checkpoint_every=500),
    base=dict(steps=1500, batch_size=16, lr=1.5e-3, warmup_steps=60, weight_decay=0.01,
              checkpoint_every=250),
    connector=dict(steps=500, batch_size=32, lr=2e-3, warmup_steps=20, checkpoint_every=250),
    joint=dict(steps=200, batch_size=16, lr=1e-3, warmup_steps=10, checkpoint_every=100),
    affective=dict(steps=60, batch_size=16, lr=3e-4, warmup_steps=5, checkpoint_every=60),
    lora_rank=8, lora_alpha=16, threads=2, asr_samples=4)
_EDGE = dict(
    rvq=dict(steps=20000, batch_size=64, lr=1e-3, warmup_steps=500, checkpoint_every=2000),
    base=dict(steps=0), connector=dict(steps=20000, batch_size=32, lr=5e-4, warmup_steps=500,
                                       checkpoint_every=2000),
    joint=dict(steps=10000, batch_size=16, lr=2e-4, warmup_steps=300, checkpoint_every=1000),
    affective=dict(steps=2000, batch_size=16, lr=5e-5, warmup_steps=100, checkpoint_every=500),
    lora_rank=32, lora_alpha=64, threads=0, storage_dtype="bfloat16", merge_lora=False,
    asr_samples=0, asr_samples_lora=0, ctc_weight=0.0,
    gradient_checkpointing=True, hidden_cache="disk")
_PAPER = dict(
    rvq=dict(steps=50000, batch_size=128, lr=1e-3, warmup_steps=1000, checkpoint_every=5000),
    base=dict(steps=0), connector=dict(steps=30000, batch_size=32, lr=3e-4, warmup_steps=1000,
                                       checkpoint_every=2000),
    joint=dict(steps=20000, batch_size=16, lr=1e-4, warmup_steps=500, checkpoint_every=1000),
    affective=dict(steps=3000, batch_size=16, lr=2e-5, warmup_steps=100, checkpoint_every=500),
    lora_rank=64, lora_alpha=128, threads=0, storage_dtype="bfloat16", merge_lora=False,
    asr_samples=0, asr_samples_lora=0, ctc_weight=0.0,
    gradient_checkpointing=True, hidden_cache="disk")


@dataclass
class TrainConfig(ConfigBase):
    """The whole curriculum (see module docstring)."""

    preset_name: str = "tiny"
    seed: int = 0
    device: str = "auto"              # auto | cpu | cuda[:N]
    threads: int = 0                  # torch CPU threads (0 = torch default)
    rvq_window_frames: int = 40       # FLAME frames per RVQ-VAE training window (x5)
    codec_fit_max_samples: int = 400  # answer waves used to fit the speech codec
    motion_weight: float = 1.0        # weight of the motion loss in stages 2-3
    asr_samples: int = 8              # base run: transcription rows added to each batch
    asr_samples_lora: int = 4         # stages 2-3: transcription rows (keeps the audio path)
    asr_weight: float = 0.5           # weight of the auxiliary transcription loss
    ctc_weight: float = 1.0           # base run: auxiliary CTC on the audio encoder (0 = off)
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: Tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj",
                                     "gate_proj", "up_proj", "down_proj")
    affective_replay: float = 0.25    # stage 3: fraction of each batch from the rest
    #: Final checkpoint: merge the LoRA into the LLM. On a backbone folder that stores
    #: the merged encoder, adaptor and LLM weights in the checkpoint (a full copy);
    #: false keeps the adapter in ``lora/`` beside the backbone reference (edge, paper).
    merge_lora: bool = True
    storage_dtype: str = "float16"    # final checkpoint tensors
    #: Recompute each LLM decoder layer (and audio-encoder block) in the backward pass
    #: instead of keeping its activations (training mode only; one more forward pass:
    #: +1/3 compute when every weight trains, +1/2 under LoRA).
    gradient_checkpointing: bool = False
    #: Stage 1's frozen-LLM hidden states: ``memory`` (a tensor per sample on the
    #: device), ``disk`` (one memory-mapped file in the run directory, reused when
    #: complete) or ``recompute`` (the frozen LLM runs in every step, nothing kept).
    hidden_cache: str = "memory"
    #: Compute precision of the training forward: ``auto`` (bfloat16 autocast on
    #: CUDA, float32 on CPU), ``bf16`` (autocast, CUDA only) or ``fp32``; the trained
    #: weights and AdamW states stay float32 either way.
    precision: str = "auto"
    #: Under ``torchrun``: ``ddp`` (every rank holds the whole model; gradients
    #: all-reduced), ``fsdp`` (the LLM's decoder layers sharded over the ranks with
    #: FSDP2 in the :data:`SHARDED_RUNS`; DDP for the rest) or ``auto``
    #: (:data:`AUTO_STRATEGY`: DDP for tiny and edge, FSDP for paper).  One process: neither.
    distributed: str = "auto"
    #: Seconds a collective (all-reduce, barrier) waits for the other ranks before the
    #: job fails instead of hanging (a rank that stopped answering; torchrun).
    dist_timeout_s: float = 600.0
    rvq: StageConfig = field(default_factory=StageConfig)
    base: StageConfig = field(default_factory=StageConfig)
    connector: StageConfig = field(default_factory=StageConfig)
    joint: StageConfig = field(default_factory=StageConfig)
    affective: StageConfig = field(default_factory=StageConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    PRESETS = {"tiny": _TINY, "edge": _EDGE, "paper": _PAPER}

    def __post_init__(self):
        if self.distributed not in STRATEGIES:
            raise ValueError(f"TrainConfig.distributed must be one of {', '.join(STRATEGIES)}, "
                             f"got {self.distributed!r}")
        if self.dist_timeout_s <= 0:
            raise ValueError(f"TrainConfig.dist_timeout_s must be > 0, got {self.dist_timeout_s}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {', '.join(PRECISIONS)}, "
                             f"got {self.precision!r}")
        if self.hidden_cache not in HIDDEN_CACHES:
            raise ValueError(f"TrainConfig.hidden_cache must be one of "
                             f"{', '.join(HIDDEN_CACHES)}, got {self.hidden_cache!r}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "TrainConfig":
        """The named preset; ``overrides`` may hold nested dicts for stage fields."""
        if name not in cls.PRESETS:
            raise KeyError(f"TrainConfig: unknown preset {name!r}; known: "
                           f"{', '.join(cls.PRESETS)}")
        values = _merge(dict(cls.PRESETS[name]), overrides)
        return cls.from_nested(dict(values, preset_name=name))

    @classmethod
    def from_nested(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """Defaults updated by a (possibly partial) nested dict; unknown keys raise."""
        base = cls().to_dict()
        unknown = _unknown_keys(base, values)
        if unknown:
            raise KeyError(f"TrainConfig: unknown fields {', '.join(unknown)}")
        return cls.from_dict(_merge(base, values), strict=True)

    @property
    def strategy(self) -> str:
        """``ddp`` or ``fsdp``: :attr:`distributed` with ``auto`` resolved for the preset."""
        if self.distributed != "auto":
            return self.distributed
        return AUTO_STRATEGY.get(self.preset_name, "ddp")

    def stage(self, run: str) -> StageConfig:
        """The :class:`StageConfig` of run ``run`` (one of :data:`STAGES`)."""
        if run not in STAGES:
            raise KeyError(f"unknown training run {run!r}; known: {', '.join(STAGES)}")
        return getattr(self, run)


def _merge(base: Dict[str, Any], over: Mapping[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _unknown_keys(base: Mapping[str, Any], values: Mapping[str, Any], prefix: str = ""):
    out = []
    for key, value in values.items():
        if key not in base:
            out.append(prefix + key)
        elif isinstance(value, Mapping) and isinstance(base[key], Mapping):
            out.extend(_unknown_keys(base[key], value, prefix + key + "."))
    return out


def load_train_config(path: Optional[str] = None, preset: Optional[str] = None,
                      overrides: Optional[Mapping[str, Any]] = None) -> TrainConfig:
    """Config from a YAML file (``preset:`` key + nested fields) and/or a preset name.

    The YAML's ``preset`` (or ``preset`` here) selects the base values; every
    other key overrides them.  Unknown keys raise ``KeyError`` naming them.
    """
    values: Dict[str, Any] = {}
    if path:
        import yaml
        with open(path) as f:
            values = yaml.safe_load(f) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
    name = values.pop("preset", None) or preset or "tiny"
    if preset and values and preset != name:
        raise ValueError(f"{path} is for preset {name!r}, not {preset!r}")
    values.pop("preset_name", None)
    cfg = TrainConfig.preset(name, **values)
    if overrides:
        cfg = TrainConfig.from_nested(_merge(cfg.to_dict(), overrides))
    return cfg


def config_yaml(cfg: TrainConfig) -> str:
    """YAML text of ``cfg`` (``preset`` first), as stored in ``config/train_*.yaml``."""
    import yaml
    data = cfg.to_dict()
    data = dict(preset=data.pop("preset_name"), **data)
    data["lora_targets"] = list(data["lora_targets"])
    return yaml.safe_dump(data, sort_keys=False)


def replace_stage(cfg: TrainConfig, run: str, **changes) -> TrainConfig:
    """Copy of ``cfg`` with fields of one run's :class:`StageConfig` changed."""
    return dataclasses.replace(cfg, **{run: dataclasses.replace(cfg.stage(run), **changes)})


def autocast_dtype(precision: str, device: str) -> Optional["torch.dtype"]:
    """The autocast dtype of a training forward on ``device`` (None: plain float32)."""
    import torch
    cuda = str(device).startswith("cuda")
    if precision == "bf16" and not cuda:
        raise ValueError(f"precision bf16 needs a CUDA device (training on {device})")
    return torch.bfloat16 if cuda and precision in ("auto", "bf16") else None

"""An A²-LLM checkpoint directory without torch: where it is, its config and its tokenizer.

The weights themselves are saved and loaded by :mod:`a2llm_ros.checkpoint` (PyTorch);
an engine backend (ONNX Runtime, TensorRT) only needs what is here.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import a2llm_ros
from a2llm_ros.config import A2LLMConfig
from a2llm_ros.constants import CONFIG_FILE
from a2llm_ros.model.text_tokenizer import TextTokenizer, TokenizerError

FORMAT = "a2llm_ros.checkpoint"
FORMAT_VERSION = 2
CODEC_PREFIX = "codec."
#: Parts whose weights a Step-Audio-2-mini backbone folder provides.
BACKBONE_PREFIXES = ("llm.", "encoder.", "adapter.")
#: Where ``default`` points: the shipped checkpoint inside the package.
DEFAULT_CHECKPOINT = os.path.join(os.path.dirname(a2llm_ros.__file__), "checkpoints", "default")
#: ``model_type`` of a Step-Audio-2-mini folder's config.json.
STEP_MODEL_TYPE = "step_audio_2"


class CheckpointError(ValueError):
    """A checkpoint directory is incomplete or does not fit the model code."""


def resolve_checkpoint(path: str) -> str:
    """Checkpoint directory for ``path``; ``"default"`` names the shipped checkpoint."""
    if path == "default":
        if not os.path.isfile(os.path.join(DEFAULT_CHECKPOINT, CONFIG_FILE)):
            raise FileNotFoundError(
                f"the default checkpoint ({DEFAULT_CHECKPOINT}) is missing; it ships with the "
                f"repository (git checkout) and is rebuilt by `make default-checkpoint` "
                f"(synthetic FLAME-QA + `a2llm train --install-default`); or pass "
                f"--checkpoint DIR")
        return DEFAULT_CHECKPOINT
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint directory not found: {path}")
    if not os.path.isfile(os.path.join(path, CONFIG_FILE)):
        raise FileNotFoundError(f"{path} is not a checkpoint: no {CONFIG_FILE}")
    return path


def resolve_backbone(path: str, base_dir: Optional[str]) -> str:
    """Absolute backbone directory: ``path`` as is, or relative to ``base_dir``."""
    if os.path.isabs(path) or base_dir is None:
        return path
    return os.path.join(base_dir, path)


def read_config(ckpt_dir: str) -> A2LLMConfig:
    """The :class:`A2LLMConfig` of a checkpoint (strict: mismatching fields raise)."""
    path = os.path.join(ckpt_dir, CONFIG_FILE)
    with open(path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        if "model_type" in meta:
            raise CheckpointError(f"{path}: model_type {meta['model_type']!r} is neither a "
                                  f"Step-Audio-2-mini folder (model_type {STEP_MODEL_TYPE!r})"
                                  f" nor an a2llm_ros checkpoint")
        raise CheckpointError(f"{path}: not an a2llm_ros checkpoint config")
    if int(meta.get("format_version", -1)) != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {meta.get('format_version')}"
                              f", this code reads version {FORMAT_VERSION}")
    return A2LLMConfig.from_dict(meta["config"], strict=True)


def load_text_tokenizer(ckpt_dir: str, cfg: A2LLMConfig) -> TextTokenizer:
    """The tokenizer files beside the weights (tiny) or in the backbone folder."""
    if not cfg.llm.backbone:
        path = ckpt_dir
    else:
        path = resolve_backbone(cfg.llm.backbone, os.path.abspath(ckpt_dir))
    try:
        return TextTokenizer.load(path)
    except TokenizerError as exc:
        raise CheckpointError(str(exc)) from exc

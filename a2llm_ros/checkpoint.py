"""Checkpoint directories: JSON config + safetensors weights, no pickle anywhere.

Layout of a checkpoint directory::

    config.json         format + version, preset, A2LLMConfig.to_dict(), FLAME layout,
                        package versions, storage dtype, where the LLM weights live
    model.safetensors   weights of every neural part (audio encoder + adaptor, LLM
                        unless it comes from ``llm.hf_path``, connector, motion
                        tokenizer incl. its normalisation/codebook buffers) and the
                        speech codec tensors (``codec.*``)
    tokenizer.json      char-tokenizer vocabulary (``text.kind == "char"`` only)
    lora/               PEFT adapter (``adapter_config.json`` + safetensors), if any

When ``llm.hf_path`` is set (edge / paper) the backbone is loaded from that
Hugging Face directory (relative to the checkpoint directory, or absolute)
with ``from_pretrained(local_files_only=True)``; the checkpoint then stores
only the embedding and output rows of the added special and speech tokens
(``llm_ext.embed_rows`` / ``llm_ext.head_rows``) and, optionally, the LoRA
adapter.  Tied tensors are stored once (the first name in ``state_dict``
order).
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional

import torch
from safetensors.torch import load_file, save_file

import a2llm_ros
from a2llm_ros.config import A2LLMConfig
from a2llm_ros.model.a2llm import A2LLM
from a2llm_ros.model.audio_llm import base_causal_lm, resolve_hf_path
from a2llm_ros.model.speech_codec import codec_state_dict, load_codec_state_dict
from a2llm_ros.model.text_tokenizer import CharTokenizer

FORMAT = "a2llm_ros.checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, LORA_DIR = (
    "config.json", "model.safetensors", "tokenizer.json", "lora")
CODEC_PREFIX, LLM_PREFIX, EXT_PREFIX = "codec.", "llm.", "llm_ext."
#: Where ``default`` points: the shipped checkpoint inside the package.
DEFAULT_CHECKPOINT = os.path.join(os.path.dirname(a2llm_ros.__file__), "checkpoints", "default")


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


def _versions() -> Dict[str, str]:
    import transformers
    return {"a2llm_ros": a2llm_ros.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__}


def _is_peft(llm) -> bool:
    return hasattr(llm, "peft_config")


def _llm_base_state(llm) -> Dict[str, torch.Tensor]:
    """Backbone weights under their plain ``Qwen2ForCausalLM`` names (LoRA excluded)."""
    state = llm.state_dict()
    if not _is_peft(llm):
        return state
    out = {}
    for key, value in state.items():
        if "lora_" in key:
            continue
        key = key.replace("base_model.model.", "", 1).replace(".base_layer", "")
        out[key] = value
    return out


def _module_state(model: A2LLM) -> Dict[str, torch.Tensor]:
    """Persistent tensors of all neural parts, LLM under plain names."""
    out = {}
    for name, module in model.named_children():
        sub = _llm_base_state(module) if name == "llm" else module.state_dict()
        out.update({f"{name}.{k}": v for k, v in sub.items()})
    return out


def _aliases(state: Dict[str, torch.Tensor]) -> Dict[str, str]:
    """Tied tensors: {duplicate name: first name with the same storage}."""
    first, out = {}, {}
    for key, value in state.items():
        ident = (value.data_ptr(), tuple(value.shape), value.dtype)
        if value.numel() and ident in first:
            out[key] = first[ident]
        else:
            first.setdefault(ident, key)
    return out


def _ext_rows(model: A2LLM) -> Dict[str, torch.Tensor]:
    """Rows of the added tokens for an HF-backed LLM."""
    lm = base_causal_lm(model.llm)
    n = model.vocab.n_text
    out = {EXT_PREFIX + "embed_rows": lm.get_input_embeddings().weight[n:]}
    if not lm.config.tie_word_embeddings:
        out[EXT_PREFIX + "head_rows"] = lm.get_output_embeddings().weight[n:]
    return out


def checkpoint_tensors(model: A2LLM) -> Dict[str, torch.Tensor]:
    """The flat name -> tensor dict stored in ``model.safetensors``."""
    state = _module_state(model)
    aliases = _aliases(state)
    state = {k: v for k, v in state.items() if k not in aliases}
    if model.cfg.llm.hf_path:
        state = {k: v for k, v in state.items() if not k.startswith(LLM_PREFIX)}
        state.update(_ext_rows(model))
    codec = codec_state_dict(model.speech_tokenizer, model.token2wav)
    state.update({CODEC_PREFIX + k: v for k, v in codec.items()})
    return state


def save_checkpoint(model: A2LLM, out_dir: str, dtype: Optional[torch.dtype] = None) -> str:
    """Write ``model`` to ``out_dir`` (see module docstring); returns ``out_dir``.

    ``dtype`` (e.g. ``torch.float16``) stores floating tensors in that type to
    halve the file; loading casts them back to the model's dtype.
    """
    os.makedirs(out_dir, exist_ok=True)
    tensors = {}
    for key, value in checkpoint_tensors(model).items():
        value = value.detach().cpu()
        if dtype is not None and value.is_floating_point() and not key.startswith(CODEC_PREFIX):
            value = value.to(dtype)
        tensors[key] = value.contiguous().clone()
    storage = str(dtype).replace("torch.", "") if dtype is not None else "native"
    save_file(tensors, os.path.join(out_dir, WEIGHTS_FILE),
              metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION,
            "preset": model.cfg.preset_name, "config": model.cfg.to_dict(),
            "flame_layout": model.layout.to_dict(), "versions": _versions(),
            "storage_dtype": storage,
            "llm_weights": "hf_path" if model.cfg.llm.hf_path else "checkpoint",
            "lora": _is_peft(model.llm)}
    with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
        json.dump(meta, f, indent=2)
    if isinstance(model.text_tokenizer, CharTokenizer):
        with open(os.path.join(out_dir, TOKENIZER_FILE), "w", encoding="utf-8") as f:
            f.write(model.text_tokenizer.to_json())
    if _is_peft(model.llm):
        model.llm.save_pretrained(os.path.join(out_dir, LORA_DIR), safe_serialization=True)
    return out_dir


def read_config(ckpt_dir: str) -> A2LLMConfig:
    """The :class:`A2LLMConfig` of a checkpoint (strict: mismatching fields raise)."""
    path = os.path.join(ckpt_dir, CONFIG_FILE)
    with open(path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an a2llm_ros checkpoint config")
    if int(meta.get("format_version", -1)) != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {meta.get('format_version')}"
                              f", this code reads version {FORMAT_VERSION}")
    return A2LLMConfig.from_dict(meta["config"], strict=True)


def _check_keys(ckpt_dir: str, stored: Dict[str, torch.Tensor],
                expected: Dict[str, torch.Tensor]) -> None:
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    shapes = sorted(f"{k} (checkpoint {tuple(stored[k].shape)}, model "
                    f"{tuple(expected[k].shape)})" for k in set(stored) & set(expected)
                    if tuple(stored[k].shape) != tuple(expected[k].shape))
    parts = []
    for label, names in (("missing", missing), ("unexpected", unexpected),
                         ("shape mismatch", shapes)):
        if names:
            more = f" ... (+{len(names) - 20})" if len(names) > 20 else ""
            shown = ", ".join(names[:20]) + more
            parts.append(f"{label} weights: {shown}")
    if parts:
        raise CheckpointError(f"{ckpt_dir}/{WEIGHTS_FILE} does not fit the model: "
                              + "; ".join(parts))


def _text_tokenizer(ckpt_dir: str, cfg: A2LLMConfig):
    if cfg.text.kind != "char":
        return None  # HFTokenizer from llm.hf_path
    path = os.path.join(ckpt_dir, TOKENIZER_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"{ckpt_dir}: missing {TOKENIZER_FILE} (char vocabulary)")
    with open(path, encoding="utf-8") as f:
        return CharTokenizer.from_json(f.read())


def load_checkpoint(ckpt_dir: str, expected_config: Optional[A2LLMConfig] = None,
                    device: str = "cpu") -> A2LLM:
    """Load a checkpoint strictly; ``"default"`` names the shipped one.

    Raises ConfigMismatchError (config fields differ from the code or from
    ``expected_config``) or CheckpointError (missing / unexpected / mis-shaped
    weights, missing files).
    """
    ckpt_dir = resolve_checkpoint(ckpt_dir)
    cfg = read_config(ckpt_dir)
    if expected_config is not None:
        expected_config.check_matches(cfg)
    model = A2LLM(cfg, _text_tokenizer(ckpt_dir, cfg),
                  base_dir=os.path.abspath(ckpt_dir))
    weights = os.path.join(ckpt_dir, WEIGHTS_FILE)
    if not os.path.isfile(weights):
        raise CheckpointError(f"{ckpt_dir}: missing {WEIGHTS_FILE}")
    stored = load_file(weights)
    expected = {k: v for k, v in checkpoint_tensors(model).items()
                if not k.startswith(CODEC_PREFIX)}
    _check_keys(ckpt_dir, {k: v for k, v in stored.items() if not k.startswith(CODEC_PREFIX)},
                expected)
    _load_tensors(model, stored)
    if os.path.isdir(os.path.join(ckpt_dir, LORA_DIR)):
        from peft import PeftModel
        model.llm = PeftModel.from_pretrained(model.llm, os.path.join(ckpt_dir, LORA_DIR))
    return model.to(device).eval()


@torch.no_grad()
def _load_tensors(model: A2LLM, stored: Dict[str, torch.Tensor]) -> None:
    codec = {k[len(CODEC_PREFIX):]: v for k, v in stored.items() if k.startswith(CODEC_PREFIX)}
    try:
        load_codec_state_dict(model.speech_tokenizer, model.token2wav, codec)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"speech codec weights ({CODEC_PREFIX}*): {exc}") from exc
    state = _module_state(model)
    aliases = _aliases(state)
    params = {k: v for k, v in stored.items()
              if not k.startswith((CODEC_PREFIX, EXT_PREFIX))}
    params.update({dup: params[src] for dup, src in aliases.items() if src in params})
    if model.cfg.llm.hf_path:
        own = {k: v for k, v in state.items() if not k.startswith(LLM_PREFIX)}
        _copy_into(own, params)
        _load_ext_rows(model, stored)
    else:
        _copy_into(state, params)


def _copy_into(targets: Dict[str, torch.Tensor], values: Dict[str, torch.Tensor]) -> None:
    missing = sorted(set(targets) - set(values))
    if missing:
        raise CheckpointError("missing weights: " + ", ".join(missing[:20]))
    for key, target in targets.items():
        target.copy_(values[key].to(target.dtype))


def _load_ext_rows(model: A2LLM, stored: Dict[str, torch.Tensor]) -> None:
    lm = base_causal_lm(model.llm)
    n = model.vocab.n_text
    lm.get_input_embeddings().weight[n:].copy_(stored[EXT_PREFIX + "embed_rows"])
    if EXT_PREFIX + "head_rows" in stored:
        lm.get_output_embeddings().weight[n:].copy_(stored[EXT_PREFIX + "head_rows"])


def hf_backbone_dir(ckpt_dir: str, cfg: A2LLMConfig) -> str:
    """Absolute path of the HF backbone directory named by a checkpoint's config."""
    return resolve_hf_path(cfg.llm.hf_path, os.path.abspath(ckpt_dir))


#: Seconds of synthetic audio used to fit a random checkpoint's k-means speech codec.
SYNTH_CODEC_SECONDS = 16.0


def synthetic_codec_audio(seed: int, seconds: float = SYNTH_CODEC_SECONDS):
    """Deterministic tones, chirps, noise bursts and silence (float32 [N] at 16 kHz).

    Only used so that a randomly initialised checkpoint has a valid (fitted)
    k-means speech codec; real checkpoints refit it on speech (``a2llm train``).
    """
    import numpy as np
    from a2llm_ros.constants import SAMPLE_RATE
    rng = np.random.default_rng(seed)
    pieces, seg = [], int(0.25 * SAMPLE_RATE)
    t = np.arange(seg) / SAMPLE_RATE
    for _ in range(int(seconds / 0.25)):
        kind = rng.integers(4)
        if kind == 0:  # harmonic tone
            f0 = rng.uniform(80, 300)
            x = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 8))
        elif kind == 1:  # chirp
            f0, f1 = rng.uniform(100, 3000, 2)
            x = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * t[-1])))
        elif kind == 2:  # noise burst
            x = rng.standard_normal(seg)
        else:  # near silence
            x = 1e-3 * rng.standard_normal(seg)
        pieces.append(0.3 * rng.uniform(0.1, 1.0) * x / (np.abs(x).max() + 1e-9))
    return np.concatenate(pieces).astype(np.float32)


def init_model(cfg: A2LLMConfig, seed: int = 0, base_dir: Optional[str] = None) -> A2LLM:
    """A randomly initialised model (seeded) with a codec fitted on synthetic audio."""
    torch.manual_seed(int(seed))
    model = A2LLM(cfg, base_dir=base_dir)
    model.speech_tokenizer.fit([synthetic_codec_audio(seed)], seed=seed)
    return model.eval()

"""Checkpoint directories: JSON config + safetensors weights, no pickle anywhere.

Layout of a checkpoint directory::

    config.json         format + version, preset, A2LLMConfig.to_dict(), FLAME layout,
                        package versions, storage dtype, the backbone reference
    model.safetensors   weights under the model's own names (``encoder.*``,
                        ``adapter.*``, ``llm.*`` unless a backbone folder provides
                        them, ``connector.*``, ``motion_tokenizer.*`` incl. its
                        normalisation/codebook buffers) and the speech codec
                        tensors (``codec.*``)
    tokenizer.json,     the tokenizer files (no ``llm.backbone``: tiny)
    tokenizer_config.json
    lora/               PEFT adapter (``adapter_config.json`` + safetensors), if any

With ``llm.backbone`` (edge / paper) the encoder, adaptor and LLM are read from
a Step-Audio-2-mini folder (relative to the checkpoint directory, or absolute)
and only what A²-LLM adds is stored here; ``config.json`` keeps the folder's
path and fingerprint, and a folder that does not match is refused
(:mod:`a2llm_ros.model.step_audio`).  Tied tensors are stored once (the first
name in ``state_dict`` order).
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional

import torch
from safetensors.torch import load_file, save_file

import a2llm_ros
from a2llm_ros.config import PATH_FIELDS, A2LLMConfig
from a2llm_ros.checkpoint_files import (BACKBONE_PREFIXES, CODEC_PREFIX, FORMAT,
                                        FORMAT_VERSION, CheckpointError, load_text_tokenizer,
                                        read_config, resolve_backbone, resolve_checkpoint)
from a2llm_ros.constants import CONFIG_FILE, LORA_DIR, WEIGHTS_FILE
from a2llm_ros.model.a2llm import A2LLM
from a2llm_ros.model.speech_codec import codec_state_dict, load_codec_state_dict


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


#: A tied LM head is the input embedding (Qwen2's ``tie_word_embeddings``).
TIED_HEAD = ("llm.lm_head.weight", "llm.model.embed_tokens.weight")


def _aliases(state: Dict[str, torch.Tensor], tied_head: bool = False) -> Dict[str, str]:
    """Tied tensors: {duplicate name: first name with the same storage}.

    Tensors on the meta device (a backbone not yet assigned) have no storage to
    compare: only the configured tied LM head (``tied_head``) is an alias there."""
    first, out = {}, {}
    for key, value in state.items():
        if value.is_meta:
            if tied_head and key == TIED_HEAD[0]:
                out[key] = TIED_HEAD[1]
            continue
        ident = (value.data_ptr(), tuple(value.shape), value.dtype)
        if value.numel() and ident in first:
            out[key] = first[ident]
        else:
            first.setdefault(ident, key)
    return out


def checkpoint_tensors(model: A2LLM, backbone_weights: bool = False) -> Dict[str, torch.Tensor]:
    """The flat name -> tensor dict stored in ``model.safetensors``.

    With a backbone folder (``llm.backbone``) the encoder, adaptor and LLM
    weights stay in that folder and are not stored (a LoRA goes to ``lora/``),
    unless ``backbone_weights`` (they changed, e.g. a LoRA was merged).
    """
    state = _module_state(model)
    aliases = _aliases(state, model.cfg.llm.tie_word_embeddings)
    state = {k: v for k, v in state.items() if k not in aliases}
    if model.cfg.llm.backbone and not backbone_weights:
        state = {k: v for k, v in state.items() if not k.startswith(BACKBONE_PREFIXES)}
    codec = codec_state_dict(model.speech_tokenizer, model.token2wav)
    state.update({CODEC_PREFIX + k: v for k, v in codec.items()})
    return state


def stored_config(model: A2LLM, out_dir: str) -> A2LLMConfig:
    """``model.cfg`` as written to ``out_dir``: a relative folder path
    (:data:`~a2llm_ros.config.PATH_FIELDS`) is rewritten relative to ``out_dir``
    so that it names the same folder from there; absolute paths stay."""
    out_dir = os.path.abspath(out_dir)
    paths = {}
    for part, name in PATH_FIELDS:
        value = getattr(getattr(model.cfg, part), name)
        if not value or os.path.isabs(value):
            continue
        if name == "backbone" and model.backbone_dir:
            target = model.backbone_dir
        else:
            target = os.path.join(model.base_dir or os.getcwd(), value)
        paths[name] = os.path.relpath(os.path.abspath(target), out_dir)
    return model.cfg.with_paths(**paths)


def save_checkpoint(model: A2LLM, out_dir: str, dtype: Optional[torch.dtype] = None,
                    backbone_weights: bool = False) -> str:
    """Write ``model`` to ``out_dir`` (see module docstring); returns ``out_dir``.

    ``dtype`` (e.g. ``torch.float16``) stores floating tensors in that type to
    halve the file; loading casts them back to the model's dtype.
    ``backbone_weights``: on a backbone, store the encoder, adaptor and LLM
    weights too (``llm_weights: checkpoint``, e.g. after merging a LoRA); the
    folder still provides the tokenizer and codec and is still fingerprinted.
    """
    if backbone_weights and _is_peft(model.llm):
        raise CheckpointError("backbone_weights with an unmerged LoRA: merge it first "
                              "(the adapter alone is saved without backbone_weights)")
    os.makedirs(out_dir, exist_ok=True)
    cfg = stored_config(model, out_dir)
    backbone_weights = backbone_weights and bool(cfg.llm.backbone)
    tensors = {}
    for key, value in checkpoint_tensors(model, backbone_weights).items():
        value = value.detach().cpu()
        if dtype is not None and value.is_floating_point() and not key.startswith(CODEC_PREFIX):
            value = value.to(dtype)
        tensors[key] = value.contiguous().clone()
    storage = str(dtype).replace("torch.", "") if dtype is not None else "native"
    backbone = None
    if cfg.llm.backbone:
        from a2llm_ros.model.step_audio import fingerprint, fingerprint_parts
        path = model.backbone_dir or resolve_backbone(cfg.llm.backbone, os.path.abspath(out_dir))
        backbone = {"path": cfg.llm.backbone, "fingerprint": fingerprint(path),
                    "parts": fingerprint_parts(path)}
    llm_weights = "backbone" if backbone and not backbone_weights else "checkpoint"
    save_file(tensors, os.path.join(out_dir, WEIGHTS_FILE),
              metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION,
            "preset": cfg.preset_name, "config": cfg.to_dict(),
            "flame_layout": model.layout.to_dict(), "versions": _versions(),
            "storage_dtype": storage,
            "llm_weights": llm_weights, "backbone": backbone,
            "lora": _is_peft(model.llm)}
    with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
        json.dump(meta, f, indent=2)
    if not cfg.llm.backbone:
        model.text_tokenizer.save(out_dir)
    if _is_peft(model.llm):
        model.llm.save_pretrained(os.path.join(out_dir, LORA_DIR), safe_serialization=True)
    return out_dir


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


def _read_meta(ckpt_dir: str) -> dict:
    with open(os.path.join(ckpt_dir, CONFIG_FILE)) as f:
        return json.load(f)


def load_checkpoint(ckpt_dir: str, expected_config: Optional[A2LLMConfig] = None,
                    device: str = "cpu", dtype: Optional[torch.dtype] = None) -> A2LLM:
    """Load a checkpoint strictly; ``"default"`` names the shipped one.

    A Step-Audio-2-mini folder (``config.json`` with ``model_type: step_audio_2``)
    is accepted too: its encoder, adaptor and LLM with a new connector and
    motion tokenizer (see :mod:`a2llm_ros.model.step_audio`).  ``dtype``: the
    backbone's compute dtype (default float32 on CPU, bfloat16 on CUDA).

    Raises ConfigMismatchError (config fields differ from the code or from
    ``expected_config``) or CheckpointError (missing / unexpected / mis-shaped
    weights, missing files, a backbone that does not match its reference).
    """
    from a2llm_ros.model import step_audio
    if ckpt_dir != "default" and step_audio.is_step_folder(ckpt_dir):
        return load_step_folder(ckpt_dir, device=device, dtype=dtype)
    ckpt_dir = resolve_checkpoint(ckpt_dir)
    cfg = read_config(ckpt_dir)
    if expected_config is not None:
        expected_config.check_same_model(cfg)
    weights = os.path.join(ckpt_dir, WEIGHTS_FILE)
    if not os.path.isfile(weights):
        raise CheckpointError(f"{ckpt_dir}: missing {WEIGHTS_FILE}")
    base = os.path.abspath(ckpt_dir)
    full = True
    if cfg.llm.backbone:
        meta = _read_meta(ckpt_dir)
        full = meta.get("llm_weights") == "checkpoint"
        model = step_audio.model_on_backbone(cfg, base, meta.get("backbone"), device, dtype,
                                             load_text_tokenizer(ckpt_dir, cfg),
                                             load_weights=not full)
    else:
        model = A2LLM(cfg, load_text_tokenizer(ckpt_dir, cfg), base_dir=base)
    stored = load_file(weights)
    expected = {k: v for k, v in checkpoint_tensors(model, backbone_weights=full).items()
                if not k.startswith(CODEC_PREFIX)}
    _check_keys(ckpt_dir, {k: v for k, v in stored.items() if not k.startswith(CODEC_PREFIX)},
                expected)
    if cfg.llm.backbone and full:
        step_audio.assign_backbone_tensors(
            model, {k: v for k, v in stored.items() if k.startswith(BACKBONE_PREFIXES)},
            dtype or step_audio.default_dtype(device))
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
    aliases = _aliases(state, model.cfg.llm.tie_word_embeddings)
    params = {k: v for k, v in stored.items() if not k.startswith(CODEC_PREFIX)}
    params.update({dup: params[src] for dup, src in aliases.items() if src in params})
    if model.cfg.llm.backbone:
        state = {k: v for k, v in state.items() if not k.startswith(BACKBONE_PREFIXES)}
    _copy_into(state, params)


def _copy_into(targets: Dict[str, torch.Tensor], values: Dict[str, torch.Tensor]) -> None:
    missing = sorted(set(targets) - set(values))
    if missing:
        raise CheckpointError("missing weights: " + ", ".join(missing[:20]))
    for key, target in targets.items():
        target.copy_(values[key].to(target.dtype))


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


def init_model(cfg: A2LLMConfig, seed: int = 0, base_dir: Optional[str] = None,
               device="cpu", dtype: Optional[torch.dtype] = None) -> A2LLM:
    """A randomly initialised model (seeded) with a codec fitted on synthetic audio.

    With ``llm.backbone`` the encoder, adaptor and LLM come from that folder.
    """
    torch.manual_seed(int(seed))
    if cfg.llm.backbone:
        from a2llm_ros.model import step_audio
        model = step_audio.model_on_backbone(cfg, base_dir, None, device, dtype)
    else:
        model = A2LLM(cfg, base_dir=base_dir)
    model.speech_tokenizer.fit([synthetic_codec_audio(seed)], seed=seed, placeholder=True)
    return model.eval()


def load_step_folder(path: str, device="cpu", dtype: Optional[torch.dtype] = None,
                     seed: int = 0) -> A2LLM:
    """A bare Step-Audio-2-mini folder as an A²-LLM: its encoder, adaptor, LLM,
    tokenizer (and codec, with a complete ``token2wav/``), new connector and motion
    tokenizer (:func:`init_model`)."""
    from a2llm_ros.model.step_audio import step_config
    return init_model(step_config(path), seed, device=device, dtype=dtype).to(device)

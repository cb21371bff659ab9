"""Step-Audio-2-mini folders: detection, config, fingerprint and lazy weight loading.

A published folder holds ``config.json`` (``model_type: step_audio_2``, nested
``text_config`` and ``audio_encoder_config``), ``model-0000N-of-0000M.safetensors``
shards with ``model.safetensors.index.json`` (or one ``model.safetensors``) and
tokenizer files.  Its tensors map onto :class:`~a2llm_ros.model.a2llm.A2LLM`
unchanged except for one prefix: ``model.*`` / ``lm_head.*`` -> ``llm.model.*`` /
``llm.lm_head.*``; ``encoder.*`` and ``adapter.*`` keep their names.

Loading builds the encoder, adaptor and LLM on the ``meta`` device and assigns
each tensor as it is read from its shard (``load_state_dict(assign=True)``), so
the weights are never held twice.  No ``trust_remote_code``, no pickle.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, List, Optional

import torch

from a2llm_ros.checkpoint_files import STEP_MODEL_TYPE, resolve_backbone

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
#: Step-Audio-2-mini ``text_config`` keys -> LLMConfig fields.
TEXT_KEYS = {"hidden_size": "hidden_size", "num_hidden_layers": "n_layers",
             "num_attention_heads": "n_heads", "num_key_value_heads": "n_kv_heads",
             "intermediate_size": "intermediate_size", "rope_theta": "rope_theta",
             "rms_norm_eps": "rms_norm_eps", "vocab_size": "vocab_size",
             "max_position_embeddings": "max_position_embeddings",
             "tie_word_embeddings": "tie_word_embeddings"}
#: ``audio_encoder_config`` keys -> AudioEncoderConfig fields.
AUDIO_KEYS = {"n_mels": "n_mels", "n_audio_state": "d_model", "n_audio_head": "n_heads",
              "n_audio_layer": "n_layers", "n_audio_ctx": "max_positions",
              "llm_dim": "llm_hidden"}
#: Fixed facts of Step's audio path that the code relies on.
AUDIO_FIXED = {"kernel_size": 3, "adapter_stride": 2}
#: Width of ``adapter.linear1`` (not in the config: read from the weights).
ADAPTER_HIDDEN_KEY = "adapter.linear1.weight"


class BackboneError(ValueError):
    """A Step-Audio-2-mini folder is incomplete or does not match."""


def _config_path(path: str) -> str:
    return os.path.join(path, "config.json")


def is_step_folder(path: str) -> bool:
    """Whether ``path`` is a directory whose config.json declares ``step_audio_2``."""
    cfg = _config_path(path)
    if not os.path.isfile(cfg):
        return False
    try:
        with open(cfg) as f:
            return json.load(f).get("model_type") == STEP_MODEL_TYPE
    except (OSError, ValueError):
        return False


def read_folder_config(path: str) -> dict:
    """The folder's config.json, checked: model type and the nested sections."""
    cfg_path = _config_path(path)
    if not os.path.isfile(cfg_path):
        raise BackboneError(f"{path}: no config.json (a Step-Audio-2-mini folder expected)")
    with open(cfg_path) as f:
        raw = json.load(f)
    if raw.get("model_type") != STEP_MODEL_TYPE:
        raise BackboneError(f"{cfg_path}: model_type {raw.get('model_type')!r}, expected "
                            f"{STEP_MODEL_TYPE!r}")
    for section in ("text_config", "audio_encoder_config"):
        if not isinstance(raw.get(section), dict):
            raise BackboneError(f"{cfg_path}: missing section {section!r}")
    audio = raw["audio_encoder_config"]
    for key, value in AUDIO_FIXED.items():
        if audio.get(key, value) != value:
            raise BackboneError(f"{cfg_path}: audio_encoder_config.{key} is {audio[key]}, "
                                f"this code supports {value}")
    return raw


def shard_map(path: str) -> Dict[str, str]:
    """Tensor name -> shard file (absolute), every shard checked to exist."""
    index = os.path.join(path, INDEX_FILE)
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise BackboneError(f"{index}: no weight_map")
        out = {k: os.path.join(path, v) for k, v in weight_map.items()}
    elif os.path.isfile(os.path.join(path, SINGLE_FILE)):
        from safetensors import safe_open
        single = os.path.join(path, SINGLE_FILE)
        with safe_open(single, framework="pt") as f:
            out = {k: single for k in f.keys()}
    else:
        raise BackboneError(f"{path}: neither {INDEX_FILE} nor {SINGLE_FILE}")
    missing = sorted({v for v in out.values() if not os.path.isfile(v)})
    if missing:
        names = ", ".join(os.path.basename(m) for m in missing)
        raise BackboneError(f"{path}: missing shard file(s) {names} named in {INDEX_FILE}")
    return out


def fingerprint_parts(path: str) -> dict:
    """What :func:`fingerprint` covers, part by part (stored beside it in a checkpoint so
    that a mismatch can be named): ``{"config": sha256 of config.json, "weight_map":
    sha256 of the tensor -> shard map, "shards": {file name: bytes}}``."""
    with open(_config_path(path), "rb") as f:
        config = hashlib.sha256(f.read()).hexdigest()[:16]
    shards = shard_map(path)
    wmap = hashlib.sha256("".join(f"{k}={os.path.basename(shards[k])}\n"
                                  for k in sorted(shards)).encode()).hexdigest()[:16]
    sizes = {os.path.basename(s): os.path.getsize(s) for s in sorted(set(shards.values()))}
    return {"config": config, "weight_map": wmap, "shards": sizes}


def fingerprint(path: str) -> str:
    """Cheap identity of a folder: one hash over :func:`fingerprint_parts`."""
    parts = json.dumps(fingerprint_parts(path), sort_keys=True).encode()
    return "sha256:" + hashlib.sha256(parts).hexdigest()[:32]


def fingerprint_difference(reference: Optional[dict], found: dict) -> str:
    """What differs between two :func:`fingerprint_parts` (``""`` when unknown or none)."""
    if not reference:
        return ""
    out = []
    if reference.get("config") != found["config"]:
        out.append("config.json changed")
    if reference.get("weight_map") != found["weight_map"]:
        out.append("the tensor -> shard map changed")
    ref_shards = reference.get("shards") or {}
    for name in sorted(set(ref_shards) | set(found["shards"])):
        was, now = ref_shards.get(name), found["shards"].get(name)
        if was is None:
            out.append(f"new shard {name}")
        elif now is None:
            out.append(f"shard {name} is gone")
        elif was != now:
            out.append(f"shard {name} is {now} bytes, was {was}")
    return "; ".join(out)


def _adapter_hidden(path: str) -> Optional[int]:
    from safetensors import safe_open
    shards = shard_map(path)
    if ADAPTER_HIDDEN_KEY not in shards:
        return None
    with safe_open(shards[ADAPTER_HIDDEN_KEY], framework="pt") as f:
        return int(f.get_slice(ADAPTER_HIDDEN_KEY).get_shape()[0])


def config_overrides(path: str) -> Dict[str, dict]:
    """``A2LLMConfig.preset`` overrides read from a folder (sizes of llm, audio, mel)."""
    raw = read_folder_config(path)
    text, audio = raw["text_config"], raw["audio_encoder_config"]
    llm = {field: text[key] for key, field in TEXT_KEYS.items() if key in text}
    enc = {field: audio[key] for key, field in AUDIO_KEYS.items() if key in audio}
    if "d_model" in enc:
        enc["ff"] = 4 * enc["d_model"]
    hidden = _adapter_hidden(path)
    if hidden is not None:
        enc["adaptor_hidden"] = hidden
    return {"llm": llm, "audio": enc, "mel": {"n_mels": enc.get("n_mels", 128)}}


def step_config(path: str, preset: str = "paper"):
    """An :class:`A2LLMConfig` for a bare folder: its sizes, backbone = the folder,
    and Step's speech codec when the folder has a complete ``token2wav/``."""
    from a2llm_ros.config import A2LLMConfig
    from a2llm_ros.model.a2llm import TOKEN2WAV_DIR
    from a2llm_ros.model.configs import SpeechCodecConfig
    from a2llm_ros.model.step_token2wav import is_token2wav_folder
    over = config_overrides(path)
    over["llm"]["backbone"] = os.path.abspath(path)
    if is_token2wav_folder(os.path.join(path, TOKEN2WAV_DIR)):
        over["codec"] = SpeechCodecConfig.step().to_dict()
    return A2LLMConfig.preset(preset, **over)


def check_config(cfg, path: str) -> None:
    """Raise BackboneError naming every size where ``cfg`` and the folder differ."""
    over = config_overrides(path)
    bad = []
    for part in ("llm", "audio"):
        ours = getattr(cfg, part)
        for key, value in over[part].items():
            if getattr(ours, key) != value:
                bad.append(f"{part}.{key} (checkpoint {getattr(ours, key)}, folder {value})")
    if bad:
        raise BackboneError(f"backbone {path} does not match the checkpoint config: "
                            + ", ".join(bad))


def _target_name(key: str) -> str:
    if key.startswith(("model.", "lm_head.")):
        return "llm." + key
    return key


@torch.no_grad()
def load_backbone_weights(model, path: str, dtype: torch.dtype) -> None:
    """Assign the folder's tensors to ``model.encoder/adapter/llm`` (built on meta)."""
    from safetensors import safe_open
    shards = shard_map(path)
    expected = {}
    for part in ("encoder", "adapter", "llm"):
        for name, t in getattr(model, part).state_dict().items():
            expected[f"{part}.{name}"] = t
    tied = bool(getattr(model.cfg.llm, "tie_word_embeddings", False))
    unexpected = sorted(k for k in shards if _target_name(k) not in expected)
    if unexpected:
        more = f" ... (+{len(unexpected) - 10})" if len(unexpected) > 10 else ""
        raise BackboneError(f"{path}: unexpected tensors {', '.join(unexpected[:10])}{more}")
    have = {_target_name(k) for k in shards}
    missing = sorted(k for k in expected if k not in have
                     and not (tied and k == "llm.lm_head.weight"))
    if missing:
        more = f" ... (+{len(missing) - 10})" if len(missing) > 10 else ""
        raise BackboneError(f"{path}: missing tensors {', '.join(missing[:10])}{more}")
    by_shard: Dict[str, List[str]] = {}
    for key, shard in shards.items():
        by_shard.setdefault(shard, []).append(key)
    for shard, keys in sorted(by_shard.items()):
        with safe_open(shard, framework="pt") as f:
            for key in keys:
                target = _target_name(key)
                shape = tuple(f.get_slice(key).get_shape())
                want = tuple(expected[target].shape)
                if shape != want:
                    raise BackboneError(f"{os.path.basename(shard)}: {key} has shape {shape}, "
                                        f"the config expects {want}")
                part, name = target.split(".", 1)
                value = f.get_tensor(key)
                value = value.to(dtype) if value.is_floating_point() else value
                getattr(model, part).load_state_dict({name: value}, strict=False, assign=True)
    _finish_backbone(model)


@torch.no_grad()
def assign_backbone_tensors(model, tensors: Dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    """Assign checkpoint-named tensors (``encoder.*``, ``adapter.*``, ``llm.*``, as an
    A²-LLM checkpoint with ``llm_weights: checkpoint`` stores them) to a model whose
    backbone was built on the meta device; floating tensors are cast to ``dtype``."""
    for part in ("encoder", "adapter", "llm"):
        prefix = part + "."
        sub = {k[len(prefix):]: v.to(dtype) if v.is_floating_point() else v
               for k, v in tensors.items() if k.startswith(prefix)}
        getattr(model, part).load_state_dict(sub, strict=False, assign=True)
    _finish_backbone(model)


def _finish_backbone(model) -> None:
    """Tie the LM head when configured, rebuild the rotary tables, and check that no
    backbone tensor was left without storage."""
    if bool(getattr(model.cfg.llm, "tie_word_embeddings", False)):
        model.llm.lm_head.weight = model.llm.model.embed_tokens.weight
    model.llm.model.init_rope()
    left = [f"{part}.{name}" for part in ("encoder", "adapter", "llm")
            for name, t in getattr(model, part).state_dict().items() if t.is_meta]
    if left:
        raise BackboneError(f"backbone tensors without weights: {', '.join(left[:10])}")


def default_dtype(device) -> torch.dtype:
    """Backbone compute dtype: bfloat16 on CUDA, float32 elsewhere."""
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def model_on_backbone(cfg, base_dir: Optional[str], reference: Optional[dict], device,
                      dtype: Optional[torch.dtype], tokenizer=None, load_weights: bool = True):
    """An :class:`A2LLM` whose encoder, adaptor and LLM are read from ``cfg.llm.backbone``.

    ``reference`` (``{"path", "fingerprint", "parts"}`` from a checkpoint) is
    checked against the folder (a mismatch names what differs when ``parts``
    is there); the connector and motion tokenizer are new (random).
    ``load_weights=False`` leaves the encoder, adaptor and LLM on the meta device
    (the caller assigns them: :func:`assign_backbone_tensors`).
    """
    from a2llm_ros.model.a2llm import A2LLM
    path = resolve_backbone(cfg.llm.backbone, base_dir)
    if not os.path.isdir(path):
        raise BackboneError(f"backbone folder not found: {path} (llm.backbone="
                            f"{cfg.llm.backbone!r}, relative to {base_dir})")
    read_folder_config(path)
    check_config(cfg, path)
    if reference and reference.get("fingerprint"):
        found = fingerprint(path)
        if found != reference["fingerprint"]:
            what = fingerprint_difference(reference.get("parts"), fingerprint_parts(path)) \
                or "config.json, weight map or shard sizes differ"
            raise BackboneError(f"backbone {path} is not the one this checkpoint was made on: "
                                f"fingerprint {found}, expected {reference['fingerprint']} "
                                f"({what})")
    dtype = dtype or default_dtype(device)
    model = A2LLM(cfg, tokenizer, base_dir=base_dir, meta_backbone=True)
    if load_weights:
        load_backbone_weights(model, path, dtype)
    model.backbone_dir = path
    return model


__all__ = ["is_step_folder", "read_folder_config", "shard_map", "fingerprint",
           "fingerprint_parts", "fingerprint_difference", "step_config", "config_overrides",
           "check_config", "load_backbone_weights", "assign_backbone_tensors",
           "model_on_backbone",
           "BackboneError", "STEP_MODEL_TYPE"]

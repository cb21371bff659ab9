"""A tiny Step-Audio-2-mini folder in exactly the published layout (test helper).

:func:`write_step_folder` writes what the real ``stepfun-ai/Step-Audio-2-mini``
folder holds, at CPU size:

* ``config.json``: ``model_type: step_audio_2``, ``architectures:
  ["StepAudio2ForCausalLM"]``, nested ``text_config`` (Qwen2) and
  ``audio_encoder_config``; the real vocabulary size (158720) and audio
  context (1500 positions, 128 mels) are kept, the widths are tiny;
* ``model-0000N-of-0000M.safetensors`` shards (two by default) and
  ``model.safetensors.index.json`` (``{"metadata": {"total_size"}, "weight_map"}``)
  with the published tensor names (``model.*``, ``lm_head.weight``,
  ``encoder.*``, ``adapter.*``), random weights, bf16 or float32;
* ``tokenizer.json`` + ``tokenizer_config.json`` whose named tokens have the real
  ids: text ids below 151688 (a character vocabulary padded with
  ``<|extra_N|>`` filler tokens, ``<|BOT|>`` / ``<|EOT|>`` among them),
  ``<audio_start>`` = 151688, ``<audio_end>``, ``<audio_patch>``,
  ``<tts_start>``, ``<tts_end>``, ``<tts_pad>`` in 151689..151695, and
  ``<audio_k>`` = 151696 + k for k = 0..6561.

The tensor shapes are written from the config here (not from the package's
modules), so loading the folder tests the package's name and shape mapping.
"""
from __future__ import annotations

import json
import os
import string
from typing import Dict, Optional, Sequence

import torch
from safetensors.torch import save_file

#: Published ids of Step-Audio-2-mini's tokenizer.
AUDIO_START_ID = 151688
SPEECH_START_ID = 151696
N_SPEECH = 6561
VOCAB_SIZE = 158720
#: Text characters of the test tokenizer (one id each).
CHARS = "".join(c for c in string.printable if c not in "\t\r\x0b\x0c")
UNK = "\ufffd"
#: Named tokens at 151689..151695 (two fillers: the real folder has 7 ids there).
AFTER_AUDIO_START = ("<audio_end>", "<tts_start>", "<|extra_a|>", "<tts_end>", "<audio_patch>",
                     "<tts_pad>", "<|extra_b|>")
#: Ids of <|BOT|> and <|EOT|> (below <audio_start>, as in the real vocabulary).
BOT_ID, EOT_ID = 151665, 151666


def tiny_config(hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                ff: int = 128, audio_state: int = 64, audio_layers: int = 2,
                audio_heads: int = 4, vocab_size: int = VOCAB_SIZE) -> dict:
    """config.json of the tiny folder (the published structure and keys)."""
    return {
        "architectures": ["StepAudio2ForCausalLM"],
        "model_type": "step_audio_2",
        "torch_dtype": "bfloat16",
        "text_config": {
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
            "hidden_size": hidden, "intermediate_size": ff, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv_heads,
            "vocab_size": vocab_size, "rope_theta": 1000000.0,
            "max_position_embeddings": 16384, "rms_norm_eps": 1e-6, "hidden_act": "silu",
            "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
        "audio_encoder_config": {
            "n_mels": 128, "n_audio_ctx": 1500, "n_audio_state": audio_state,
            "n_audio_head": audio_heads, "n_audio_layer": audio_layers, "kernel_size": 3,
            "adapter_stride": 2, "llm_dim": hidden},
    }


def tensor_shapes(config: dict, adapter_hidden: int = 96) -> Dict[str, tuple]:
    """Published tensor names -> shapes for ``config`` (Step-Audio-2-mini layout)."""
    t, a = config["text_config"], config["audio_encoder_config"]
    H, F, V = t["hidden_size"], t["intermediate_size"], t["vocab_size"]
    dh = H // t["num_attention_heads"]
    kv = t["num_key_value_heads"] * dh
    d, M, k = a["n_audio_state"], a["n_mels"], a["kernel_size"]
    out = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,),
           "lm_head.weight": (V, H)}
    for i in range(t["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out.update({
            p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,),
            p + "self_attn.q_proj.weight": (H, H), p + "self_attn.q_proj.bias": (H,),
            p + "self_attn.k_proj.weight": (kv, H), p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, H), p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (H, H),
            p + "mlp.gate_proj.weight": (F, H), p + "mlp.up_proj.weight": (F, H),
            p + "mlp.down_proj.weight": (H, F)})
    out.update({"encoder.conv1.weight": (d, M, k), "encoder.conv1.bias": (d,),
                "encoder.conv2.weight": (d, d, k), "encoder.conv2.bias": (d,),
                "encoder.positional_embedding.weight": (a["n_audio_ctx"], d),
                "encoder.after_norm.weight": (d,), "encoder.after_norm.bias": (d,)})
    for i in range(a["n_audio_layer"]):
        p = f"encoder.blocks.{i}."
        out.update({
            p + "attn.query.weight": (d, d), p + "attn.query.bias": (d,),
            p + "attn.key.weight": (d, d),
            p + "attn.value.weight": (d, d), p + "attn.value.bias": (d,),
            p + "attn.out.weight": (d, d), p + "attn.out.bias": (d,),
            p + "attn_ln.weight": (d,), p + "attn_ln.bias": (d,),
            p + "mlp.0.weight": (4 * d, d), p + "mlp.0.bias": (4 * d,),
            p + "mlp.2.weight": (d, 4 * d), p + "mlp.2.bias": (d,),
            p + "mlp_ln.weight": (d,), p + "mlp_ln.bias": (d,)})
    out.update({"adapter.conv.weight": (d, d, k), "adapter.conv.bias": (d,),
                "adapter.linear1.weight": (adapter_hidden, d),
                "adapter.linear1.bias": (adapter_hidden,),
                "adapter.linear2.weight": (H, adapter_hidden), "adapter.linear2.bias": (H,)})
    return out


def random_tensor(name: str, shape: tuple, gen: torch.Generator) -> torch.Tensor:
    """Plausible random values: norms near 1 (weights) / 0 (biases), projections ~ N(0, s)."""
    if name.endswith(("layernorm.weight", "norm.weight", "_ln.weight")):
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    if name.endswith(("_ln.bias", "after_norm.bias")):
        return 0.1 * torch.randn(shape, generator=gen)
    if name.endswith("bias"):
        return 0.05 * torch.randn(shape, generator=gen)
    if name == "model.embed_tokens.weight":
        return torch.randn(shape, generator=gen)
    if name.endswith("positional_embedding.weight"):
        return 0.5 * torch.randn(shape, generator=gen)
    fan_in = 1
    for s in shape[1:]:
        fan_in *= s
    return torch.randn(shape, generator=gen) / fan_in ** 0.5


def write_tokenizer(path: str, drop: Sequence[str] = ()) -> None:
    """tokenizer.json + tokenizer_config.json with Step's named tokens at their ids.

    ``drop``: named tokens left out (to test incomplete tokenizers; later ids shift).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast
    vocab = {UNK: 0}
    for c in CHARS:
        vocab.setdefault(c, len(vocab))
    while len(vocab) < AUDIO_START_ID:
        i = len(vocab)
        vocab[{BOT_ID: "<|BOT|>", EOT_ID: "<|EOT|>"}.get(i, f"<|extra_{i}|>")] = i
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    core.decoder = decoders.Fuse()
    named = ["<|BOT|>", "<|EOT|>", "<audio_start>", *AFTER_AUDIO_START]
    speech = [f"<audio_{k}>" for k in range(N_SPEECH + 1)]
    core.add_special_tokens([AddedToken(t, special=True, normalized=False)
                             for t in named + speech if t not in drop])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token=UNK)
    tok.save_pretrained(path)


def write_step_folder(path: str, seed: int = 0, hidden: int = 64, layers: int = 2,
                      heads: int = 4, kv_heads: int = 2, ff: int = 128, audio_state: int = 64,
                      audio_layers: int = 2, audio_heads: int = 4, adapter_hidden: int = 96,
                      dtype: torch.dtype = torch.bfloat16, n_shards: int = 2,
                      config_edit: Optional[dict] = None, shapes_edit: Optional[dict] = None,
                      tokenizer_drop: Sequence[str] = ()) -> str:
    """Write the tiny folder to ``path`` (see module docstring); returns ``path``.

    ``config_edit``: top-level config.json keys replaced; ``shapes_edit``: tensor
    name -> shape written instead of the config's (to make broken folders).
    """
    os.makedirs(path, exist_ok=True)
    config = tiny_config(hidden, layers, heads, kv_heads, ff, audio_state, audio_layers,
                         audio_heads)
    config["torch_dtype"] = str(dtype).replace("torch.", "")
    config.update(config_edit or {})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    shapes = tensor_shapes(tiny_config(hidden, layers, heads, kv_heads, ff, audio_state,
                                       audio_layers, audio_heads), adapter_hidden)
    shapes.update(shapes_edit or {})
    gen = torch.Generator().manual_seed(int(seed))
    tensors = {name: random_tensor(name, shape, gen).to(dtype)
               for name, shape in shapes.items()}
    names = list(tensors)
    # the published split: the LLM in the first shards, the audio part in the last
    text = [n for n in names if n.startswith(("model.", "lm_head."))]
    audio = [n for n in names if n not in text]
    groups = [text[i::max(n_shards - 1, 1)] for i in range(max(n_shards - 1, 1))] + [audio] \
        if n_shards > 1 else [names]
    weight_map, total = {}, 0
    for i, group in enumerate(groups):
        shard = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: tensors[n].contiguous() for n in group}, os.path.join(path, shard),
                  metadata={"format": "pt"})
        for n in group:
            weight_map[n] = shard
            total += tensors[n].numel() * tensors[n].element_size()
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    write_tokenizer(path, tokenizer_drop)
    return path


__all__ = ["write_step_folder", "write_tokenizer", "tiny_config", "tensor_shapes",
           "AUDIO_START_ID", "SPEECH_START_ID", "N_SPEECH", "VOCAB_SIZE"]

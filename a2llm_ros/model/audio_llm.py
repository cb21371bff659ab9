"""Audio LLM: the Qwen2 backbone, its forward and LM head, and splicing the audio in.

Backbone
--------
:class:`~a2llm_ros.model.qwen2.Qwen2LM` in every preset.  ``paper`` and ``edge``
are Step-Audio-2-mini's ``text_config`` (hidden 3584, 28 layers, 28 heads, 4 KV
heads, FFN 18944, vocabulary 158720, rope theta 1e6, untied head) and read
their weights from a Step-Audio-2-mini folder (``LLMConfig.backbone``, see
:mod:`a2llm_ros.model.step_audio`); ``tiny`` is the same module at CPU size.

The vocabulary, chat format and answer layout are in :mod:`a2llm_ros.model.chat`
(torch-free: the generator and the engine backends use them without PyTorch).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from a2llm_ros.model.qwen2 import KV, Qwen2LM
from a2llm_ros.model.configs import LLMConfig


def build_llm(cfg: LLMConfig, dtype: torch.dtype = torch.float32) -> Qwen2LM:
    """The backbone module (random weights; a Step folder's are loaded afterwards)."""
    lm = Qwen2LM(cfg.vocab_size, cfg.hidden_size, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads,
                 cfg.intermediate_size, cfg.rms_norm_eps, cfg.rope_theta,
                 cfg.tie_word_embeddings)
    return lm.to(dtype)


def base_causal_lm(llm) -> Qwen2LM:
    """The :class:`Qwen2LM` inside a possible PEFT wrapper."""
    return llm.get_base_model() if hasattr(llm, "peft_config") else llm


def llm_hidden(llm, inputs_embeds, attention_mask=None,
               past: Optional[List[KV]] = None) -> Tuple[torch.Tensor, List[KV]]:
    """Backbone without the LM head: -> (last hidden [B, T, H] after the final norm, kv)."""
    return base_causal_lm(llm)(inputs_embeds, attention_mask, past)


def llm_logits(llm, hidden):
    """LM head: hidden [..., H] -> logits [..., V]."""
    return base_causal_lm(llm).logits(hidden)

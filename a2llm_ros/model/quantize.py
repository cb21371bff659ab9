"""Weight-only quantization of the LLM's linear layers (``edge``: Jetson AGX Orin).

Decoding one token at batch 1 reads every LLM weight once, so on a
bandwidth-bound device tokens/s <= memory bandwidth / weight bytes (see
docs/edge.md).  Weight-only int8 halves the bytes of bf16, int4 quarters them;
activations stay in the compute dtype.  The quantization itself comes from
``torchao`` (``quantize_`` with ``Int8WeightOnlyConfig`` /
``Int4WeightOnlyConfig``), imported only when asked for:

* ``int8`` runs on CPU and CUDA (tested here at tiny size on CPU);
* ``int4`` needs torchao's CUDA kernels (Jetson / desktop GPUs).

The embedding table is not quantized (one row is read per token).
"""
from __future__ import annotations

import logging

import torch
from torch import nn

#: Accepted weight modes.
WEIGHT_MODES = ("none", "int8", "int4")
#: Group size of int4 weight scales.
INT4_GROUP_SIZE = 128


def quiet_torchao_on_cpu() -> None:
    """Without CUDA, torchao warns at import that its CUDA kernel libraries do not load
    (peft imports it too); those warnings say nothing about the CPU path, so hide them."""
    if not torch.cuda.is_available():
        logger = logging.getLogger("torchao")
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.ERROR)


def quantize_llm_weights(model, mode: str):
    """Quantize the linear layers of ``model.llm`` in place (``mode``: see WEIGHT_MODES)."""
    if mode not in WEIGHT_MODES:
        raise ValueError(f"weight quantization must be one of {', '.join(WEIGHT_MODES)}, "
                         f"got {mode!r}")
    if mode == "none":
        return model
    quiet_torchao_on_cpu()
    try:
        from torchao.quantization import (Int4WeightOnlyConfig, Int8WeightOnlyConfig,
                                          quantize_)
    except ImportError as exc:
        raise RuntimeError(f"{mode} weight quantization needs torchao "
                           f"(pip install torchao): {exc}") from exc
    from a2llm_ros.model.audio_llm import base_causal_lm
    lm = base_causal_lm(model.llm)
    if mode == "int4":
        config = Int4WeightOnlyConfig(group_size=INT4_GROUP_SIZE)
    else:
        config = Int8WeightOnlyConfig()
    try:
        quantize_(lm, config, filter_fn=lambda m, fqn: isinstance(m, nn.Linear))
    except ImportError as exc:  # int4 kernels are CUDA-only
        raise RuntimeError(f"{mode} weight quantization is not available on this machine "
                           f"(torchao: {exc}); int8 runs on CPU and CUDA") from exc
    return model


def linear_weight_bytes(model) -> int:
    """Bytes held by the LLM's linear weights (quantized tensors count their storage)."""
    from a2llm_ros.model.audio_llm import base_causal_lm
    total = 0
    for module in base_causal_lm(model.llm).modules():
        if isinstance(module, nn.Linear):
            total += _tensor_bytes(module.weight)
    return total


def _tensor_bytes(t) -> int:
    inner = getattr(t, "__tensor_flatten__", None)
    if inner is None:
        return t.numel() * t.element_size()
    names, _ = t.__tensor_flatten__()
    return sum(_tensor_bytes(getattr(t, n)) for n in names)


__all__ = ["WEIGHT_MODES", "quantize_llm_weights", "linear_weight_bytes",
           "quiet_torchao_on_cpu"]

"""Inference engines: ONNX export, ONNX Runtime and TensorRT backends, one interface.

Public API::

    from a2llm_ros.engines import BackendConfig, load_backend, EngineError, describe_auto
    backend = load_backend(checkpoint_dir, BackendConfig(kind="auto"))   # generation.Backend
    kind, reason = describe_auto()

Every backend implements :class:`a2llm_ros.generation.Backend`, so the
generator does not know which one it runs on: ``torch`` (the PyTorch model,
CPU or CUDA, optional ``torch.compile``), ``onnxruntime`` (the exported ONNX
graphs; CPU, or the CUDA execution provider) and ``tensorrt`` (engines built
from the same graphs).  See docs/engines.md.

Heavy modules (torch, onnx, onnxruntime, tensorrt, pycuda) are imported
lazily: importing this package only loads the config.
"""
from a2llm_ros.engines.config import BackendConfig, EngineError


def load_backend(checkpoint_dir: str, cfg: "BackendConfig" = None):
    """Backend for ``checkpoint_dir`` (see :func:`a2llm_ros.engines.select.load_backend`)."""
    from a2llm_ros.engines.select import load_backend as _load
    return _load(checkpoint_dir, cfg)


def describe_auto(checkpoint_dir: str = None, cfg: "BackendConfig" = None):
    """(kind, reason) of ``auto`` (see :func:`a2llm_ros.engines.select.describe_auto`)."""
    from a2llm_ros.engines.select import describe_auto as _describe
    return _describe(checkpoint_dir, cfg)


__all__ = ["BackendConfig", "EngineError", "load_backend", "describe_auto"]

"""ONNX Runtime backend: the exported graphs in ``InferenceSession`` s.

CPU by default; with ``device`` ``cuda`` / ``cuda:N`` (or ``auto`` on a GPU
machine) and an onnxruntime build that has the CUDA execution provider, the
sessions run on the GPU (inputs and outputs still pass through host memory).
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, Optional

import numpy as np

from a2llm_ros.engines.config import BackendConfig, EngineError
from a2llm_ros.engines.graph_backend import GraphBackend, Zeros, needed_graphs
from a2llm_ros.engines.manifest import load_manifest

CUDA_EP, CPU_EP = "CUDAExecutionProvider", "CPUExecutionProvider"


def ort_providers(device: str):
    """(providers list, description) for ``device`` with the installed onnxruntime."""
    import onnxruntime as ort
    available = ort.get_available_providers()
    want_cuda = device.startswith("cuda") or device == "auto"
    if want_cuda and CUDA_EP in available:
        index = int(device.split(":")[1]) if ":" in device else 0
        return [(CUDA_EP, {"device_id": index}), CPU_EP], f"CUDA EP (device {index})"
    if device.startswith("cuda"):
        raise EngineError(f"device {device!r} asked for, but this onnxruntime build has no "
                          f"{CUDA_EP} (providers: {', '.join(available)}); install "
                          f"onnxruntime-gpu or use device 'cpu'")
    return [CPU_EP], "CPU EP"


class OrtRunner:
    """One ``InferenceSession`` per graph; :meth:`run` as described in graph_backend."""

    kind = "onnxruntime"

    def __init__(self, onnx_dir: str, manifest: dict, graphs: Iterable[str],
                 cfg: BackendConfig):
        import onnxruntime as ort
        self.providers, self.provider_desc = ort_providers(cfg.device)
        so = ort.SessionOptions()
        so.intra_op_num_threads = cfg.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 0 if cfg.verbose else 3
        self.sessions: Dict[str, "ort.InferenceSession"] = {}
        self.outputs: Dict[str, list] = {}
        self.input_types: Dict[str, Dict[str, np.dtype]] = {}
        for name in graphs:
            path = os.path.join(onnx_dir, manifest["graphs"][name]["file"])
            sess = ort.InferenceSession(path, so, providers=self.providers)
            self.sessions[name] = sess
            self.outputs[name] = [o.name for o in sess.get_outputs()]
            self.input_types[name] = {i.name: _np_type(i.type) for i in sess.get_inputs()}
        self._zeros: Dict[tuple, np.ndarray] = {}

    def _value(self, graph: str, name: str, value) -> np.ndarray:
        dtype = self.input_types[graph][name]
        if isinstance(value, Zeros):
            key = (value.shape, dtype.str)
            if key not in self._zeros:
                self._zeros[key] = np.zeros(value.shape, dtype)
            return self._zeros[key]
        return np.ascontiguousarray(value, dtype=dtype)

    def run(self, graph: str, feeds: dict, profile: Optional[str] = None, host=()) -> dict:
        """Run ``graph``; every output comes back as a NumPy array."""
        if graph not in self.sessions:
            raise EngineError(f"graph {graph!r} is not loaded (loaded: {sorted(self.sessions)})")
        inputs = {k: self._value(graph, k, v) for k, v in feeds.items()}
        outs = self.sessions[graph].run(None, inputs)
        return dict(zip(self.outputs[graph], outs))


def _np_type(onnx_type: str) -> np.dtype:
    table = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
             "tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_}
    if onnx_type not in table:
        raise EngineError(f"unsupported ONNX input type {onnx_type}")
    return np.dtype(table[onnx_type])


class OrtBackend(GraphBackend):
    """:class:`GraphBackend` on ONNX Runtime."""

    kind = "onnxruntime"


def load_ort_backend(checkpoint_dir: str, cfg: BackendConfig) -> OrtBackend:
    """ONNX Runtime backend for ``checkpoint_dir`` (graphs from ``cfg.onnx_dir``)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise EngineError(f"onnxruntime is not installed ({exc}); pip install onnxruntime "
                          f"(or onnxruntime-gpu)") from exc
    from a2llm_ros.checkpoint_files import resolve_checkpoint
    from a2llm_ros.engines.model_info import ModelInfo
    checkpoint_dir = resolve_checkpoint(checkpoint_dir)
    kv_mode = cfg.kv_mode("onnxruntime")
    graphs = needed_graphs(kv_mode)
    onnx_dir = cfg.onnx_dir(checkpoint_dir)
    manifest = load_manifest(onnx_dir, checkpoint_dir, graphs)
    runner = OrtRunner(onnx_dir, manifest, graphs, cfg)
    info = ModelInfo(checkpoint_dir, manifest.get("n_params"))
    return OrtBackend(info, runner, manifest, kv_mode)

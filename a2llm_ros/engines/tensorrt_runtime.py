"""TensorRT runtime: engines, execution contexts, device buffers, streams, CUDA graphs.

* Device memory and the CUDA stream come from ``pycuda`` (primary context,
  pushed around every call so any thread may run the backend) or, when
  pycuda is absent, from torch CUDA tensors and a torch stream
  (:func:`device_memory`).
* One execution context per optimisation profile (``set_optimization_profile_async``);
  inputs are bound with ``set_input_shape`` / ``set_tensor_address`` and run
  with ``execute_async_v3(stream)``.  NumPy inputs go through pinned staging
  buffers; outputs land in per-context buffers sized for the profile's
  maximum shapes and stay on the device unless asked for (``host``), so the
  KV cache and the other streaming states never leave the GPU.  Each context
  has up to two output buffer sets: a call writes into the first set none of
  its inputs lives in, so feeding an engine its own previous output works
  (ping-pong) and a :class:`DeviceTensor` is valid until its buffer is
  written again (checked: a stale state raises :class:`EngineError`).
* CUDA graphs: for contexts whose inputs all have fixed shapes (the decode
  profile of the static-cache ``llm`` engine, the connector, motion decoder
  and token2wav engines) the ``execute_async_v3`` launch is captured once per
  (buffer addresses) combination -- after one plain warm-up run, as TensorRT
  requires -- and replayed afterwards.  Capture uses cuda-python
  (``cudaStreamBeginCapture`` / ``cudaGraphInstantiate`` / ``cudaGraphLaunch``)
  or ``torch.cuda.CUDAGraph``; without either, or if a capture fails, the
  context runs without graphs (logged).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from a2llm_ros.engines import cache
from a2llm_ros.engines.config import BackendConfig, EngineError
from a2llm_ros.engines.device_memory import Buffer, DeviceTensor, device_memory
from a2llm_ros.engines.graph_backend import GraphBackend, Zeros, needed_graphs

#: CUDA graphs kept per execution context (least recently used dropped first).
MAX_GRAPHS_PER_CONTEXT = 8


# ----------------------------------------------------------------------------- CUDA graphs

def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart
    return cudart


class CudaGraphs:
    """Stream capture + replay of a launch, via cuda-python or torch (see module docstring)."""

    def __init__(self, memory, enabled: bool = True):
        self.memory = memory
        self.kind, self.reason = "off", "disabled by configuration (cuda_graph: false)"
        if not enabled:
            return
        candidates = ("torch", "cuda-python") if memory.name == "torch" else \
            ("cuda-python", "torch")
        reasons = []
        for kind in candidates:
            try:
                if kind == "cuda-python":
                    self.cudart = _import_cudart()
                else:
                    import torch
                    if not torch.cuda.is_available():
                        raise ImportError("torch has no CUDA")
                    self.torch = torch
                self.kind, self.reason = kind, f"CUDA graphs via {kind}"
                return
            except ImportError as exc:
                reasons.append(f"{kind}: {exc}")
        self.reason = "no CUDA graph API (" + "; ".join(reasons) + ")"

    @property
    def enabled(self) -> bool:
        return self.kind != "off"

    def _check(self, result):
        err = result[0]
        if err != self.cudart.cudaError_t.cudaSuccess:
            raise EngineError(f"CUDA error {err}")
        return result[1:]

    def capture(self, launch: Callable[[], None]):
        """Capture ``launch`` (which enqueues work on the memory's stream); returns a graph."""
        handle = self.memory.stream_handle
        if self.kind == "cuda-python":
            cudart = self.cudart
            mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
            self._check(cudart.cudaStreamBeginCapture(handle, mode))
            try:
                launch()
            finally:
                graph, = self._check(cudart.cudaStreamEndCapture(handle))
            exe, = self._check(cudart.cudaGraphInstantiate(graph, 0))
            return (graph, exe)
        torch = self.torch
        stream = self.memory.stream if self.memory.name == "torch" else \
            torch.cuda.ExternalStream(handle)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            launch()
        return (graph, stream)

    def replay(self, captured) -> None:
        if self.kind == "cuda-python":
            self._check(self.cudart.cudaGraphLaunch(captured[1], self.memory.stream_handle))
            return
        graph, stream = captured
        with self.torch.cuda.stream(stream):
            graph.replay()


# ----------------------------------------------------------------------------- engines

class _Context:
    """One execution context (= one optimisation profile) with its buffers."""

    def __init__(self, engine: "TrtEngine", index: int, name: str):
        self.engine, self.index, self.name = engine, index, name
        self.ctx = engine.engine.create_execution_context()
        if self.ctx is None:
            raise EngineError(f"{engine.path}: cannot create an execution context "
                              f"(out of GPU memory?)")
        if engine.engine.num_optimization_profiles > 1:
            self.ctx.set_optimization_profile_async(index, engine.memory.stream_handle)
            engine.memory.synchronize()
        self.max_shapes = self._max_shapes()
        self.static = all(self._fixed(n) for n in engine.inputs)
        self.staging: Dict[str, Buffer] = {}
        self.host_in: Dict[str, np.ndarray] = {}
        self.host_out: Dict[str, np.ndarray] = {}
        self.staged: Dict[str, Any] = {}
        self.out_sets: List[Dict[str, Buffer]] = []
        self.graphs: "OrderedDict[tuple, Any]" = OrderedDict()
        self.seen: Dict[tuple, int] = {}
        self.graphs_ok = True

    def _profile_shape(self, name: str):
        eng = self.engine.engine
        shape = tuple(eng.get_tensor_shape(name))
        if -1 not in shape:
            return (shape, shape, shape)
        lo, opt, hi = eng.get_tensor_profile_shape(name, self.index)
        return tuple(lo), tuple(opt), tuple(hi)

    def _fixed(self, name: str) -> bool:
        lo, _, hi = self._profile_shape(name)
        return lo == hi

    def _max_shapes(self) -> Dict[str, Tuple[int, ...]]:
        out = {}
        for name in self.engine.inputs:
            out[name] = self._profile_shape(name)[2]
            self.ctx.set_input_shape(name, out[name])
        for name in self.engine.outputs:
            shape = tuple(self.ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise EngineError(f"{self.engine.path}: output {name} has a data-dependent "
                                  f"shape {shape}; not supported")
            out[name] = shape
        return out

    def max_bytes(self, name: str) -> int:
        return int(np.prod(self.max_shapes[name], dtype=np.int64)) * \
            self.engine.dtypes[name].itemsize

    def output_set(self, k: int) -> Dict[str, Buffer]:
        while len(self.out_sets) <= k:
            mem = self.engine.memory
            self.out_sets.append({n: mem.alloc(self.max_bytes(n)) for n in self.engine.outputs})
        return self.out_sets[k]

    def staging_buffer(self, name: str) -> Buffer:
        if name not in self.staging:
            self.staging[name] = self.engine.memory.alloc(self.max_bytes(name))
        return self.staging[name]


class TrtEngine:
    """A deserialised engine with one :class:`_Context` per optimisation profile."""

    def __init__(self, trt, runtime, path: str, record: dict, memory, graphs: CudaGraphs,
                 log: Callable[[str], None] = print):
        self.trt, self.path, self.memory, self.graphs, self.log = trt, path, memory, graphs, log
        with open(path, "rb") as f:
            data = f.read()
        self.engine = runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise EngineError(f"TensorRT could not deserialise {path} (built for another GPU "
                              f"or TensorRT version?); rebuild it with force_engine_update")
        self.inputs: List[str] = []
        self.outputs: List[str] = []
        self.dtypes: Dict[str, np.dtype] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            self.dtypes[name] = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs.append(name)
            else:
                self.outputs.append(name)
        names = list((record.get("io") or {}).get("profile_names") or [])
        n = max(1, int(self.engine.num_optimization_profiles))
        names = (names + [f"profile{i}" for i in range(len(names), n)])[:n]
        self.contexts = {name: _Context(self, i, name) for i, name in enumerate(names)}
        self.default = names[0]

    def context(self, profile: Optional[str]) -> _Context:
        return self.contexts.get(profile or self.default, self.contexts[self.default])

    # -- one call --------------------------------------------------------------------------
    def _bind_input(self, c: _Context, name: str, value) -> Tuple[int, Tuple[int, ...]]:
        dtype, mem = self.dtypes[name], self.memory
        if isinstance(value, DeviceTensor):
            if not value.valid:
                raise EngineError(f"{os.path.basename(self.path)}: input {name} is a stale "
                                  f"engine state (its buffer was written again since)")
            if np.dtype(value.dtype) != dtype:
                raise EngineError(f"{os.path.basename(self.path)}: input {name} is "
                                  f"{np.dtype(value.dtype)}, the engine wants {dtype}")
            return value.ptr, tuple(value.shape)
        shape = tuple(value.shape) if isinstance(value, Zeros) else np.shape(value)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes > c.max_bytes(name):
            raise EngineError(f"{os.path.basename(self.path)}: input {name} {shape} exceeds "
                              f"the engine's profile maximum {c.max_shapes[name]}; rebuild "
                              f"with larger max_context / max_question_s")
        buf = c.staging_buffer(name)
        if isinstance(value, Zeros):
            if c.staged.get(name) != ("zeros", shape):
                mem.memset(buf, nbytes)
                c.staged[name] = ("zeros", shape)
            return buf.ptr, shape
        arr = np.ascontiguousarray(value, dtype=dtype)
        if name not in c.host_in:
            c.host_in[name] = mem.host(c.max_bytes(name))
        host = c.host_in[name][:nbytes]
        host[:] = arr.reshape(-1).view(np.uint8)
        mem.htod(buf, host)
        c.staged[name] = None
        return buf.ptr, shape

    def run(self, feeds: Dict[str, Any], profile: Optional[str] = None, host=()) -> dict:
        missing = [n for n in self.inputs if n not in feeds]
        if missing:
            raise EngineError(f"{os.path.basename(self.path)}: missing inputs {missing}")
        with self.memory.activate():
            c = self.context(profile)
            ptrs = []
            for name in self.inputs:
                ptr, shape = self._bind_input(c, name, feeds[name])
                c.ctx.set_input_shape(name, shape)
                c.ctx.set_tensor_address(name, ptr)
                ptrs.append(ptr)
            used, k = set(ptrs), 0  # first output set none of the inputs lives in
            while used & {b.ptr for b in c.output_set(k).values()}:
                k += 1
                if k == 2:
                    raise EngineError(f"{self.path}: inputs alias both output buffer sets")
            outs, shapes = {}, []
            for name in self.outputs:
                shape = tuple(c.ctx.get_tensor_shape(name))
                buf = c.out_sets[k][name]
                c.ctx.set_tensor_address(name, buf.ptr)
                buf.version += 1
                outs[name] = DeviceTensor(buf, shape, self.dtypes[name], buf.version)
                shapes.append(shape)
            self._execute(c, (k, tuple(ptrs)) if c.static else None)
            result: Dict[str, Any] = {}
            for name in host:
                t = outs[name]
                if name not in c.host_out:
                    c.host_out[name] = self.memory.host(c.max_bytes(name))
                self.memory.dtoh(c.host_out[name][:t.nbytes], t.buffer)
            self.memory.synchronize()
            for name, t in outs.items():
                if name in host:
                    result[name] = c.host_out[name][:t.nbytes].view(t.dtype).reshape(
                        t.shape).copy()
                else:
                    result[name] = t
            return result

    def _launch(self, c: _Context) -> None:
        if not c.ctx.execute_async_v3(self.memory.stream_handle):
            raise EngineError(f"{os.path.basename(self.path)}: execute_async_v3 failed "
                              f"(profile {c.name})")

    def _execute(self, c: _Context, key: Optional[tuple]) -> None:
        if key is None or not self.graphs.enabled or not c.graphs_ok:
            self._launch(c)
            return
        graph = c.graphs.get(key)
        if graph is None:
            if not c.seen.get(key):  # TensorRT wants one plain run before capture
                c.seen[key] = 1
                self._launch(c)
                return
            try:
                graph = self.graphs.capture(lambda: self._launch(c))
            except Exception as exc:  # capture unsupported for this engine: run plainly
                c.graphs_ok = False
                self.log(f"{os.path.basename(self.path)} ({c.name}): CUDA graph capture "
                         f"failed ({exc}); running without CUDA graphs")
                self._launch(c)
                return
            c.graphs[key] = graph
            while len(c.graphs) > MAX_GRAPHS_PER_CONTEXT:
                c.graphs.popitem(last=False)
        c.graphs.move_to_end(key)
        self.graphs.replay(graph)

    def n_captured(self) -> int:
        """CUDA graphs captured so far over all contexts."""
        return sum(len(c.graphs) for c in self.contexts.values())


class TrtRunner:
    """The runner of :class:`~a2llm_ros.engines.graph_backend.GraphBackend` over engines."""

    kind = "tensorrt"

    def __init__(self, plans: Dict[str, str], memory, cfg: BackendConfig,
                 graphs: Optional[CudaGraphs] = None, log: Callable[[str], None] = print):
        from a2llm_ros.engines.tensorrt_build import import_tensorrt
        trt = import_tensorrt()
        self.memory = memory
        self.cuda_graphs = graphs if graphs is not None else CudaGraphs(memory, cfg.cuda_graph)
        if cfg.cuda_graph and not self.cuda_graphs.enabled:
            log(f"TensorRT runtime: {self.cuda_graphs.reason}; running without CUDA graphs")
        self.logger = trt.Logger(trt.Logger.VERBOSE if cfg.verbose else trt.Logger.WARNING)
        with memory.activate():
            self.runtime = trt.Runtime(self.logger)
            self.engines = {g: TrtEngine(trt, self.runtime, p, _read_sidecar(p), memory,
                                         self.cuda_graphs, log) for g, p in plans.items()}

    def run(self, graph: str, feeds: dict, profile: Optional[str] = None, host=()) -> dict:
        if graph not in self.engines:
            raise EngineError(f"no TensorRT engine for {graph!r} (have {sorted(self.engines)})")
        return self.engines[graph].run(feeds, profile, host)


def _read_sidecar(plan: str) -> dict:
    side = plan + ".json"
    return cache.read_record(side) if os.path.isfile(side) else {}


class TensorRTBackend(GraphBackend):
    """:class:`GraphBackend` on TensorRT engines."""

    kind = "tensorrt"


def load_trt_backend(checkpoint_dir: str, cfg: BackendConfig, memory=None,
                     graphs: Optional[CudaGraphs] = None,
                     log: Callable[[str], None] = print) -> TensorRTBackend:
    """TensorRT backend for ``checkpoint_dir``: engines from ``cfg.engine_dir`` (built from
    ``cfg.onnx_dir`` when missing or ``force_engine_update``), validated against this GPU
    and TensorRT version."""
    from a2llm_ros.checkpoint_files import resolve_checkpoint
    from a2llm_ros.engines.manifest import load_manifest
    from a2llm_ros.engines.model_info import ModelInfo
    from a2llm_ros.engines.manifest import MANIFEST, write_json
    from a2llm_ros.engines.tensorrt_build import build_engines, import_tensorrt
    import_tensorrt()
    checkpoint_dir = resolve_checkpoint(checkpoint_dir)
    kv_mode = cfg.kv_mode("tensorrt")
    graph_names = needed_graphs(kv_mode)
    plans = build_engines(checkpoint_dir, cfg, graph_names, log=log)
    onnx_dir, engine_dir = cfg.onnx_dir(checkpoint_dir), cfg.engine_dir(checkpoint_dir)
    copy = os.path.join(engine_dir, MANIFEST)
    if os.path.isfile(os.path.join(onnx_dir, MANIFEST)):
        manifest = load_manifest(onnx_dir, checkpoint_dir, ())
        write_json(copy, manifest)  # engines can ship without their ONNX graphs
    elif os.path.isfile(copy):
        manifest = load_manifest(engine_dir, checkpoint_dir, ())
    else:
        raise EngineError(f"neither {onnx_dir} nor {engine_dir} has {MANIFEST}; export with "
                          f"`a2llm export --checkpoint {checkpoint_dir} --format tensorrt`")
    memory = memory or device_memory(cfg)
    runner = TrtRunner(plans, memory, cfg, graphs, log)
    info = ModelInfo(checkpoint_dir, manifest.get("n_params"))
    return TensorRTBackend(info, runner, manifest, kv_mode)

"""A stand-in for the ``tensorrt`` module (and device memory) used by the engine tests.

TensorRT cannot be installed where the tests run, so this module mimics the
parts of the TensorRT 10 Python API that :mod:`a2llm_ros.engines.tensorrt_build`
and :mod:`a2llm_ros.engines.tensorrt_runtime` use, closely enough to run
their real code paths: the builder records flags, profiles, I/O dtypes, layer
precisions, the timing cache, progress-monitor calls and INT8 calibration
batches into the "plan"; the runtime's engine executes the plan's ONNX graph
with ONNX Runtime on a NumPy "device" memory (:class:`FakeMemory`), reading
and writing the buffers bound with ``set_tensor_address``.  CUDA-graph
capture is mimicked by :class:`FakeGraphs`: a captured launch replays the
bindings recorded at capture time.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import types

import numpy as np

VERSION = "10.99.0"
_MEMORY = {}  # ptr -> np.uint8 array ("device" memory of every FakeMemory)
_PTRS = itertools.count(1 << 20, 1 << 20)
_CAPTURE = []  # non-empty while a FakeGraphs capture records launches
_ONNX = {}  # sha256 -> ONNX bytes: a "plan" is self-contained like a real one


# ----------------------------------------------------------------------------- memory

class FakeBuffer:
    def __init__(self, ptr, nbytes):
        self.ptr, self.nbytes = ptr, nbytes


class FakeMemory:
    """NumPy-backed replacement of PycudaMemory / TorchMemory."""

    name = "fake"
    stream_handle = 1234

    def __init__(self):
        self.allocated = 0
        self.copies = 0

    @contextlib.contextmanager
    def activate(self):
        yield

    def alloc(self, nbytes):
        from a2llm_ros.engines.device_memory import Buffer
        ptr = next(_PTRS)
        _MEMORY[ptr] = np.zeros(max(int(nbytes), 1), np.uint8)
        self.allocated += int(nbytes)
        return Buffer(ptr, nbytes, _MEMORY[ptr])

    def host(self, nbytes):
        return np.zeros(max(int(nbytes), 1), np.uint8)

    def htod(self, buf, host):
        _MEMORY[buf.ptr][:host.size] = host
        self.copies += 1

    def dtoh(self, host, buf):
        host[:] = _MEMORY[buf.ptr][:host.size]
        self.copies += 1

    def memset(self, buf, nbytes):
        _MEMORY[buf.ptr][:nbytes] = 0

    def synchronize(self):
        pass

    def mem_info(self):
        return 1 << 30, 1 << 31


class FakeGraphs:
    """CudaGraphs replacement: capture records the launches' bindings, replay runs them."""

    kind, reason = "fake", "fake CUDA graphs"
    enabled = True

    def __init__(self):
        self.captures = 0
        self.replays = 0

    def capture(self, launch):
        _CAPTURE.append([])
        try:
            launch()
        finally:
            recorded = _CAPTURE.pop()
        self.captures += 1
        return recorded

    def replay(self, recorded):
        self.replays += 1
        for context, bindings, shapes in recorded:
            context._execute(bindings, shapes)


# ----------------------------------------------------------------------------- enums

class _Enum:
    def __init__(self, *names):
        for n in names:
            setattr(self, n, n)


Logger = type("Logger", (), {"WARNING": 2, "VERBOSE": 4, "INFO": 3, "ERROR": 1,
                             "__init__": lambda self, level=2: None})
float32, float16, int32, int64, int8 = "float32", "float16", "int32", "int64", "int8"
DataType = _Enum("FLOAT", "HALF", "INT32", "INT64", "INT8", "BOOL")
TensorIOMode = _Enum("INPUT", "OUTPUT")
MemoryPoolType = _Enum("WORKSPACE")
BuilderFlag = _Enum("FP16", "INT8", "FP8", "TF32", "PREFER_PRECISION_CONSTRAINTS")
NetworkDefinitionCreationFlag = _Enum("EXPLICIT_BATCH")
LayerType = _Enum("ELEMENTWISE", "REDUCE", "UNARY", "NORMALIZATION", "SHAPE", "OTHER")


def nptype(dtype):
    return np.dtype(dtype)


class IProgressMonitor:
    def __init__(self):
        pass


class IInt8EntropyCalibrator2:
    def __init__(self):
        pass


# ----------------------------------------------------------------------------- builder

_LAYER_TYPES = {"Pow": "ELEMENTWISE", "Add": "ELEMENTWISE", "Mul": "ELEMENTWISE",
                "Div": "ELEMENTWISE", "Sub": "ELEMENTWISE", "ReduceMean": "REDUCE",
                "Sqrt": "UNARY", "LayerNormalization": "NORMALIZATION", "Shape": "SHAPE"}


class _Tensor:
    def __init__(self, name, dtype, shape=()):
        self.name, self.dtype, self.shape = name, dtype, tuple(shape)


class _Layer:
    def __init__(self, node):
        self.name = node.name
        self.type = _LAYER_TYPES.get(node.op_type, "OTHER")
        self.num_outputs = len(node.output)
        self._outs = [_Tensor(o, "float32" if self.type != "SHAPE" else "int64")
                      for o in node.output]
        self.precision = None
        self.output_types = {}

    def get_output(self, i):
        return self._outs[i]

    def set_output_type(self, i, dtype):
        self.output_types[i] = dtype


class _Network:
    def __init__(self):
        self.onnx = None
        self.inputs, self.outputs, self.layers = [], [], []

    num_inputs = property(lambda self: len(self.inputs))
    num_outputs = property(lambda self: len(self.outputs))
    num_layers = property(lambda self: len(self.layers))

    def get_input(self, i):
        return self.inputs[i]

    def get_output(self, i):
        return self.outputs[i]

    def get_layer(self, i):
        return self.layers[i]


class OnnxParser:
    def __init__(self, network, logger):
        self.network = network
        self.num_errors = 0

    def parse_from_file(self, path):
        import onnx
        proto = onnx.load(path, load_external_data=False)
        types_ = {1: "float32", 6: "int32", 7: "int64", 10: "float16"}
        self.network.onnx = path
        self.network.inputs = [_Tensor(i.name, types_[i.type.tensor_type.elem_type],
                                       [d.dim_value if d.HasField("dim_value") else -1
                                        for d in i.type.tensor_type.shape.dim])
                               for i in proto.graph.input]
        self.network.outputs = [_Tensor(o.name, types_[o.type.tensor_type.elem_type])
                                for o in proto.graph.output]
        self.network.layers = [_Layer(n) for n in proto.graph.node]
        return True

    def get_error(self, i):
        return "no error"


class _Profile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, lo, opt, hi):
        self.shapes[name] = [list(lo), list(opt), list(hi)]


class _TimingCache:
    def __init__(self, data):
        self.data = bytes(data)

    def serialize(self):
        return self.data + b"+timing"


class _Config:
    def __init__(self):
        self.flags, self.profiles, self.pools = set(), [], {}
        self.progress_monitor = None
        self.int8_calibrator = None
        self.calibration_profile = None
        self.builder_optimization_level = 3
        self.timing = None
        self.flags.add(BuilderFlag.TF32)  # on by default, as in TensorRT

    def set_memory_pool_limit(self, pool, size):
        self.pools[pool] = size

    def set_flag(self, flag):
        self.flags.add(flag)

    def clear_flag(self, flag):
        self.flags.discard(flag)

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def set_calibration_profile(self, profile):
        self.calibration_profile = profile

    def create_timing_cache(self, data):
        return _TimingCache(data)

    def set_timing_cache(self, cache, ignore_mismatch=False):
        self.timing = cache
        return True

    def get_timing_cache(self):
        return self.timing


class Builder:
    built = []  # every plan built (for assertions)

    def __init__(self, logger):
        self.logger = logger

    def create_network(self, flags=0):
        return _Network()

    def create_builder_config(self):
        return _Config()

    def create_optimization_profile(self):
        return _Profile()

    def build_serialized_network(self, network, config):
        mon = config.progress_monitor
        if mon is not None:
            mon.phase_start("Building engine", None, 2)
            mon.phase_start("Tactic selection", "Building engine", 3)
            for step in range(3):
                mon.step_complete("Tactic selection", step)
            mon.phase_finish("Tactic selection")
            mon.phase_finish("Building engine")
        batches = 0
        if config.int8_calibrator is not None:
            names = [t.name for t in network.inputs]
            opt = {k: v[1] for k, v in (config.calibration_profile.shapes
                                        if config.calibration_profile else {}).items()}
            while True:
                ptrs = config.int8_calibrator.get_batch(names)
                if ptrs is None:
                    break
                for t, ptr in zip(network.inputs, ptrs):  # sized for the engine's dtype
                    shape = opt.get(t.name, t.shape)
                    want = int(np.prod(shape)) * np.dtype(t.dtype).itemsize
                    assert _MEMORY[ptr].size == want, (t.name, _MEMORY[ptr].size, want)
                batches += 1
            config.int8_calibrator.write_calibration_cache(b"fake-calibration")
        import hashlib
        with open(network.onnx, "rb") as f:
            data = f.read()
        key = hashlib.sha256(data).hexdigest()
        _ONNX[key] = data
        plan = {"onnx": network.onnx, "onnx_key": key, "flags": sorted(config.flags),
                "workspace": config.pools.get(MemoryPoolType.WORKSPACE),
                "inputs": {t.name: t.dtype for t in network.inputs},
                "outputs": {t.name: t.dtype for t in network.outputs},
                "profiles": [p.shapes for p in config.profiles],
                "fp32_layers": sum(1 for layer in network.layers if layer.precision == float32),
                "calibration_batches": batches}
        Builder.built.append(plan)
        return json.dumps(plan).encode()


# ----------------------------------------------------------------------------- runtime

class Runtime:
    def __init__(self, logger):
        self.logger = logger

    def deserialize_cuda_engine(self, data):
        try:
            plan = json.loads(bytes(data).decode())
        except ValueError:
            return None
        return _Engine(plan)


class _Engine:
    def __init__(self, plan):
        import onnxruntime as ort
        self.plan = plan
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        self.session = ort.InferenceSession(_ONNX[plan["onnx_key"]], so,
                                            providers=["CPUExecutionProvider"])
        self.names = list(plan["inputs"]) + list(plan["outputs"])
        self.declared = {i.name: tuple(d if isinstance(d, int) else -1 for d in i.shape)
                         for i in self.session.get_inputs() + self.session.get_outputs()}
        self._shape_cache = {}

    num_io_tensors = property(lambda self: len(self.names))
    num_optimization_profiles = property(lambda self: max(1, len(self.plan["profiles"])))

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return TensorIOMode.INPUT if name in self.plan["inputs"] else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return {**self.plan["inputs"], **self.plan["outputs"]}[name]

    def get_tensor_shape(self, name):
        return self.declared[name]

    def get_tensor_profile_shape(self, name, index):
        return [tuple(s) for s in self.plan["profiles"][index][name]]

    def create_execution_context(self):
        return _Context(self)

    def output_shapes(self, shapes):
        key = tuple(sorted(shapes.items()))
        if key not in self._shape_cache:
            feeds = {i.name: np.zeros(shapes[i.name], _ort_type(i.type))
                     for i in self.session.get_inputs()}
            outs = self.session.run(None, feeds)
            self._shape_cache[key] = {o.name: tuple(v.shape)
                                      for o, v in zip(self.session.get_outputs(), outs)}
        return self._shape_cache[key]


def _ort_type(onnx_type):
    return {"tensor(float)": np.float32, "tensor(int32)": np.int32,
            "tensor(int64)": np.int64}[onnx_type]


class _Context:
    executions = 0

    def __init__(self, engine):
        self.engine = engine
        self.profile = 0
        self.shapes, self.addresses = {}, {}

    def set_optimization_profile_async(self, index, stream):
        self.profile = index
        return True

    def set_input_shape(self, name, shape):
        shape = tuple(int(d) for d in shape)
        if self.engine.plan["profiles"]:
            prof = self.engine.plan["profiles"][self.profile]
            if name in prof:
                lo, _, hi = prof[name]
                if not all(a <= d <= b for a, d, b in zip(lo, shape, hi)):
                    raise AssertionError(f"{name} {shape} outside profile {lo}..{hi}")
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name):
        if name in self.engine.plan["inputs"]:
            return self.shapes[name]
        inputs = {k: v for k, v in self.shapes.items() if k in self.engine.plan["inputs"]}
        return self.engine.output_shapes(inputs)[name]

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = int(ptr)
        return True

    def execute_async_v3(self, stream):
        assert stream == FakeMemory.stream_handle
        shapes = {k: self.shapes[k] for k in self.engine.plan["inputs"]}
        if _CAPTURE:
            _CAPTURE[-1].append((self, dict(self.addresses), shapes))
            return True
        self._execute(dict(self.addresses), shapes)
        return True

    def _execute(self, addresses, shapes):
        _Context.executions += 1
        plan = self.engine.plan
        feeds = {}
        for i in self.engine.session.get_inputs():
            dtype = np.dtype(plan["inputs"][i.name])
            n = int(np.prod(shapes[i.name], dtype=np.int64)) * dtype.itemsize
            raw = _MEMORY[addresses[i.name]][:n].view(dtype).reshape(shapes[i.name])
            feeds[i.name] = raw.astype(_ort_type(i.type))
        outs = self.engine.session.run(None, feeds)
        for o, value in zip(self.engine.session.get_outputs(), outs):
            data = np.ascontiguousarray(value.astype(plan["outputs"][o.name])).view(np.uint8)
            target = _MEMORY[addresses[o.name]]
            assert data.size <= target.size, f"output {o.name} overflows its buffer"
            target[:data.size] = data.reshape(-1)


def install(monkeypatch):
    """Make ``import tensorrt`` return this module (undone by ``monkeypatch``)."""
    import sys
    module = types.ModuleType("tensorrt")
    for key, value in globals().items():
        if not key.startswith("__") and key not in ("install", "types", "json", "np",
                                                    "itertools", "contextlib"):
            setattr(module, key, value)
    module.__version__ = VERSION
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    Builder.built.clear()
    return module

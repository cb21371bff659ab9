"""``a2llm export --format tensorrt``: TensorRT engines from the exported ONNX graphs.

Uses the TensorRT Python API (written for TensorRT 10; the network-creation
flag also covers 8.6): ``trt.Builder`` -> ``create_network`` ->
``trt.OnnxParser.parse_from_file`` -> builder config with

* a workspace limit (``set_memory_pool_limit(MemoryPoolType.WORKSPACE)``),
* precision flags: FP16 by default; INT8 (explicit Q/DQ graphs, or implicit
  quantisation calibrated on inputs recorded from ONNX Runtime runs) or FP8
  (Q/DQ graphs only) when asked for and the GPU supports them; the
  Griffin-Lim decoder always builds in FP32 without TF32 (its iterations are
  ill-conditioned), the small graphs build in FP16; RMS/LayerNorm layers are
  pinned to FP32 and the LLM KV-cache I/O is FP16,
* one optimisation profile per entry of the graph sidecar's ``profiles``
  (shapes derived from :class:`~a2llm_ros.engines.config.BackendConfig`:
  question length, prompt length, context length; the static-cache ``llm``
  graph gets a ``prefill`` and a ``decode`` profile),
* a timing cache shared by all graphs (``<engine dir>/timing.cache``),
* progress output through ``trt.IProgressMonitor`` (a first build on a
  Jetson takes minutes).

``builder.build_serialized_network`` writes ``<graph>.plan`` and the sidecar
``<graph>.plan.json`` (see :mod:`a2llm_ros.engines.cache`).
"""
from __future__ import annotations

import hashlib
import os
import time
from typing import Callable, Dict, Iterable, List, Optional

import numpy as np

from a2llm_ros.engines import cache
from a2llm_ros.engines.config import BackendConfig, EngineError

#: Inputs/outputs kept in FP16 in reduced-precision LLM engines.
KV_IO = ("past_kv", "present_kv")
LLM_GRAPHS = ("llm_prefill", "llm_decode", "llm")
#: Minimum compute capability per precision (FP16 arithmetic, DP4A INT8, FP8 tensor cores).
MIN_CC = {"fp32": (0, 0), "fp16": (5, 3), "int8": (6, 1), "fp8": (8, 9)}
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def import_tensorrt():
    """The ``tensorrt`` module, or :class:`EngineError` explaining how to get it."""
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or OSError from missing CUDA libraries
        raise EngineError(
            f"TensorRT is not available ({type(exc).__name__}: {exc}); on Jetson it comes "
            f"with JetPack (python3-libnvinfer), on x86 `pip install tensorrt` from NVIDIA's "
            f"index; or use backend kind 'onnxruntime' / 'torch'") from exc
    return trt


def trt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def graph_precision(graph: str, requested: str) -> str:
    """Precision a graph is built in for a requested precision."""
    if graph == "token2wav" or requested == "fp32":
        return "fp32"
    if graph in LLM_GRAPHS or graph == "audio_encoder":
        return requested
    return "fp16"  # token_embed, connector_step, motion_decoder: small, keep FP16


def check_precision(precision: str, gpu: Optional[dict]) -> None:
    """Raise :class:`EngineError` when ``gpu`` cannot run ``precision``."""
    cc = cache.compute_capability(gpu)
    need = MIN_CC[precision]
    if gpu and cc < need:
        raise EngineError(f"precision {precision} needs compute capability >= "
                          f"{need[0]}.{need[1]}, GPU '{gpu.get('name')}' has "
                          f"{cc[0]}.{cc[1]}; use precision fp16 or fp32")


def engine_options(graph: str, cfg: BackendConfig, export_sidecar: dict) -> dict:
    """Build options of one engine (part of its cache key)."""
    precision = graph_precision(graph, cfg.precision)
    return {"precision": precision, "requested_precision": cfg.precision,
            "workspace_mb": cfg.workspace_mb,
            "builder_optimization_level": cfg.builder_optimization_level,
            "profiles": export_sidecar.get("profiles", {}),
            "kv_io_dtype": "float16" if graph in LLM_GRAPHS and precision != "fp32"
            else "float32",
            "tf32": graph != "token2wav", "fp32_norms": precision != "fp32"}


def has_qdq(onnx_path: str) -> bool:
    """Whether an ONNX graph is explicitly quantised (Q/DQ nodes)."""
    import onnx
    proto = onnx.load(onnx_path, load_external_data=False)
    return any(n.op_type in QDQ_OPS for n in proto.graph.node)


def make_progress_monitor(trt, log: Callable[[str], None], label: str):
    """A ``trt.IProgressMonitor`` printing phase starts/ends (None before TensorRT 10)."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Progress(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.depth: Dict[str, int] = {}
            self.started: Dict[str, float] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            depth = self.depth.get(parent_phase, -1) + 1 if parent_phase else 0
            self.depth[phase_name] = depth
            self.started[phase_name] = time.perf_counter()
            if depth <= 1:
                log(f"  [{label}] {'  ' * depth}{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            return True  # never cancel

        def phase_finish(self, phase_name):
            depth = self.depth.pop(phase_name, 0)
            seconds = time.perf_counter() - self.started.pop(phase_name, time.perf_counter())
            if depth == 0:
                log(f"  [{label}] {phase_name} done in {seconds:.1f} s")

    return Progress()


def _parse(trt, network, logger, onnx_path: str):
    """Parse ``onnx_path`` into ``network``; returns the parser (it owns the weights, keep
    it alive until the engine is built)."""
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(onnx_path):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineError(f"TensorRT's ONNX parser rejected {onnx_path}: "
                          + "; ".join(errors or ["(no error message)"]))
    return parser


def _set_io_dtypes(trt, network, names: Iterable[str]) -> None:
    names = set(names)
    for i in range(network.num_inputs):
        if network.get_input(i).name in names:
            network.get_input(i).dtype = trt.float16
    for i in range(network.num_outputs):
        if network.get_output(i).name in names:
            network.get_output(i).dtype = trt.float16


def _pin_norms_fp32(trt, network) -> int:
    """Run the float layers of RMSNorm/LayerNorm blocks in FP32 (x^2 overflows FP16)."""
    names = ("ELEMENTWISE", "REDUCE", "UNARY", "NORMALIZATION")
    kinds = {getattr(trt.LayerType, k) for k in names if hasattr(trt.LayerType, k)}
    floats = (trt.float32, trt.float16)
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if "norm" not in layer.name.lower() or layer.type not in kinds:
            continue
        outs = [j for j in range(layer.num_outputs) if layer.get_output(j).dtype in floats]
        if not outs:
            continue
        layer.precision = trt.float32
        for j in outs:
            layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


def _set_precision(trt, config, network, graph: str, precision: str, onnx_path: str,
                   calibrator) -> None:
    if precision == "fp32":
        if graph == "token2wav" and hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)
        return
    config.set_flag(trt.BuilderFlag.FP16)
    if precision in ("int8", "fp8"):
        qdq = has_qdq(onnx_path)
        if precision == "fp8":
            if not qdq:
                raise EngineError(f"{graph}: fp8 needs an explicitly quantised ONNX graph "
                                  f"(QuantizeLinear/DequantizeLinear, e.g. from NVIDIA "
                                  f"ModelOpt); {onnx_path} has none")
            config.set_flag(trt.BuilderFlag.FP8)
        else:
            config.set_flag(trt.BuilderFlag.INT8)
            if not qdq:
                if calibrator is None:
                    raise EngineError(f"{graph}: int8 without Q/DQ nodes needs calibration "
                                      f"data (onnxruntime runs of the exported graphs)")
                config.int8_calibrator = calibrator
    flag = getattr(trt.BuilderFlag, "PREFER_PRECISION_CONSTRAINTS", None)
    if _pin_norms_fp32(trt, network) and flag is not None:
        config.set_flag(flag)


def _add_profiles(builder, config, profiles: dict) -> List[str]:
    names = []
    for name, shapes in profiles.items():
        if not shapes:
            continue
        profile = builder.create_optimization_profile()
        for tensor, (lo, opt, hi) in shapes.items():
            profile.set_shape(tensor, tuple(lo), tuple(opt), tuple(hi))
        config.add_optimization_profile(profile)
        names.append(name)
        if len(names) == 1 and hasattr(config, "set_calibration_profile"):
            config.set_calibration_profile(profile)
    return names


def _load_timing_cache(config, path: str):
    data = b""
    if path and os.path.isfile(path):
        with open(path, "rb") as f:
            data = f.read()
    timing = config.create_timing_cache(data)
    config.set_timing_cache(timing, ignore_mismatch=False)
    return timing


def _save_timing_cache(config, path: str) -> None:
    if not path:
        return
    timing = config.get_timing_cache()
    if timing is None:
        return
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(memoryview(timing.serialize()))
    os.replace(tmp, path)


def build_engine(graph: str, onnx_path: str, plan_path: str, export_sidecar: dict,
                 cfg: BackendConfig, gpu: Optional[dict], timing_cache_path: str = "",
                 calibrator=None, log: Callable[[str], None] = print) -> dict:
    """Build ``plan_path`` from ``onnx_path``; writes the plan and its sidecar, returns it."""
    trt = import_tensorrt()
    options = engine_options(graph, cfg, export_sidecar)
    check_precision(options["precision"], gpu)
    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.VERBOSE if cfg.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if trt_major(trt) >= 10 else \
        1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = _parse(trt, network, logger, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(cfg.workspace_mb) << 20)
    if hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = int(cfg.builder_optimization_level)
    if options["kv_io_dtype"] == "float16":
        _set_io_dtypes(trt, network, KV_IO)
    _set_precision(trt, config, network, graph, options["precision"], onnx_path, calibrator)
    profile_names = _add_profiles(builder, config, options["profiles"])
    _load_timing_cache(config, timing_cache_path)
    monitor = make_progress_monitor(trt, log, graph)
    if monitor is not None:
        config.progress_monitor = monitor
    log(f"building TensorRT engine {graph} ({options['precision']}, "
        f"{len(profile_names)} profile(s), workspace {cfg.workspace_mb} MiB) ...")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build {graph} from {onnx_path} (see the "
                          f"TensorRT log above; try a larger workspace_mb)")
    del parser  # the serialized engine holds its own copy of the weights
    data = memoryview(serialized)
    os.makedirs(os.path.dirname(os.path.abspath(plan_path)), exist_ok=True)
    with open(plan_path + ".tmp", "wb") as f:
        f.write(data)
    os.replace(plan_path + ".tmp", plan_path)
    _save_timing_cache(config, timing_cache_path)
    seconds = time.perf_counter() - t0
    onnx_sha = export_sidecar.get("onnx_sha256") or cache.onnx_hash(onnx_path, None)
    io = {"inputs": export_sidecar.get("inputs", []), "outputs": export_sidecar.get("outputs", []),
          "profile_names": profile_names}
    record = cache.make_record(graph, onnx_sha, str(trt.__version__), gpu, options, io,
                               seconds, hashlib.sha256(data).hexdigest())
    from a2llm_ros.engines.manifest import write_json
    write_json(plan_path + ".json", record)
    log(f"built {plan_path} in {seconds:.1f} s")
    return record


# ----------------------------------------------------------------------------- INT8 calibration

def make_calibrator(trt, memory, samples: List[Dict[str, np.ndarray]], cache_path: str):
    """An ``IInt8EntropyCalibrator2`` feeding ``samples`` (dicts input -> array) via ``memory``
    (a device-memory helper of :mod:`.tensorrt_runtime`); the calibration table is cached
    in ``cache_path``."""

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.samples, self.index = samples, 0
            sizes: Dict[str, int] = {}
            for s in samples:
                for k, v in s.items():
                    sizes[k] = max(sizes.get(k, 0), v.nbytes)
            self.buffers = {k: memory.alloc(max(n, 1)) for k, n in sizes.items()}

        def get_batch_size(self):
            return 1

        def get_batch(self, names, *args):
            if self.index >= len(self.samples):
                return None
            sample = self.samples[self.index]
            self.index += 1
            ptrs = []
            for name in names:
                arr = np.ascontiguousarray(sample[name])
                memory.htod(self.buffers[name], arr.view(np.uint8).reshape(-1))
                ptrs.append(int(self.buffers[name].ptr))
            memory.synchronize()
            return ptrs

        def read_calibration_cache(self):
            if cache_path and os.path.isfile(cache_path):
                with open(cache_path, "rb") as f:
                    return f.read()
            return None

        def write_calibration_cache(self, data):
            if cache_path:
                with open(cache_path, "wb") as f:
                    f.write(memoryview(data))

    return Calibrator()


def _fit(arr: np.ndarray, shape) -> np.ndarray:
    """Crop or tile ``arr`` along every axis to ``shape`` (calibration at opt shapes)."""
    out = arr
    for axis, n in enumerate(shape):
        have = out.shape[axis]
        if have > n:
            out = np.take(out, range(n), axis=axis)
        elif have < n:
            reps = [1] * out.ndim
            reps[axis] = -(-n // have)
            out = np.take(np.tile(out, reps), range(n), axis=axis)
    return np.ascontiguousarray(out)


def calibration_samples(recorded: List[Dict[str, np.ndarray]], export_sidecar: dict,
                        half_inputs: Iterable[str] = (),
                        limit: int = 64) -> List[Dict[str, np.ndarray]]:
    """Recorded inputs at the calibration (first) profile's opt shapes: samples already of
    those shapes first, the others cropped/tiled to them; ``half_inputs`` (engine inputs
    made FP16) converted to float16."""
    profiles = list(export_sidecar.get("profiles", {}).values())
    opt = {k: tuple(v[1]) for k, v in profiles[0].items()} if profiles else {}
    exact = [f for f in recorded if all(f[k].shape == s for k, s in opt.items() if k in f)]
    chosen = (exact + [f for f in recorded if not any(f is e for e in exact)])[:limit]
    half = set(half_inputs)
    out = []
    for feeds in chosen:
        sample = {k: _fit(v, opt[k]) if k in opt else v for k, v in feeds.items()}
        out.append({k: v.astype(np.float16) if k in half else v for k, v in sample.items()})
    return out


def record_calibration_inputs(checkpoint_dir: str, cfg: BackendConfig,
                              graphs: Iterable[str]) -> Dict[str, List[Dict[str, np.ndarray]]]:
    """Inputs every graph sees while ONNX Runtime answers ``cfg.calibration_turns``
    synthetic questions of ``opt_question_s`` seconds."""
    from a2llm_ros.audio.signals import synthetic_question
    from a2llm_ros.engines.graph_backend import Zeros
    from a2llm_ros.engines.ort_backend import load_ort_backend
    from a2llm_ros.generation import GenerationConfig, StreamingGenerator
    wanted = set(graphs)
    # ONNX Runtime runs the same graphs the engines are built from
    ort_cfg = BackendConfig(**{**cfg.to_dict(), "kind": "onnxruntime", "device": "cpu",
                               "kv_cache": cfg.kv_mode("tensorrt")})
    backend = load_ort_backend(checkpoint_dir, ort_cfg)
    runner = backend.runner
    recorded: Dict[str, List[Dict[str, np.ndarray]]] = {g: [] for g in wanted}
    inner = runner.run

    def recording_run(graph, feeds, profile=None, host=()):
        if graph in wanted and len(recorded[graph]) < 256:
            recorded[graph].append({k: runner._value(graph, k, v) if isinstance(v, Zeros)
                                    else np.array(v) for k, v in feeds.items()})
        return inner(graph, feeds, profile, host)

    runner.run = recording_run
    for turn in range(max(1, cfg.calibration_turns)):
        wave = synthetic_question(cfg.opt_question_s, seed=turn)
        gen_cfg = GenerationConfig(seed=turn, max_speech_tokens=50, max_text_tokens=32,
                                   temperature=0.9)
        StreamingGenerator(backend, gen_cfg).generate(wave)
    return recorded


def build_engines(checkpoint_dir: str, cfg: BackendConfig, graphs: Iterable[str],
                  force: bool = False, log: Callable[[str], None] = print) -> Dict[str, str]:
    """Build (or reuse) the engines of ``graphs``; returns graph -> plan path.

    A cached engine is reused when its sidecar matches this system and the
    current ONNX graph; a mismatching one raises :class:`EngineError` unless
    ``force`` (or ``cfg.force_engine_update``) is set, which rebuilds it.
    """
    from a2llm_ros.engines.manifest import load_manifest
    from a2llm_ros.engines.manifest import read_json
    trt = import_tensorrt()
    force = force or cfg.force_engine_update
    onnx_dir, engine_dir = cfg.onnx_dir(checkpoint_dir), cfg.engine_dir(checkpoint_dir)
    graphs = list(graphs)
    gpu = cache.gpu_info()
    if gpu is None:
        raise EngineError("TensorRT engines need a CUDA GPU, and none was found "
                          "(torch.cuda, pycuda and nvidia-smi report none)")
    plans, to_build = {}, []
    manifest = None
    for graph in graphs:
        plan, side = cache.engine_paths(engine_dir, graph)
        if os.path.isfile(plan) and not force:
            record = cache.read_record(side) if os.path.isfile(side) else None
            if record is None:
                raise EngineError(f"engine {plan} has no sidecar {side}; "
                                  + cache.rebuild_hint(checkpoint_dir, engine_dir))
            onnx_path = os.path.join(onnx_dir, graph + ".onnx")
            check_onnx = os.path.isfile(onnx_path)
            expected = _expected(trt, graph, onnx_dir, cfg, gpu) if check_onnx else \
                {**record, "tensorrt_version": str(trt.__version__),
                 "gpu": {"name": gpu.get("name"),
                         "compute_capability": gpu.get("compute_capability")},
                 "build_options": {**record["build_options"],
                                   **_option_subset(graph, cfg)}}
            problems = cache.mismatches(record, expected, check_onnx)
            if problems:
                raise cache.mismatch_error(plan, problems, checkpoint_dir, engine_dir)
            plans[graph] = plan
            continue
        to_build.append(graph)
    if to_build:
        manifest = load_manifest(onnx_dir, checkpoint_dir, to_build)
        timing = cfg.timing_cache_path or os.path.join(engine_dir, "timing.cache")
        os.makedirs(engine_dir, exist_ok=True)
        recorded = None
        for graph in to_build:
            side = read_json(os.path.join(onnx_dir, manifest["graphs"][graph]["sidecar"]))
            onnx_path = os.path.join(onnx_dir, manifest["graphs"][graph]["file"])
            plan, _ = cache.engine_paths(engine_dir, graph)
            precision = graph_precision(graph, cfg.precision)
            if precision == "int8" and not has_qdq(onnx_path):
                if recorded is None:
                    log("recording INT8 calibration inputs with ONNX Runtime ...")
                    recorded = record_calibration_inputs(checkpoint_dir, cfg, to_build)
                from a2llm_ros.engines.device_memory import device_memory
                memory = device_memory(cfg)
                half = KV_IO if engine_options(graph, cfg, side)["kv_io_dtype"] == "float16" \
                    else ()
                samples = calibration_samples(recorded.get(graph, []), side, half)
                with memory.activate():  # the calibrator's buffers live in this context
                    calibrator = make_calibrator(trt, memory, samples,
                                                 os.path.join(engine_dir, graph + ".calib"))
                    build_engine(graph, onnx_path, plan, side, cfg, gpu, timing, calibrator,
                                 log)
            else:
                build_engine(graph, onnx_path, plan, side, cfg, gpu, timing, None, log)
            plans[graph] = plan
    return plans


def _option_subset(graph: str, cfg: BackendConfig) -> dict:
    """Options comparable without the ONNX sidecar (engine shipped without its graph)."""
    opts = engine_options(graph, cfg, {})
    opts.pop("profiles")
    return opts


def _expected(trt, graph: str, onnx_dir: str, cfg: BackendConfig, gpu: dict) -> dict:
    """What the sidecar of a freshly built engine of ``graph`` would record."""
    from a2llm_ros.engines.manifest import read_json
    onnx_path = os.path.join(onnx_dir, graph + ".onnx")
    side_path = os.path.join(onnx_dir, graph + ".json")
    side = read_json(side_path) if os.path.isfile(side_path) else {}
    return cache.make_record(graph, cache.onnx_hash(onnx_path, side), str(trt.__version__),
                             gpu, engine_options(graph, cfg, side))

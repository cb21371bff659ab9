"""Environment report for ``a2llm doctor``: Python, torch, ROS, messages, backends.

Every check returns ``(name, ok, detail)``; a missing component always says why
(import error text, no GPU, ...), so a user knows what to install.

:func:`describe_checkpoint` / :func:`checkpoint_report` (``a2llm doctor
--checkpoint DIR``) say what a model directory is -- a Step-Audio-2-mini folder,
an A²-LLM checkpoint with its weights inside, or an A²-LLM checkpoint on a
Step-Audio-2-mini backbone -- with its sizes, stored dtypes and the memory its
weights need in bf16 and fp32.  Everything is read from config.json and the
safetensors headers; no tensor is loaded.
"""
from __future__ import annotations

import glob
import importlib
import json
import os
import platform
import struct
import subprocess
import sys
from typing import Dict, List, Tuple

Check = Tuple[str, bool, str]
BACKENDS = ("tensorrt", "onnxruntime", "torch")


def _import(name: str):
    try:
        return importlib.import_module(name), ""
    except Exception as exc:  # ImportError, OSError from missing shared libraries
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0]


def python_checks() -> List[Check]:
    out = [("python", True, f"{platform.python_version()} ({sys.executable})")]
    torch, err = _import("torch")
    out.append(("torch", torch is not None, torch.__version__ if torch else err))
    for name in ("transformers", "peft", "onnx", "onnxruntime", "silero_vad", "smplx",
                 "rosbags", "pocketsphinx", "soundfile"):
        mod, err = _import(name)
        out.append((name, mod is not None, getattr(mod, "__version__", "present") if mod else err))
    out.append(_ffmpeg_check())
    return out


def _ffmpeg_check() -> Check:
    """The ffmpeg binary of ``a2llm render`` and the demo's answers.mp4 (imageio-ffmpeg)."""
    from a2llm_ros.tools.render.video import FfmpegError, ffmpeg_exe
    try:
        return ("ffmpeg", True, f"{ffmpeg_exe()} (a2llm render, answers.mp4)")
    except FfmpegError as exc:
        return ("ffmpeg", False, str(exc))


def ros_checks() -> List[Check]:
    mode = os.environ.get("A2LLM_ROS_MODE", "unknown")
    distro = os.environ.get("ROS_DISTRO", "")
    source = "ROS 2 wheels from PyPI" if mode == "wheels" else f"/opt/ros/{distro}"
    out = [("ros", bool(distro), f"{distro or 'none'} ({source if distro else 'not sourced'})")]
    rclpy, err = _import("rclpy")
    out.append(("rclpy", rclpy is not None, "importable" if rclpy else err))
    out.append(("rmw", True, os.environ.get("RMW_IMPLEMENTATION", "default of the distro")))
    scope = os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "")
    domain = os.environ.get("ROS_DOMAIN_ID", "0 (default)")
    out.append(("dds scope", True,
                f"ROS_AUTOMATIC_DISCOVERY_RANGE={scope} ROS_DOMAIN_ID={domain}"))
    for pkg in ("a2llm_ros.msg", "audio_common_msgs.msg", "std_msgs.msg", "sensor_msgs.msg",
                "diagnostic_msgs.msg", "visualization_msgs.msg", "lifecycle_msgs.msg"):
        mod, err = _import(pkg)
        out.append((pkg, mod is not None, "importable" if mod else err))
    if rclpy is not None:
        from a2llm_ros.interfaces import detect_audio_flavour
        out.append(("audio_common_msgs flavour", True, detect_audio_flavour()))
    return out


def backend_checks() -> List[Check]:
    """State of each inference backend, with the reason when unavailable."""
    out = []
    torch, err = _import("torch")
    if torch is None:
        out.append(("torch (cpu)", False, err))
    else:
        threads = torch.get_num_threads()
        out.append(("torch (cpu)", True, f"{torch.__version__}, {threads} threads"))
        cuda = torch.cuda.is_available()
        detail = torch.cuda.get_device_name(0) if cuda else (
            "CPU-only torch build" if torch.version.cuda is None else "no CUDA device/driver")
        out.append(("torch (cuda)", cuda, detail))
    ort, err = _import("onnxruntime")
    if ort is None:
        out.append(("onnxruntime", False, err))
    else:
        providers = ort.get_available_providers()
        out.append(("onnxruntime", True, f"{ort.__version__}, providers {', '.join(providers)}"))
        out.append(("onnxruntime (cuda)", "CUDAExecutionProvider" in providers,
                    "CUDAExecutionProvider present" if "CUDAExecutionProvider" in providers
                    else "CUDAExecutionProvider not in this onnxruntime build"))
    trt, err = _import("tensorrt")
    out.append(("tensorrt", trt is not None, trt.__version__ if trt else
                err + " (TensorRT comes from NVIDIA's package index or JetPack)"))
    pycuda, err = _import("pycuda.driver")
    out.append(("pycuda", pycuda is not None, "importable" if pycuda else
                err + " (the TensorRT runtime falls back to torch CUDA buffers)"))
    from a2llm_ros.engines.cache import gpu_info
    gpu = gpu_info() if (trt is not None or pycuda is not None) else None
    if gpu is not None:
        out.append(("gpu", True, f"{gpu['name']} (compute capability "
                                 f"{gpu['compute_capability']}, {gpu['total_memory_mb']} MiB)"))
    return out


def auto_backend(checks: List[Check]) -> Tuple[str, str]:
    """What ``backend: auto`` picks, and why (the rule of
    :func:`a2llm_ros.engines.select.choose_auto`, applied to these checks)."""
    from a2llm_ros.engines.select import choose_auto
    state = {name: ok for name, ok, _ in checks}
    flags = {"torch": state.get("torch (cpu)"), "torch_cuda": state.get("torch (cuda)"),
             "onnxruntime": state.get("onnxruntime"), "ort_cuda": state.get("onnxruntime (cuda)"),
             "tensorrt": state.get("tensorrt"), "pycuda": state.get("pycuda"),
             "gpu": state.get("torch (cuda)") or state.get("gpu")}
    return choose_auto(flags)


def gpu_summary() -> str:
    try:
        res = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=10)
        return res.stdout.strip() or "nvidia-smi found no GPU"
    except (OSError, subprocess.TimeoutExpired):
        return "no nvidia-smi (no NVIDIA driver)"


def report() -> Tuple[str, bool]:
    """Text report and whether the essentials (torch, a backend) are present."""
    lines = []
    sections = [("Python", python_checks()), ("ROS 2", ros_checks()),
                ("Inference backends", backend_checks())]
    for title, checks in sections:
        lines.append(f"{title}:")
        for name, ok, detail in checks:
            lines.append(f"  [{'ok' if ok else '--'}] {name:28s} {detail}")
    backend_list = sections[2][1]
    choice, why = auto_backend(backend_list)
    lines.append(f"GPU: {gpu_summary()}")
    lines.append(f"backend 'auto' picks: {choice} ({why})")
    return "\n".join(lines), choice != "none"


# ----------------------------------------------------------------------------- checkpoints

LAYOUT_STEP = "Step-Audio-2-mini folder"
LAYOUT_A2LLM = "A²-LLM checkpoint"
LAYOUT_ON_BACKBONE = "A²-LLM on a backbone"
#: safetensors dtype -> (short name, bytes per element).
_DTYPES = {"BF16": ("bf16", 2), "F16": ("fp16", 2), "F32": ("fp32", 4), "F64": ("fp64", 8),
           "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1),
           "U8": ("uint8", 1), "BOOL": ("bool", 1), "F8_E4M3": ("fp8", 1),
           "F8_E5M2": ("fp8", 1)}
#: Tensors of a checkpoint that are not network weights (the k-means speech codec).
_NOT_WEIGHTS = ("codec.",)


class CheckpointReportError(ValueError):
    """A directory that ``a2llm doctor --checkpoint`` cannot describe."""


def safetensors_header(path: str) -> Dict[str, dict]:
    """Tensor name -> ``{"dtype", "shape", "data_offsets"}`` from a file's header only."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise CheckpointReportError(f"{path}: not a safetensors file (too short)")
            (size,) = struct.unpack("<Q", raw)
            if size > 100_000_000:
                raise CheckpointReportError(f"{path}: not a safetensors file (header size "
                                            f"{size})")
            header = json.loads(f.read(size))
    except (OSError, ValueError) as exc:
        if isinstance(exc, CheckpointReportError):
            raise
        raise CheckpointReportError(f"{path}: unreadable safetensors header: {exc}") from exc
    header.pop("__metadata__", None)
    return header


def tensor_stats(files, skip=()) -> dict:
    """Elements and bytes per stored dtype over the tensors of ``files``.

    -> ``{"n_tensors", "n_elements", "stored_bytes", "dtypes": {name: elements}}``;
    tensors whose name starts with one of ``skip`` are left out.
    """
    out = {"n_tensors": 0, "n_elements": 0, "stored_bytes": 0, "dtypes": {}}
    for path in files:
        for name, info in safetensors_header(path).items():
            if name.startswith(tuple(skip)):
                continue
            n = 1
            for dim in info["shape"]:
                n *= int(dim)
            short, size = _DTYPES.get(info["dtype"], (info["dtype"].lower(), 0))
            begin, end = info.get("data_offsets", (0, n * size))
            out["n_tensors"] += 1
            out["n_elements"] += n
            out["stored_bytes"] += int(end) - int(begin)
            out["dtypes"][short] = out["dtypes"].get(short, 0) + n
    return out


def _merge_stats(*parts: dict) -> dict:
    out = {"n_tensors": 0, "n_elements": 0, "stored_bytes": 0, "dtypes": {}}
    for p in parts:
        for key in ("n_tensors", "n_elements", "stored_bytes"):
            out[key] += p[key]
        for name, n in p["dtypes"].items():
            out["dtypes"][name] = out["dtypes"].get(name, 0) + n
    return out


def _step_sizes(config: dict) -> dict:
    text, audio = config["text_config"], config["audio_encoder_config"]
    return {"layers": text.get("num_hidden_layers"), "hidden": text.get("hidden_size"),
            "heads": text.get("num_attention_heads"),
            "kv_heads": text.get("num_key_value_heads"), "vocab": text.get("vocab_size"),
            "audio_layers": audio.get("n_audio_layer"), "audio_width": audio.get("n_audio_state"),
            "n_mels": audio.get("n_mels")}


def _a2llm_sizes(config: dict) -> dict:
    llm, audio = config.get("llm", {}), config.get("audio", {})
    return {"layers": llm.get("n_layers"), "hidden": llm.get("hidden_size"),
            "heads": llm.get("n_heads"), "kv_heads": llm.get("n_kv_heads"),
            "vocab": llm.get("vocab_size"), "audio_layers": audio.get("n_layers"),
            "audio_width": audio.get("d_model"), "n_mels": audio.get("n_mels")}


def _describe_step(path: str) -> dict:
    from a2llm_ros.model import step_audio
    config = step_audio.read_folder_config(path)
    shards = sorted(set(step_audio.shard_map(path).values()))
    stats = tensor_stats(shards)
    return {"layout": LAYOUT_STEP, "path": os.path.abspath(path),
            "detail": f"config.json model_type {config['model_type']}, {len(shards)} "
                      f"safetensors file(s); loading it adds a new connector and motion "
                      f"tokenizer",
            "sizes": _step_sizes(config), "weights": stats, "backbone_weights": stats,
            "checkpoint_weights": None, "fingerprint": step_audio.fingerprint(path),
            "codec": _describe_token2wav(path), "problems": []}


def _describe_token2wav(path: str) -> str:
    """One line on the folder's ``token2wav/`` (the speech codec), files only."""
    from a2llm_ros.model.a2llm import TOKEN2WAV_DIR
    from a2llm_ros.model.step_token2wav import TOKEN2WAV_FILES, missing_files
    folder = os.path.join(path, TOKEN2WAV_DIR)
    if not os.path.isdir(folder):
        return f"no {TOKEN2WAV_DIR}/: speaks through a placeholder k-means codec"
    missing = missing_files(folder)
    if missing:
        return f"{TOKEN2WAV_DIR}/ incomplete (missing or empty {', '.join(missing)}): " \
               f"placeholder k-means codec"
    size = sum(os.path.getsize(os.path.join(folder, n)) for n in TOKEN2WAV_FILES)
    return f"{TOKEN2WAV_DIR}/ complete ({_mb(size)}): step_token2wav, 24 kHz"


def _describe_a2llm(path: str, meta: dict) -> dict:
    from a2llm_ros.checkpoint_files import CODEC_PREFIX, FORMAT_VERSION
    from a2llm_ros.constants import LORA_DIR, WEIGHTS_FILE
    problems = []
    if int(meta.get("format_version", -1)) != FORMAT_VERSION:
        problems.append(f"format version {meta.get('format_version')}, this code reads "
                        f"{FORMAT_VERSION}")
    config = meta.get("config", {})
    weights = os.path.join(path, WEIGHTS_FILE)
    files = [weights] + sorted(glob.glob(os.path.join(path, LORA_DIR, "*.safetensors")))
    if not os.path.isfile(weights):
        raise CheckpointReportError(f"{path}: missing {WEIGHTS_FILE}")
    own = tensor_stats(files, skip=(CODEC_PREFIX,) + _NOT_WEIGHTS)
    out = {"layout": LAYOUT_A2LLM, "path": os.path.abspath(path),
           "detail": f"preset {meta.get('preset')}, storage {meta.get('storage_dtype')}"
                     + (", LoRA" if meta.get("lora") else ""),
           "sizes": _a2llm_sizes(config), "checkpoint_weights": own, "backbone_weights": None,
           "weights": own, "problems": problems}
    backbone = config.get("llm", {}).get("backbone")
    if not backbone:
        return out
    from a2llm_ros.model import step_audio
    from a2llm_ros.checkpoint_files import resolve_backbone
    ref = meta.get("backbone") or {}
    folder = resolve_backbone(backbone, os.path.abspath(path))
    out["layout"] = LAYOUT_ON_BACKBONE
    out["backbone"] = {"path": folder, "reference": ref.get("fingerprint"), "found": None}
    try:
        step_audio.read_folder_config(folder)
        shards = sorted(set(step_audio.shard_map(folder).values()))
        found = step_audio.fingerprint(folder)
    except (OSError, ValueError) as exc:
        problems.append(f"backbone unusable: {exc}")
        return out
    out["backbone"]["found"] = found
    if ref.get("fingerprint") and ref["fingerprint"] != found:
        problems.append(f"backbone {folder} does not match: fingerprint {found}, checkpoint "
                        f"made on {ref['fingerprint']}")
    out["backbone_weights"] = tensor_stats(shards)
    out["weights"] = _merge_stats(own, out["backbone_weights"])
    return out


def describe_checkpoint(path: str) -> dict:
    """What ``path`` is (see module docstring), from config.json and safetensors headers.

    -> ``{"layout", "path", "detail", "sizes": {layers, hidden, heads, kv_heads, vocab,
    audio_layers, audio_width, n_mels}, "weights" (all), "checkpoint_weights",
    "backbone_weights" (:func:`tensor_stats` or None), "problems": [str], ...}``.
    Raises :class:`CheckpointReportError` when it is neither kind.
    """
    from a2llm_ros.checkpoint_files import DEFAULT_CHECKPOINT, FORMAT
    from a2llm_ros.model import step_audio
    if path == "default":
        path = DEFAULT_CHECKPOINT
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise CheckpointReportError(f"not a directory: {path}")
    if not os.path.isfile(cfg_path):
        raise CheckpointReportError(f"{path}: no config.json (neither a Step-Audio-2-mini "
                                    f"folder nor an A²-LLM checkpoint)")
    try:
        with open(cfg_path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as exc:
        raise CheckpointReportError(f"{cfg_path}: unreadable: {exc}") from exc
    try:
        if meta.get("format") == FORMAT:
            return _describe_a2llm(path, meta)
        if "model_type" in meta:
            step_audio.read_folder_config(path)  # names a wrong model_type
            return _describe_step(path)
    except step_audio.BackboneError as exc:
        raise CheckpointReportError(str(exc)) from exc
    raise CheckpointReportError(f"{cfg_path}: neither an A²-LLM checkpoint (format "
                                f"{FORMAT!r}) nor a Step-Audio-2-mini folder (model_type "
                                f"{step_audio.STEP_MODEL_TYPE!r})")


def _mb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def _dtypes(stats: dict) -> str:
    total = max(stats["n_elements"], 1)
    parts = sorted(stats["dtypes"].items(), key=lambda kv: -kv[1])
    if len(parts) == 1:
        return f"{parts[0][0]} (all {stats['n_tensors']} tensors)"
    return ", ".join(f"{name} {_percent(100.0 * n / total)}" for name, n in parts)


def _percent(p: float) -> str:
    return "<0.1%" if 0 < p < 0.05 else f"{p:.1f}%"


def checkpoint_report(path: str) -> Tuple[str, bool]:
    """Text report of :func:`describe_checkpoint` and whether the directory is usable."""
    try:
        d = describe_checkpoint(path)
    except CheckpointReportError as exc:
        return f"Checkpoint {path}:\n  [--] {exc}", False
    s, w = d["sizes"], d["weights"]
    lines = [f"Checkpoint {d['path']}:",
             f"  layout      {d['layout']} ({d['detail']})",
             f"  LLM         {s['layers']} layers, hidden {s['hidden']}, {s['heads']} heads / "
             f"{s['kv_heads']} KV heads, vocabulary {s['vocab']}",
             f"  audio       {s['audio_layers']} encoder layers, width {s['audio_width']}, "
             f"{s['n_mels']} mels"]
    if d.get("backbone"):
        b = d["backbone"]
        state = "fingerprint matches" if b["found"] and b["found"] == b["reference"] else \
            f"fingerprint {b['found']} (checkpoint made on {b['reference']})"
        lines.append(f"  backbone    {b['path']} ({state})")
    if d.get("codec"):
        lines.append(f"  codec       {d['codec']}")
    parts = []
    if d["backbone_weights"] is not None and d["checkpoint_weights"] is not None:
        parts = [f"backbone {_count(d['backbone_weights']['n_elements'])}",
                 f"checkpoint {_count(d['checkpoint_weights']['n_elements'])}"]
    lines.append(f"  parameters  {_count(w['n_elements'])} ({w['n_elements']:,} in "
                 f"{w['n_tensors']} tensors" + (", " + ", ".join(parts) if parts else "")
                 + ")")
    lines.append(f"  stored      {_dtypes(w)}, {_mb(w['stored_bytes'])} of tensor data")
    lines.append(f"  memory      weights need {_mb(2 * w['n_elements'])} in bf16, "
                 f"{_mb(4 * w['n_elements'])} in fp32 (activations and KV cache extra)")
    for problem in d["problems"]:
        lines.append(f"  [--] {problem}")
    return "\n".join(lines), not d["problems"]

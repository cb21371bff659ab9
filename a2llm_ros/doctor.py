"""Environment report for ``a2llm doctor``: Python, torch, ROS, messages, backends.

Every check returns ``(name, ok, detail)``; a missing component always says why
(import error text, no GPU, ...), so a user knows what to install.
"""
from __future__ import annotations

import importlib
import os
import platform
import subprocess
import sys
from typing import List, Tuple

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
    return out


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

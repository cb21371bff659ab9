"""TensorRT engine cache: GPU identity, cache keys, engine sidecars and mismatch messages.

An engine ``<engine dir>/<graph>.plan`` has a sidecar ``<graph>.plan.json``
recording what it was built from and for: the SHA-256 of the ONNX graph, the
TensorRT version, the GPU (name and compute capability) and the build
options (precision, workspace, profiles, ...).  The cache key is the SHA-256
of those four, so any change selects a different engine.  A cached engine
whose record does not match the running system is refused with a message
naming every difference and how to rebuild (``force_engine_update``).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
from typing import Dict, List, Optional

from a2llm_ros.engines.config import EngineError

SIDECAR_FORMAT = "a2llm_ros.tensorrt_engine"
SIDECAR_VERSION = 1
PLAN_SUFFIX = ".plan"

#: Peak DRAM bandwidth (GB/s) of GPUs this project targets, by name substring
#: (vendor data sheets).  Used for the decode memory-bandwidth ratio.
GPU_BANDWIDTH_GBS = (
    ("orin nano", 68.0), ("orin nx", 102.4), ("agx orin", 204.8), ("orin", 204.8),
    ("xavier nx", 59.7), ("agx xavier", 136.5), ("xavier", 136.5),
    ("h200", 4800.0), ("h100 pcie", 2000.0), ("h100", 3350.0), ("a100-sxm4-80", 2039.0),
    ("a100", 1555.0), ("l40s", 864.0), ("l4", 300.0), ("a10g", 600.0), ("a10", 600.0),
    ("rtx 4090", 1008.0), ("rtx 3090", 936.0), ("t4", 320.0), ("v100", 900.0),
)


# ----------------------------------------------------------------------------- GPU identity

def gpu_info(device_index: int = 0) -> Optional[Dict[str, object]]:
    """``{"name", "compute_capability", "total_memory_mb"}`` of a CUDA GPU, or None.

    Asked from torch (CUDA build), then pycuda, then ``nvidia-smi``.
    """
    for probe in (_gpu_from_torch, _gpu_from_pycuda, _gpu_from_smi):
        try:
            info = probe(device_index)
        except Exception:  # a broken driver or library: try the next probe
            info = None
        if info:
            return info
    return None


def _gpu_from_torch(index: int):
    import torch
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(index)
    return {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "total_memory_mb": int(props.total_memory // (1 << 20))}


def _gpu_from_pycuda(index: int):
    import pycuda.driver as cuda
    cuda.init()
    if cuda.Device.count() <= index:
        return None
    dev = cuda.Device(index)
    major, minor = dev.compute_capability()
    return {"name": dev.name(), "compute_capability": f"{major}.{minor}",
            "total_memory_mb": int(dev.total_memory() // (1 << 20))}


def _gpu_from_smi(index: int):
    res = subprocess.run(["nvidia-smi", f"--id={index}",
                          "--query-gpu=name,compute_cap,memory.total",
                          "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=10)
    if res.returncode or not res.stdout.strip():
        return None
    name, cc, mem = [p.strip() for p in res.stdout.strip().splitlines()[0].split(",")]
    return {"name": name, "compute_capability": cc, "total_memory_mb": int(float(mem))}


def compute_capability(gpu: Optional[dict]) -> tuple:
    """(major, minor) of ``gpu`` (``(0, 0)`` when unknown)."""
    try:
        major, minor = str((gpu or {}).get("compute_capability", "0.0")).split(".")
        return int(major), int(minor)
    except ValueError:
        return 0, 0


def bandwidth_gbs(gpu_name: str) -> Optional[float]:
    """Peak memory bandwidth of a GPU from :data:`GPU_BANDWIDTH_GBS` (None if unknown)."""
    name = gpu_name.lower()
    for key, value in GPU_BANDWIDTH_GBS:
        if key in name:
            return value
    return None


# ----------------------------------------------------------------------------- keys / sidecars

def cache_key(onnx_sha256: str, trt_version: str, gpu: Optional[dict], options: dict) -> str:
    """SHA-256 over ONNX hash + TensorRT version + GPU model/compute capability + options."""
    gpu = gpu or {}
    payload = json.dumps({"onnx": onnx_sha256, "tensorrt": trt_version,
                          "gpu": gpu.get("name", "unknown"),
                          "compute_capability": gpu.get("compute_capability", "unknown"),
                          "options": options}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def engine_paths(engine_dir: str, graph: str):
    """(plan path, sidecar path) of ``graph`` in ``engine_dir``."""
    plan = os.path.join(engine_dir, graph + PLAN_SUFFIX)
    return plan, plan + ".json"


def make_record(graph: str, onnx_sha256: str, trt_version: str, gpu: Optional[dict],
                options: dict, io: Optional[dict] = None, build_seconds: float = 0.0,
                plan_sha256: str = "") -> dict:
    """The sidecar content of an engine."""
    gpu = gpu or {}
    return {"format": SIDECAR_FORMAT, "format_version": SIDECAR_VERSION, "graph": graph,
            "cache_key": cache_key(onnx_sha256, trt_version, gpu, options),
            "onnx_sha256": onnx_sha256, "tensorrt_version": trt_version,
            "gpu": {"name": gpu.get("name", "unknown"),
                    "compute_capability": gpu.get("compute_capability", "unknown")},
            "build_options": options, "io": io or {}, "plan_sha256": plan_sha256,
            "build_seconds": round(build_seconds, 2),
            "built": datetime.datetime.now().isoformat(timespec="seconds")}


def read_record(path: str) -> dict:
    """Read and validate an engine sidecar (EngineError when unreadable or foreign)."""
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError) as exc:
        raise EngineError(f"engine sidecar {path} is unreadable ({exc})") from exc
    missing = [k for k in ("format", "graph", "cache_key", "onnx_sha256", "tensorrt_version",
                           "gpu", "build_options") if k not in record]
    if record.get("format") != SIDECAR_FORMAT or missing:
        raise EngineError(f"{path} is not an a2llm_ros engine sidecar"
                          + (f" (missing {', '.join(missing)})" if missing else ""))
    if int(record.get("format_version", -1)) != SIDECAR_VERSION:
        raise EngineError(f"{path}: sidecar format version {record.get('format_version')}, "
                          f"this code reads {SIDECAR_VERSION}")
    return record


def mismatches(record: dict, expected: dict, check_onnx: bool = True) -> List[str]:
    """Human-readable differences between a stored engine record and the running system."""
    out = []
    if record["tensorrt_version"] != expected["tensorrt_version"]:
        out.append(f"built with TensorRT {record['tensorrt_version']}, this system has "
                   f"TensorRT {expected['tensorrt_version']}")
    rg, eg = record["gpu"], expected["gpu"]
    if (rg.get("name"), rg.get("compute_capability")) != \
            (eg.get("name"), eg.get("compute_capability")):
        out.append(f"built for GPU '{rg.get('name')}' (compute capability "
                   f"{rg.get('compute_capability')}), this GPU is '{eg.get('name')}' "
                   f"(compute capability {eg.get('compute_capability')})")
    if check_onnx and record["onnx_sha256"] != expected["onnx_sha256"]:
        out.append(f"built from another ONNX graph (sha256 {record['onnx_sha256'][:12]}, "
                   f"the current one is {expected['onnx_sha256'][:12]})")
    ro, eo = record["build_options"], expected["build_options"]
    diff = sorted(k for k in set(ro) | set(eo) if ro.get(k) != eo.get(k))
    if diff:
        out.append("built with other options: " + ", ".join(
            f"{k}={ro.get(k)!r} (now {eo.get(k)!r})" for k in diff))
    return out


def rebuild_hint(checkpoint_dir: str, engine_dir: str) -> str:
    return (f"rebuild with `a2llm export --checkpoint {checkpoint_dir} --format tensorrt "
            f"--out {engine_dir} --force-engine-update` (ROS: force_engine_update:=true)")


def mismatch_error(plan: str, problems: List[str], checkpoint_dir: str,
                   engine_dir: str) -> EngineError:
    """The :class:`EngineError` for an engine that does not fit this system."""
    return EngineError(f"TensorRT engine {plan} does not match this system: "
                       + "; ".join(problems) + f". {rebuild_hint(checkpoint_dir, engine_dir)}")


def onnx_hash(onnx_path: str, sidecar: Optional[dict]) -> str:
    """SHA-256 of an exported graph: the export sidecar's value while the file's size and
    mtime are unchanged since export, otherwise recomputed."""
    from a2llm_ros.engines.manifest import onnx_sha256
    st = os.stat(onnx_path)
    if sidecar and sidecar.get("onnx_sha256") and \
            sidecar.get("onnx_size") == st.st_size and \
            sidecar.get("onnx_mtime_ns") == st.st_mtime_ns:
        return sidecar["onnx_sha256"]
    return onnx_sha256(onnx_path)

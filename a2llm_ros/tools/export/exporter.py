"""Export a model's graphs to ONNX and verify each against PyTorch (the tool behind
`a2llm export` and `a2llm bench`'s automatic export).

:mod:`a2llm_ros.tools.export.onnx_export` holds the export primitives (tracing, graph
surgery, sidecars, hashes); :mod:`a2llm_ros.tools.export.parity` the checks.  This
module puts them together and writes the manifest.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Dict, Iterable, Optional

import torch

from a2llm_ros.engines.config import BackendConfig, EngineError
from a2llm_ros.engines.manifest import (FORMAT, FORMAT_VERSION, GRAPHS, MANIFEST, TOP_K,
                                        checkpoint_fingerprint, read_json, write_json)
from a2llm_ros.tools.export.graphs import (OPSET, build_spec, connector_state_shape, kv_shape,
                                           motion_cache_shapes, profile_dims,
                                           token2wav_state_shapes)
from a2llm_ros.tools.export.onnx_export import decode_weight_bytes, export_graph, sidecar
from a2llm_ros.tools.export.parity import verify as verify_graph

__all__ = ["export_onnx", "export_checkpoint"]


def _versions() -> Dict[str, str]:
    import onnx
    out = {"torch": torch.__version__, "onnx": onnx.__version__}
    try:
        import onnxruntime
        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        out["onnxruntime"] = ""
    return out


def export_onnx(model, out_dir: str, cfg: Optional[BackendConfig] = None,
                graphs: Optional[Iterable[str]] = None, verify: bool = True,
                checkpoint_dir: Optional[str] = None,
                log: Callable[[str], None] = print) -> dict:
    """Export ``graphs`` (default: all) of ``model`` into ``out_dir``; returns the manifest.

    With ``verify`` every graph is compared with PyTorch through ONNX Runtime
    and :class:`EngineError` is raised when an error exceeds its tolerance.
    """
    cfg = cfg or BackendConfig.preset(model.cfg.preset_name)
    names = list(graphs or GRAPHS)
    if model.cfg.codec.kind != "kmeans_mel":
        raise EngineError(f"engine export covers the kmeans_mel speech codec only; this "
                          f"checkpoint's codec is {model.cfg.codec.kind} (it runs in PyTorch: "
                          f"use backend torch)")
    unknown = sorted(set(names) - set(GRAPHS))
    if unknown:
        raise EngineError(f"unknown graphs {unknown}; known: {', '.join(GRAPHS)}")
    os.makedirs(out_dir, exist_ok=True)
    model = model.eval()
    dims = profile_dims(model, cfg)
    manifest_path = os.path.join(out_dir, MANIFEST)
    old = read_json(manifest_path) if os.path.isfile(manifest_path) else {}
    entries = dict(old.get("graphs", {})) if _same_source(old, model, checkpoint_dir, cfg) \
        else {}
    failures = []
    for name in names:
        t0 = time.perf_counter()
        spec = build_spec(name, model, cfg, dims)
        path = export_graph(spec, out_dir)
        parity = None
        if verify:
            parity = verify_graph(name, path, model, cfg)
            if not parity["ok"]:
                failures.append(name)
        side = sidecar(spec, path, dims, parity)
        write_json(os.path.join(out_dir, name + ".json"), side)
        entries[name] = {"file": os.path.basename(path), "sidecar": name + ".json",
                         "onnx_sha256": side["onnx_sha256"]}
        log(_parity_line(name, parity, time.perf_counter() - t0))
    if checkpoint_dir:
        source = {"path": os.path.abspath(checkpoint_dir),
                  **checkpoint_fingerprint(checkpoint_dir)}
    else:  # keep what an earlier export of the same model recorded
        source = old.get("checkpoint", {"path": ""}) if entries else {"path": ""}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "opset": OPSET,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "checkpoint": source,
                "model_config": model.cfg.to_dict(), "preset": model.cfg.preset_name,
                "export_options": _export_options(cfg),
                "dims": {k: list(v) for k, v in dims.items()},
                "shapes": _state_shapes(model), "n_params": int(model.n_params()),
                "decode_weight_bytes_fp32": decode_weight_bytes(model),
                "versions": _versions(), "graphs": dict(sorted(entries.items()))}
    write_json(manifest_path, manifest)
    if failures:
        raise EngineError(f"ONNX parity check failed for {', '.join(failures)} "
                          f"(see {out_dir}/<graph>.json)")
    return manifest


def _export_options(cfg: BackendConfig) -> dict:
    return {"max_context": cfg.max_context, "opt_context": cfg.opt_context,
            "max_question_s": cfg.max_question_s, "opt_question_s": cfg.opt_question_s}


def _same_source(old: dict, model, checkpoint_dir, cfg) -> bool:
    """Whether an existing manifest describes the same checkpoint and options."""
    if not old or old.get("format") != FORMAT:
        return False
    if old.get("model_config") != model.cfg.to_dict():
        return False
    if old.get("export_options") != _export_options(cfg):
        return False
    if checkpoint_dir:
        fp = checkpoint_fingerprint(checkpoint_dir)
        return all(old.get("checkpoint", {}).get(k) == v for k, v in fp.items())
    return True


def _state_shapes(model) -> dict:
    """Shapes the backends need to create initial states."""
    return {"kv_layout": list(kv_shape(model, "T")),
            "connector_state": list(connector_state_shape(model)),
            "motion_caches": [list(s) for s in motion_cache_shapes(model)],
            "token2wav_state": {k: list(v) for k, v in token2wav_state_shapes(model).items()},
            "chunk_tokens": model.cfg.codec.chunk_tokens,
            "top_k": min(TOP_K, model.vocab.size)}


def _parity_line(name: str, parity: Optional[dict], seconds: float) -> str:
    if parity is None:
        return f"exported {name:15s} ({seconds:.1f} s, not verified)"
    status = "ok" if parity["ok"] else "FAILED"
    metric = parity.get("metric", "max|ORT - torch|")
    return (f"parity {name:15s} {metric} = {parity['max_abs_err']:.3g} "
            f"(tol {parity['tol']:.3g}) {status}  [{seconds:.1f} s]"
            + (f"  {parity['note']}" if parity.get("note") else ""))


def export_checkpoint(checkpoint_dir: str, out_dir: str, cfg: Optional[BackendConfig] = None,
                      graphs: Optional[Iterable[str]] = None, verify: bool = True,
                      log: Callable[[str], None] = print) -> dict:
    """Load a checkpoint and :func:`export_onnx` it."""
    from a2llm_ros.checkpoint import load_checkpoint
    from a2llm_ros.checkpoint_files import resolve_checkpoint
    checkpoint_dir = resolve_checkpoint(checkpoint_dir)
    model = load_checkpoint(checkpoint_dir)
    if cfg is None:
        cfg = BackendConfig.preset(model.cfg.preset_name)
    return export_onnx(model, out_dir, cfg, graphs, verify, checkpoint_dir, log)

"""Reading and validating an ONNX export directory against its checkpoint."""
from __future__ import annotations

import os
from typing import Iterable, Optional

from a2llm_ros.engines.config import EngineError


def export_hint(checkpoint_dir: str, onnx_dir: str) -> str:
    """The command that (re)creates an ONNX export directory."""
    return f"a2llm export --checkpoint {checkpoint_dir} --format onnx --out {onnx_dir}"


def load_manifest(onnx_dir: str, checkpoint_dir: Optional[str] = None,
                  graphs: Iterable[str] = (), check_checkpoint: bool = True) -> dict:
    """The manifest of ``onnx_dir``; raises :class:`EngineError` when it is missing, lacks
    ``graphs`` (or their files) or was exported from another checkpoint."""
    from a2llm_ros.engines.onnx_export import (FORMAT, FORMAT_VERSION, MANIFEST,
                                               checkpoint_fingerprint, read_json)
    hint = export_hint(checkpoint_dir or "CHECKPOINT", onnx_dir)
    path = os.path.join(onnx_dir, MANIFEST)
    if not os.path.isfile(path):
        raise EngineError(f"no exported ONNX graphs in {onnx_dir} ({MANIFEST} missing); "
                          f"export them with `{hint}`")
    manifest = read_json(path)
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise EngineError(f"{path}: not an a2llm_ros ONNX export of format version "
                          f"{FORMAT_VERSION}; re-export with `{hint}`")
    missing = [g for g in graphs if g not in manifest.get("graphs", {})
               or not os.path.isfile(os.path.join(onnx_dir, manifest["graphs"][g]["file"]))]
    if missing:
        raise EngineError(f"{onnx_dir} lacks the graphs {', '.join(missing)}; export them "
                          f"with `{hint}`")
    if checkpoint_dir and check_checkpoint:
        from a2llm_ros.checkpoint import read_config
        stored = manifest.get("checkpoint", {})
        now = checkpoint_fingerprint(checkpoint_dir)
        changed = [k.replace("_sha256", "") for k, v in now.items()
                   if stored.get(k) and stored.get(k) != v]
        if read_config(checkpoint_dir).to_dict() != manifest.get("model_config"):
            changed.append("model config")
        if changed:
            raise EngineError(f"the ONNX graphs in {onnx_dir} were exported from another "
                              f"checkpoint ({', '.join(sorted(set(changed)))} differ from "
                              f"{checkpoint_dir}); re-export with `{hint}`")
    return manifest

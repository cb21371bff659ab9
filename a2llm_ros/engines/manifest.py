"""An ONNX export directory: its format, graph names, hashes, and reading and validating it
against its checkpoint (the exporter in :mod:`a2llm_ros.tools.export` writes what this reads)."""
from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, Iterable, Optional

from a2llm_ros.constants import CONFIG_FILE, WEIGHTS_FILE
from a2llm_ros.engines.config import EngineError

FORMAT = "a2llm_ros.onnx_export"
#: 2: Step-Audio-2 encoder + adaptor and chat prompt (checkpoint format 2); 3: the LLM
#: graphs take the schedule's kind and a banned id and also return the top TOP_K tokens;
#: 4: the prefill graphs also return ``tail`` (the end-of-turn head's hidden states).
FORMAT_VERSION = 4
#: Most likely tokens the LLM graphs return ranked (``top_values``, ``top_ids``), so a
#: backend samples from them and fetches the full logits only for larger top-k.
TOP_K = 64
#: The LLM graphs' ``kind`` input: no mask, the text ids, the speech ids (enforced schedule).
KIND_INDEX = {None: 0, "text": 1, "speech": 2}
MANIFEST = "manifest.json"

#: Longest token_embed call the engines are built for.
MAX_EMBED_IDS = 64

GRAPHS = ("audio_encoder", "token_embed", "llm_prefill", "llm_decode", "llm",
          "connector_step", "motion_decoder", "token2wav")
#: Graphs each backend needs, per KV-cache mode.
NEEDED = {
    "dynamic": ("audio_encoder", "token_embed", "llm_prefill", "llm_decode",
                "connector_step", "motion_decoder", "token2wav"),
    "static": ("audio_encoder", "token_embed", "llm", "connector_step",
               "motion_decoder", "token2wav"),
}


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def onnx_sha256(path: str) -> str:
    """SHA-256 of an ONNX file and, in order, the external-data files it references."""
    import onnx
    h = hashlib.sha256(file_sha256(path).encode())
    proto = onnx.load(path, load_external_data=False)
    files = sorted({e.value for t in proto.graph.initializer for e in t.external_data
                    if e.key == "location"})
    for name in files:
        h.update(file_sha256(os.path.join(os.path.dirname(path), name)).encode())
    return h.hexdigest()


def checkpoint_fingerprint(ckpt_dir: str) -> Dict[str, str]:
    """Identity of a checkpoint: SHA-256 of its config.json and of its weights file."""
    out = {}
    for key, name in (("config_sha256", CONFIG_FILE), ("weights_sha256", WEIGHTS_FILE)):
        path = os.path.join(ckpt_dir, name)
        out[key] = file_sha256(path) if os.path.isfile(path) else ""
    return out


def write_json(path: str, data: dict) -> None:
    """Write ``data`` as indented JSON, atomically (temporary file, then rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def read_json(path: str) -> dict:
    """A JSON file's object."""
    with open(path) as f:
        return json.load(f)


def export_hint(checkpoint_dir: str, onnx_dir: str) -> str:
    """The command that (re)creates an ONNX export directory."""
    return f"a2llm export --checkpoint {checkpoint_dir} --format onnx --out {onnx_dir}"


def load_manifest(onnx_dir: str, checkpoint_dir: Optional[str] = None,
                  graphs: Iterable[str] = (), check_checkpoint: bool = True) -> dict:
    """The manifest of ``onnx_dir``; raises :class:`EngineError` when it is missing, lacks
    ``graphs`` (or their files) or was exported from another checkpoint."""
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
        from a2llm_ros.checkpoint_files import read_config
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

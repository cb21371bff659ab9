"""ROS 2 interface facts that the core needs without importing ROS.

* :func:`type_hash` computes the RIHS01 type hash (REP-2011) of a message from
  ``.msg`` definitions, so a test can compare a built package's hash with the
  hash of the upstream definitions.
* :func:`detect_audio_flavour` says which ``audio_common_msgs`` is importable:
  the ros-drivers 0.4.x layout (``AudioData{uint8[] data}``), the mgonzs13 4.x
  layout (``AudioStamped``/typed ``AudioData`` arrays), or none.

Only ``.msg`` features used by the interfaces here are supported: primitive
types, strings, nested types, fixed arrays ``T[N]``, bounded ``T[<=N]`` and
unbounded ``T[]`` sequences, ``string<=N``; constants are skipped (they are
not part of the hash).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import re
from pathlib import Path
from typing import Dict, List, Mapping

# FieldType ids from type_description_interfaces/msg/FieldType.msg.
_PRIMITIVE_IDS = {
    "int8": 2, "uint8": 3, "byte": 16, "char": 3, "int16": 4, "uint16": 5,
    "int32": 6, "uint32": 7, "int64": 8, "uint64": 9, "float32": 10, "float64": 11,
    "bool": 15, "string": 17, "wstring": 18,
}
_NESTED_ID = 1
_BOUNDED_STRING_ID = 21
_BOUNDED_WSTRING_ID = 22
_ARRAY_OFFSET, _BOUNDED_SEQ_OFFSET, _UNBOUNDED_SEQ_OFFSET = 48, 96, 144

#: Definitions of the types every Header-carrying message references.
BUILTIN_DEFINITIONS = {
    "builtin_interfaces/msg/Time": "int32 sec\nuint32 nanosec\n",
    "std_msgs/msg/Header": "builtin_interfaces/Time stamp\nstring frame_id\n",
}

_FIELD_RE = re.compile(r"^(?P<type>[A-Za-z0-9_/]+(?:<=\d+)?)(?P<array>\[(?:<=)?\d*\])?\s+"
                       r"(?P<name>[a-z][a-z0-9_]*)(?:\s+(?P<default>.+))?$")


def _strip(line: str) -> str:
    return line.split("#", 1)[0].strip()


def parse_msg(package: str, text: str) -> List[dict]:
    """Parse ``.msg`` text into the field list of a type description."""
    fields = []
    for raw in text.splitlines():
        line = _strip(raw)
        if not line:
            continue
        match = _FIELD_RE.match(line)
        if match is None:
            if re.match(r"^[A-Za-z0-9_]+\s+[A-Z][A-Z0-9_]*\s*=", line):
                continue  # constant
            raise ValueError(f"cannot parse .msg line: {raw!r}")
        fields.append({"name": match["name"],
                       "type": _field_type(package, match["type"], match["array"])})
    return fields


def _field_type(package: str, base: str, array: str | None) -> dict:
    string_capacity = 0
    nested = ""
    if "<=" in base:
        base, bound = base.split("<=")
        string_capacity = int(bound)
        type_id = _BOUNDED_STRING_ID if base == "string" else _BOUNDED_WSTRING_ID
    elif base in _PRIMITIVE_IDS:
        type_id = _PRIMITIVE_IDS[base]
    else:
        type_id = _NESTED_ID
        pkg, name = base.split("/") if "/" in base else (package, base)
        nested = f"{pkg}/msg/{name}"
    capacity = 0
    if array is not None:
        inner = array[1:-1]
        if inner == "":
            type_id += _UNBOUNDED_SEQ_OFFSET
        elif inner.startswith("<="):
            type_id += _BOUNDED_SEQ_OFFSET
            capacity = int(inner[2:])
        else:
            type_id += _ARRAY_OFFSET
            capacity = int(inner)
    return {"type_id": type_id, "capacity": capacity, "string_capacity": string_capacity,
            "nested_type_name": nested}


def _referenced(name: str, described: Mapping[str, List[dict]]) -> List[str]:
    seen, queue = set(), [f["type"]["nested_type_name"] for f in described[name]]
    while queue:
        ref = queue.pop()
        if ref and ref not in seen:
            if ref not in described:
                raise KeyError(f"{name} references {ref}, whose definition was not given")
            seen.add(ref)
            queue.extend(f["type"]["nested_type_name"] for f in described[ref])
    return sorted(seen)


def type_hash(type_name: str, definitions: Mapping[str, str]) -> str:
    """RIHS01 hash of ``type_name`` ("pkg/msg/Name") given .msg texts by type name.

    ``definitions`` must hold every type referenced (``BUILTIN_DEFINITIONS`` is
    added automatically).
    """
    texts: Dict[str, str] = dict(BUILTIN_DEFINITIONS)
    texts.update(definitions)
    described = {name: parse_msg(name.split("/")[0], text) for name, text in texts.items()}
    body = {
        "type_description": {"type_name": type_name, "fields": described[type_name]},
        "referenced_type_descriptions": [
            {"type_name": ref, "fields": described[ref]}
            for ref in _referenced(type_name, described)],
    }
    text = json.dumps(body, separators=(", ", ": "), ensure_ascii=True, sort_keys=False)
    return "RIHS01_" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def definitions_from_dir(package: str, msg_dir: Path) -> Dict[str, str]:
    """Map "pkg/msg/Name" -> text for every ``.msg`` file in ``msg_dir``."""
    return {f"{package}/msg/{p.stem}": p.read_text() for p in sorted(Path(msg_dir).glob("*.msg"))}


def built_type_hash(json_path: Path) -> str:
    """The hash that rosidl wrote into a built package's ``msg/<Name>.json``."""
    data = json.loads(Path(json_path).read_text())
    name = data["type_description_msg"]["type_description"]["type_name"]
    for entry in data["type_hashes"]:
        if entry["type_name"] == name:
            return entry["hash_string"]
    raise KeyError(f"no hash for {name} in {json_path}")


def detect_audio_flavour() -> str:
    """Which audio_common_msgs is importable: 'ros_drivers', 'mgonzs13' or 'none'.

    Importing message modules loads ROS libraries; call this from ROS-side
    code or diagnostics only, never from the model core.
    """
    try:
        msgs = importlib.import_module("audio_common_msgs.msg")
    except ImportError:
        return "none"
    if hasattr(msgs, "AudioStamped"):
        return "mgonzs13"
    if hasattr(msgs, "AudioInfo") and hasattr(msgs.AudioInfo, "sample_format"):
        return "ros_drivers"
    return "unknown"

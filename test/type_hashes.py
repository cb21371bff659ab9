"""Test helpers for RIHS01 type hashes (REP-2011): what rosidl wrote into a built package,
and the .msg texts every Header-carrying message references."""
from __future__ import annotations

import json
from pathlib import Path

#: Definitions of the types every Header-carrying message references.
BUILTIN_DEFINITIONS = {
    "builtin_interfaces/msg/Time": "int32 sec\nuint32 nanosec\n",
    "std_msgs/msg/Header": "builtin_interfaces/Time stamp\nstring frame_id\n",
}


def built_type_hash(json_path: Path) -> str:
    """The hash that rosidl wrote into a built package's ``msg/<Name>.json``."""
    data = json.loads(Path(json_path).read_text())
    name = data["type_description_msg"]["type_description"]["type_name"]
    for entry in data["type_hashes"]:
        if entry["type_name"] == name:
            return entry["hash_string"]
    raise KeyError(f"no hash for {name} in {json_path}")

"""RIHS01 type hashes: the built fallback audio_common_msgs equals upstream's.

The hasher is rosbags' typestore (``hash_rihs01``), a dependency the bag tools
already use; the project keeps no hasher of its own.
"""
from pathlib import Path

import pytest
from rosbags.typesys import Stores, get_typestore, get_types_from_msg

from type_hashes import BUILTIN_DEFINITIONS, built_type_hash

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / ".a2llm_ws" / "install"

# Field definitions of ros-drivers/audio_common (ros2 branch) audio_common_msgs,
# as published upstream (comments dropped; they are not part of the hash).
UPSTREAM_AUDIO_COMMON = {
    "audio_common_msgs/msg/AudioData": "uint8[] data\n",
    "audio_common_msgs/msg/AudioDataStamped":
        "std_msgs/Header header\naudio_common_msgs/AudioData audio\n",
    "audio_common_msgs/msg/AudioInfo":
        "uint8 channels\nuint32 sample_rate\nstring sample_format\n"
        "uint32 bitrate\nstring coding_format\n",
}


def _own_definitions():
    return {f"a2llm_ros/msg/{p.stem}": p.read_text() for p in sorted((ROOT / "msg").glob("*.msg"))}


def rihs01(type_name: str, definitions) -> str:
    """rosbags' RIHS01 hash of ``type_name`` given .msg texts (plus Time and Header)."""
    store = get_typestore(Stores.EMPTY)
    types = {}
    for name, text in {**BUILTIN_DEFINITIONS, **definitions}.items():
        types.update(get_types_from_msg(text, name))
    store.register(types)
    return store.hash_rihs01(type_name)


def _built_json(package: str, name: str) -> Path:
    path = INSTALL / package / "share" / package / "msg" / f"{name}.json"
    if not path.exists():
        pytest.fail(f"{path} missing: run `make env` (the bootstrap builds the interfaces)")
    return path


@pytest.mark.parametrize("name", ["AudioData", "AudioDataStamped", "AudioInfo"])
def test_fallback_audio_common_msgs_hash_equals_upstream(name):
    upstream = rihs01(f"audio_common_msgs/msg/{name}", UPSTREAM_AUDIO_COMMON)
    built = built_type_hash(_built_json("audio_common_msgs", name))
    assert upstream.startswith("RIHS01_") and len(upstream) == 7 + 64
    assert built == upstream


@pytest.mark.parametrize("name", ["FlameFrame", "FlameChunk", "ConversationState",
                                  "ResponseText"])
def test_own_message_hash_matches_rosidl(name):
    """rosbags agrees with rosidl on the project's own messages too."""
    assert rihs01(f"a2llm_ros/msg/{name}", _own_definitions()) == \
        built_type_hash(_built_json("a2llm_ros", name))


def test_changed_field_changes_hash():
    changed = dict(UPSTREAM_AUDIO_COMMON)
    changed["audio_common_msgs/msg/AudioInfo"] = changed[
        "audio_common_msgs/msg/AudioInfo"].replace("uint8 channels", "uint16 channels")
    assert rihs01("audio_common_msgs/msg/AudioInfo", changed) != \
        rihs01("audio_common_msgs/msg/AudioInfo", UPSTREAM_AUDIO_COMMON)

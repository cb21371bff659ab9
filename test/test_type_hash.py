"""RIHS01 type hashes: the built fallback audio_common_msgs equals upstream's."""
from pathlib import Path

import pytest

from a2llm_ros.interfaces import built_type_hash, definitions_from_dir, type_hash

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


def _built_json(package: str, name: str) -> Path:
    path = INSTALL / package / "share" / package / "msg" / f"{name}.json"
    if not path.exists():
        pytest.fail(f"{path} missing: run `make env` (the bootstrap builds the interfaces)")
    return path


@pytest.mark.parametrize("name", ["AudioData", "AudioDataStamped", "AudioInfo"])
def test_fallback_audio_common_msgs_hash_equals_upstream(name):
    upstream = type_hash(f"audio_common_msgs/msg/{name}", UPSTREAM_AUDIO_COMMON)
    built = built_type_hash(_built_json("audio_common_msgs", name))
    assert upstream.startswith("RIHS01_") and len(upstream) == 7 + 64
    assert built == upstream


@pytest.mark.parametrize("name", ["FlameFrame", "FlameChunk", "ConversationState",
                                  "ResponseText"])
def test_own_message_hash_matches_rosidl(name):
    """The hasher agrees with rosidl on the project's own messages too."""
    defs = definitions_from_dir("a2llm_ros", ROOT / "msg")
    assert type_hash(f"a2llm_ros/msg/{name}", defs) == \
        built_type_hash(_built_json("a2llm_ros", name))


def test_changed_field_changes_hash():
    changed = dict(UPSTREAM_AUDIO_COMMON)
    changed["audio_common_msgs/msg/AudioInfo"] = changed[
        "audio_common_msgs/msg/AudioInfo"].replace("uint8 channels", "uint16 channels")
    assert type_hash("audio_common_msgs/msg/AudioInfo", changed) != \
        type_hash("audio_common_msgs/msg/AudioInfo", UPSTREAM_AUDIO_COMMON)

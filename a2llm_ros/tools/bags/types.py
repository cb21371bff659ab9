"""rosbags typestores for the project's messages and audio_common_msgs.

``typestore_for(flavour, distro)`` starts from the rosbags store of a ROS 2
distribution (Kilted, Jazzy or Humble: std_msgs/builtin_interfaces) and
registers, from the ``.msg`` files shipped with the package:

* ``a2llm_ros/msg/{FlameFrame,FlameChunk,ConversationState,ResponseText}``
* ``audio_common_msgs/msg/*`` of one flavour: ``"ros_drivers"`` (AudioData,
  AudioDataStamped, AudioInfo) or ``"mgonzs13"`` (AudioStamped, Audio,
  AudioData with typed arrays, AudioInfo with an integer format code).

Both flavours use the package name ``audio_common_msgs`` and define
``AudioData``/``AudioInfo`` differently, so one store holds only one flavour.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterable

from rosbags.typesys import Stores, get_typestore, get_types_from_msg

from a2llm_ros._vendor import MGONZS13_AUDIO_MSGS, ROS_DRIVERS_AUDIO_MSGS
from a2llm_ros.audio.frontend import MGONZS13_FIELDS

#: Directory with the project's own ``.msg`` files (package root ``msg/``).
PROJECT_MSG_DIR = Path(__file__).resolve().parents[2] / "msg"
PROJECT_PACKAGE = "a2llm_ros"
AUDIO_PACKAGE = "audio_common_msgs"

ROS_DRIVERS = "ros_drivers"
MGONZS13 = "mgonzs13"
FLAVOURS = (ROS_DRIVERS, MGONZS13)
DISTROS = {"kilted": Stores.ROS2_KILTED, "jazzy": Stores.ROS2_JAZZY,
           "humble": Stores.ROS2_HUMBLE}
DEFAULT_DISTRO = "kilted"

# Message type names as rosbag2 stores them.
FLAME_FRAME = "a2llm_ros/msg/FlameFrame"
FLAME_CHUNK = "a2llm_ros/msg/FlameChunk"
CONVERSATION_STATE = "a2llm_ros/msg/ConversationState"
RESPONSE_TEXT = "a2llm_ros/msg/ResponseText"
AUDIO_DATA = "audio_common_msgs/msg/AudioData"
AUDIO_INFO = "audio_common_msgs/msg/AudioInfo"
AUDIO_DATA_STAMPED = "audio_common_msgs/msg/AudioDataStamped"  # ros-drivers only
AUDIO_STAMPED = "audio_common_msgs/msg/AudioStamped"  # mgonzs13 only
AUDIO = "audio_common_msgs/msg/Audio"  # mgonzs13 only

PROJECT_TYPES = (FLAME_FRAME, FLAME_CHUNK, CONVERSATION_STATE, RESPONSE_TEXT)
FLAVOUR_TYPES = {ROS_DRIVERS: (AUDIO_DATA, AUDIO_DATA_STAMPED, AUDIO_INFO),
                 MGONZS13: (AUDIO_STAMPED, AUDIO, AUDIO_DATA, AUDIO_INFO)}

# mgonzs13 AudioInfo.format codes (PortAudio sample formats).
MG_FORMAT_F32 = 1
MG_FORMAT_I32 = 2
MG_FORMAT_I16 = 8
MG_FORMAT_I8 = 16
MG_FORMAT_U8 = 32
#: mgonzs13 format code -> AudioData field holding the samples.
#: The audio front-end owns the format-code -> typed-field table.
MG_FORMAT_FIELDS = MGONZS13_FIELDS


def msg_types_from_dir(msg_dir: Path, package: str) -> Dict[str, object]:
    """Parse every ``*.msg`` in ``msg_dir`` as ``<package>/msg/<Name>`` (rosbags typesdict)."""
    types: Dict[str, object] = {}
    for path in sorted(Path(msg_dir).glob("*.msg")):
        name = f"{package}/msg/{path.stem}"
        types.update(get_types_from_msg(path.read_text(encoding="utf8"), name))
    if not types:
        raise FileNotFoundError(f"no .msg files in {msg_dir}")
    return types


def project_msg_dir() -> Path:
    """``msg/`` of the source tree, else ``share/a2llm_ros/msg`` of an ament prefix."""
    if PROJECT_MSG_DIR.is_dir():
        return PROJECT_MSG_DIR
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        candidate = Path(prefix) / "share" / PROJECT_PACKAGE / "msg"
        if prefix and candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no msg/ directory for {PROJECT_PACKAGE} "
                            f"(looked in {PROJECT_MSG_DIR} and AMENT_PREFIX_PATH)")


def project_msg_types() -> Dict[str, object]:
    """The ``a2llm_ros/msg/*`` definitions."""
    return msg_types_from_dir(project_msg_dir(), PROJECT_PACKAGE)


def audio_msg_types(flavour: str = ROS_DRIVERS) -> Dict[str, object]:
    """``audio_common_msgs/msg/*`` definitions of ``flavour``."""
    _check_flavour(flavour)
    root = ROS_DRIVERS_AUDIO_MSGS if flavour == ROS_DRIVERS else MGONZS13_AUDIO_MSGS
    return msg_types_from_dir(root / "msg", AUDIO_PACKAGE)


@lru_cache(maxsize=None)
def typestore_for(flavour: str = ROS_DRIVERS, distro: str = DEFAULT_DISTRO):
    """Typestore of ``distro`` plus the project's messages and ``flavour``'s audio messages.

    The store is cached; do not register further types on it (use
    :func:`new_typestore` for a private copy).
    """
    return new_typestore(flavour, distro)


def new_typestore(flavour: str = ROS_DRIVERS, distro: str = DEFAULT_DISTRO):
    """Like :func:`typestore_for` but a fresh, uncached store."""
    _check_flavour(flavour)
    if distro not in DISTROS:
        raise ValueError(f"distro must be one of {sorted(DISTROS)}, got {distro!r}")
    store = get_typestore(DISTROS[distro])
    store.register(project_msg_types())
    store.register(audio_msg_types(flavour))
    return store


def detect_flavour(msgtypes: Iterable[str], msgdefs: Iterable[str] = ()) -> str:
    """Guess the audio_common_msgs flavour from type names and embedded definitions.

    ``AudioStamped``/``Audio`` or an ``AudioData`` definition with typed arrays
    mean mgonzs13; anything else is taken as ros-drivers.
    """
    names = set(msgtypes)
    if names & {AUDIO_STAMPED, AUDIO}:
        return MGONZS13
    if any("int16_data" in text for text in msgdefs):
        return MGONZS13
    return ROS_DRIVERS


def _check_flavour(flavour: str) -> None:
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")

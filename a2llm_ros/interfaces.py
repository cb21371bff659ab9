"""ROS 2 interface facts that the core needs without importing ROS.

:func:`detect_audio_flavour` says which ``audio_common_msgs`` is importable: the
ros-drivers 0.4.x layout (``AudioData{uint8[] data}``), the mgonzs13 4.x layout
(``AudioStamped``/typed ``AudioData`` arrays), or none.  (Message type hashes are
rosbags' business: :mod:`a2llm_ros.tools.bags.types`.)
"""
from __future__ import annotations

import importlib


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

"""Interface definitions carried by a2llm_ros for machines that lack them.

``audio_common_msgs/`` is a buildable copy of the ros-drivers audio_common_msgs
(0.4.x field layout).  The bootstrap builds it only when no installed ROS 2
provides the package, into a separate prefix under the virtual environment,
so it never shadows a real installation.  ``mgonzs13_audio_common_msgs/``
holds the field layout of mgonzs13/audio_common 4.x (same package name, other
messages); it is used for bag fixtures and type detection, never built by the
bootstrap.  Both directories carry COLCON_IGNORE so that a colcon workspace
holding this repository never builds them.
"""
from pathlib import Path

VENDOR_DIR = Path(__file__).resolve().parent
ROS_DRIVERS_AUDIO_MSGS = VENDOR_DIR / "audio_common_msgs"
MGONZS13_AUDIO_MSGS = VENDOR_DIR / "mgonzs13_audio_common_msgs"

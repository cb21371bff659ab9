"""QoS profiles of the a2llm_ros topics (documented in docs/ros_interfaces.md).

* microphone audio: sensor-data style -- best effort, volatile, keep last
  ``depth`` (a best-effort subscription matches reliable and best-effort
  publishers alike);
* outputs (speech audio, FLAME, text, state, joint commands, markers):
  reliable, volatile, keep last ``depth`` (bounded queues: a slow subscriber
  loses the oldest messages instead of blocking the node);
* stream descriptions (AudioInfo, published once): reliable, transient local,
  keep last 1, so late subscribers get them.  For AudioInfo *input* both a
  transient-local and a volatile subscription are made, because a volatile
  publisher cannot match a transient-local subscription.
"""
from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

__all__ = ["sensor_qos", "output_qos", "latched_qos", "volatile_info_qos"]


def sensor_qos(depth: int = 50) -> QoSProfile:
    """Microphone input: best effort, volatile, keep last ``depth``."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(depth),
                      reliability=ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.VOLATILE)


def output_qos(depth: int = 100) -> QoSProfile:
    """Outputs: reliable, volatile, keep last ``depth``."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(depth),
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def latched_qos() -> QoSProfile:
    """Static stream descriptions: reliable, transient local, keep last 1."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def volatile_info_qos() -> QoSProfile:
    """Second AudioInfo subscription for volatile (periodic) publishers."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)

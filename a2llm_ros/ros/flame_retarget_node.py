"""``flame_retarget_node``: FLAME frames -> robot face commands (sensor_msgs/JointState).

The mapping is a retarget YAML (:mod:`a2llm_ros.retarget`): a linear map from
the 58 FLAME values to named channels with per-channel limits, rate limits,
one-pole smoothing and an actuator-latency lead.  Presets (``preset``):

* ``arkit52`` -- the 52 ARKit blendshapes, ``name`` = blendshape, ``position``
  = weight 0..1;
* ``servo_head`` -- a 13-servo animatronic head, ``position`` in radians.

Each incoming FLAME frame (``FlameChunk`` on ``input_topic``) gives one
JointState stamped ``frame stamp - latency_lead_s``.  With ``publish_mode``
``scheduled`` (default) a command is published when the ROS clock reaches its
stamp, i.e. ``latency_lead_s`` before the frame is due, so a controller that
acts on arrival moves the actuators in time; ``immediate`` publishes on
arrival.  On an ``interrupted`` ConversationState, commands not yet published
are dropped (``flush_on_interrupt``).  Frames older than the last one handled
are skipped; a jump back of more than 1 s (bag loop) resets the filter.
"""
from __future__ import annotations

import dataclasses
import sys
import threading
from typing import Optional

import numpy as np
from rclpy.node import Node

from a2llm_ros.configbase import ConfigBase, Bound, at_least
from a2llm_ros.constants import NS_PER_S
from a2llm_ros.retarget import RetargetConfig, RetargetConfigError, Retargeter
from a2llm_ros.ros import msgconv as mc
from a2llm_ros.conversation.output import PacedPublisher
from a2llm_ros.ros.params import ParameterBinding, ParamError
from a2llm_ros.paths import retarget_preset_file
from a2llm_ros.ros.qos import output_qos

__all__ = ["RetargetNodeParams", "FlameRetargetNode", "main", "load_mapping"]

NODE_NAME = "flame_retarget_node"
PUBLISH_MODES = ("scheduled", "immediate")
#: Largest overrides of the mapping file's smoothing time constant and latency lead (s).
MAX_SMOOTHING_TAU_S, MAX_LATENCY_LEAD_S = 10.0, 5.0
#: A stamp this far behind the last frame handled resets the filter (ns).
RESET_JUMP_NS = NS_PER_S
#: Parameters that may change while running (the mapping is reloaded).
LIVE = ("preset", "mapping_file", "smoothing_tau_s", "latency_lead_s", "publish_mode",
        "frame_id", "flush_on_interrupt")


@dataclasses.dataclass
class RetargetNodeParams(ConfigBase):
    """Parameters of ``flame_retarget_node``."""

    #: Retarget preset: config/retarget_<preset>.yaml (arkit52, servo_head).
    preset: str = "arkit52"
    #: A retarget YAML file; overrides ``preset`` when set.
    mapping_file: str = ""
    #: FlameChunk topic to retarget.
    input_topic: str = "flame/chunks"
    #: JointState topic of the robot face commands.
    output_topic: str = "face_commands"
    #: ConversationState topic watched for barge-in ("" = none).
    state_topic: str = "conversation_state"
    #: ``scheduled`` (each command published when the clock reaches its stamp, the
    #: frame's stamp minus the latency lead) or ``immediate`` (on arrival).
    publish_mode: str = "scheduled"
    #: ``header.frame_id`` of the JointState messages.
    frame_id: str = ""
    #: Override the file's smoothing time constant / latency lead (s); < 0 keeps the file's.
    smoothing_tau_s: float = -1.0
    #: Override the file's latency lead: commands leave this long before their stamp
    #: (s); < 0 keeps the file's.
    latency_lead_s: float = -1.0
    #: On barge-in (``interrupted`` state) drop the commands not yet sent.
    flush_on_interrupt: bool = True
    #: Depth of the subscriptions and the publisher.
    qos_depth: int = 50

    BOUNDS = {"smoothing_tau_s": Bound(high=MAX_SMOOTHING_TAU_S),
              "latency_lead_s": Bound(high=MAX_LATENCY_LEAD_S), "qos_depth": at_least(1)}

    def __post_init__(self):
        self.check_bounds()
        if self.publish_mode not in PUBLISH_MODES:
            raise ValueError(f"publish_mode must be one of {PUBLISH_MODES}, "
                             f"got {self.publish_mode!r}")
        if not self.input_topic or not self.output_topic:
            raise ValueError("input_topic and output_topic must not be empty")


def load_mapping(params: RetargetNodeParams) -> RetargetConfig:
    """The RetargetConfig named by ``params`` with its overrides; raises ParamError."""
    try:
        path = params.mapping_file or retarget_preset_file(params.preset)
        cfg = RetargetConfig.from_yaml(path)
        changes = {}
        if params.smoothing_tau_s >= 0:
            changes["smoothing_tau_s"] = float(params.smoothing_tau_s)
        if params.latency_lead_s >= 0:
            changes["latency_lead_s"] = float(params.latency_lead_s)
        return dataclasses.replace(cfg, **changes) if changes else cfg
    except (OSError, RetargetConfigError, ValueError, TypeError) as err:
        raise ParamError(f"cannot load the retarget mapping: {err}") from err


class FlameRetargetNode(Node):
    """FLAME -> JointState commands (see module docstring)."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        self._lock = threading.Lock()
        self.params = ParameterBinding(self, RetargetNodeParams(), live=LIVE,
                                       locked=lambda: True, on_live_change=self._on_live,
                                       validate=load_mapping,
                                       frozen_hint="restart the node to change topics")
        try:
            self.cfg = self.params.config()
            mapping = load_mapping(self.cfg)
        except ParamError as err:
            self.get_logger().error(f"{err}; falling back to the arkit52 preset")
            self.cfg = RetargetNodeParams()
            mapping = load_mapping(self.cfg)
        self._set_mapping(mapping)
        from a2llm_ros.msg import ConversationState, FlameChunk
        from sensor_msgs.msg import JointState
        depth = self.cfg.qos_depth
        self.pub = self.create_publisher(JointState, self.cfg.output_topic, output_qos(depth))
        self.sub = self.create_subscription(FlameChunk, self.cfg.input_topic, self._on_chunk,
                                            output_qos(depth))
        self.state_sub = None
        if self.cfg.state_topic:
            self.state_sub = self.create_subscription(
                ConversationState, self.cfg.state_topic, self._on_state, output_qos(10))
        self.pacer = PacedPublisher(lambda: self.get_clock().now().nanoseconds,
                                    self.pub.publish, on_error=self._pacer_error)
        self.frames_in = 0
        self.get_logger().info(f"retargeting to {self.retargeter.config.name!r} "
                               f"({len(self.retargeter.channels)} channels) on "
                               f"{self.pub.topic_name}")

    # ------------------------------------------------------------------ mapping
    def _set_mapping(self, mapping: RetargetConfig) -> None:
        with self._lock:
            self.retargeter = Retargeter(mapping)
            self._last_ns: Optional[int] = None

    def _on_live(self, cfg: RetargetNodeParams, names) -> None:
        mapping = load_mapping(cfg)
        self.cfg = cfg
        self._set_mapping(mapping)
        self.get_logger().info(f"mapping now {mapping.name!r} (changed: {', '.join(names)})")

    def _pacer_error(self, err: BaseException) -> None:
        if self.context.ok():
            self.get_logger().warning(f"publishing a face command failed: {err!r}")

    # ------------------------------------------------------------------ callbacks
    def _on_state(self, msg) -> None:
        if self.cfg.flush_on_interrupt and msg.state == msg.INTERRUPTED:
            self.pacer.flush_after(self.get_clock().now().nanoseconds)

    def _on_chunk(self, msg) -> None:
        frames, stamps = mc.frames_from_chunk(msg)  # [n, 58], [n] ns
        with self._lock:
            frames, stamps = self._fresh(frames, stamps)
            if not len(frames):
                return
            positions, cmd_s = self.retargeter.process(frames, stamps / NS_PER_S)
            lead_ns = int(round(self.retargeter.config.latency_lead_s * NS_PER_S))
            self._last_ns = int(stamps[-1])
        self.frames_in += len(frames)
        names = self.retargeter.channels
        for pos, stamp in zip(positions, stamps):
            cmd_ns = int(stamp) - lead_ns
            joint = mc.joint_state_msg(names, pos, cmd_ns, self.cfg.frame_id)
            if self.cfg.publish_mode == "immediate":
                self.pub.publish(joint)
            else:
                self.pacer.push(cmd_ns, joint)

    def _fresh(self, frames: np.ndarray, stamps: np.ndarray):
        """Drop frames not after the last one handled; reset on a large jump back."""
        if self._last_ns is None:
            return frames, stamps
        if stamps[0] < self._last_ns - RESET_JUMP_NS:
            self.retargeter.reset()
            return frames, stamps
        keep = stamps > self._last_ns
        return frames[keep], stamps[keep]

    def destroy_node(self):
        if getattr(self, "_destroyed", False):
            return None
        self._destroyed = True
        self.pacer.close()
        return super().destroy_node()


def main(argv=None) -> int:
    """``ros2 run a2llm_ros flame_retarget_node``."""
    from a2llm_ros.ros.spin import spin_node
    return spin_node(FlameRetargetNode, argv)


if __name__ == "__main__":
    sys.exit(main())

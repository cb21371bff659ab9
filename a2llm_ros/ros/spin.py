"""``main()`` of a single-node executable: init, spin until Ctrl-C / shutdown, clean up."""
from __future__ import annotations

from typing import Callable

import rclpy


def spin_node(make_node: Callable[[], "rclpy.node.Node"], argv=None) -> int:
    """Create the node after ``rclpy.init``, spin it, destroy it and shut down; returns 0."""
    from rclpy.executors import ExternalShutdownException
    rclpy.init(args=argv)
    node = make_node()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0

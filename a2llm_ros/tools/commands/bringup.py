"""``a2llm bringup``: the whole ROS 2 graph in one process
(see :mod:`a2llm_ros.tools.rosgraph.bringup`)."""
from __future__ import annotations

import argparse

HELP = "start a2llm_node (+ retarget / preview nodes) in one process with a parameter file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from a2llm_ros.tools.rosgraph.bringup import add_arguments as add
    add(parser)


def run(args) -> int:
    try:
        from a2llm_ros.tools.rosgraph.bringup import run as run_bringup
    except ImportError as exc:
        print(f"a2llm bringup needs rclpy and the built interfaces ({exc}); "
              "run it inside `make shell` or a sourced ROS 2 workspace")
        return 2
    return run_bringup(args)

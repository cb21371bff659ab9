"""``main()`` of the node executables: process options, init, spin until SIGINT/SIGTERM,
clean up, exit fast.

Options before ``--ros-args`` belong to the process, not to a node (several nodes may
share a process, e.g. ``a2llm bringup``):

* ``--gil-switch-interval-ms MS`` — Python's GIL switch interval (default
  :data:`DEFAULT_GIL_SWITCH_MS`; 0 keeps Python's 5 ms).  The generator thread runs
  many short torch ops and waits for the GIL after each one while the executor and
  clock threads run Python; at 5 ms a turn's first audio came 12x later than in-process.

rclpy turns SIGINT and SIGTERM into a context shutdown; the node's cleanup runs, rclpy
shuts down, then the process ends with ``os._exit``: Python's own finalisation of the
torch and DDS modules took 0.5-0.7 s of the 2 s a launch system waits before escalating
(measured 2026-12-05, 2-core machine).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, List, Optional, Sequence

import rclpy

#: GIL switch interval the executables set unless told otherwise (ms).
DEFAULT_GIL_SWITCH_MS = 0.5
#: Largest accepted switch interval (ms).
MAX_GIL_SWITCH_MS = 100.0
#: The spin loop checks the context at least this often (s).
SPIN_POLL_S = 0.1
#: How long an executor error may precede the signal's context shutdown, and how often
#: :func:`shutting_down` looks (s).
SHUTDOWN_GRACE_S = 0.5
SHUTDOWN_POLL_S = 0.01


def process_options(argv: Sequence[str]) -> argparse.Namespace:
    """The process options among ``argv`` (ROS arguments are ignored here)."""
    from rclpy.utilities import remove_ros_args
    parser = argparse.ArgumentParser(prog=os.path.basename(argv[0]) if argv else "node",
                                     description="a2llm_ros node executable")
    parser.add_argument("--gil-switch-interval-ms", type=float, default=DEFAULT_GIL_SWITCH_MS,
                        help="Python's GIL switch interval for this process "
                             f"(default {DEFAULT_GIL_SWITCH_MS}; 0 keeps Python's 5 ms)")
    opts = parser.parse_args(list(remove_ros_args(list(argv)))[1:])
    if not 0 <= opts.gil_switch_interval_ms <= MAX_GIL_SWITCH_MS:
        parser.error(f"--gil-switch-interval-ms must be in [0, {MAX_GIL_SWITCH_MS:g}]")
    return opts


def apply_process_options(opts: argparse.Namespace) -> None:
    """Set what the options ask of the process."""
    if opts.gil_switch_interval_ms > 0:
        sys.setswitchinterval(opts.gil_switch_interval_ms / 1000.0)


def run_executable(make_node: Callable[[], "rclpy.node.Node"],
                   argv: Optional[List[str]] = None,
                   cleanup: Optional[Callable[[object], None]] = None) -> int:
    """Options, ``rclpy.init``, one node on a single-threaded executor until shutdown,
    ``cleanup(node)``, destroy, ``rclpy.try_shutdown``; returns 0."""
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    args = list(sys.argv if argv is None else argv)
    apply_process_options(process_options(args))
    rclpy.init(args=args)
    node = None
    executor = SingleThreadedExecutor()
    try:
        node = make_node()
        executor.add_node(node)
        # spin_once with a timeout, not spin(): a shutdown whose wake-up of the wait
        # set is lost (seen about once in 20 signals, the process then hung in its wait
        # set) still ends the loop within SPIN_POLL_S.
        while rclpy.ok():
            executor.spin_once(timeout_sec=SPIN_POLL_S)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:  # noqa: BLE001
        # A signal that shuts the context down while the node is built or the executor
        # builds its wait set surfaces as RCLError ("the given context is not valid"); one
        # that interrupts a message conversion as a RuntimeError from pybind11 ("Unable to
        # convert call argument"), a moment before rclpy's handler shuts the context down.
        # Both are still a shutdown.  Anything else is a real failure.
        if not shutting_down():
            raise
    finally:
        if node is not None:
            if cleanup is not None:
                cleanup(node)
            node.destroy_node()
        executor.shutdown()
        rclpy.try_shutdown()
    return 0


def shutting_down(grace_s: float = SHUTDOWN_GRACE_S) -> bool:
    """Whether the default context is shut down, or is within ``grace_s`` (a signal's
    handler shuts it down a moment after the signal interrupted the executor)."""
    deadline = time.monotonic() + grace_s
    while rclpy.ok():
        if time.monotonic() >= deadline:
            return False
        time.sleep(SHUTDOWN_POLL_S)
    return True


def exit_now(code: int) -> None:
    """Flush the standard streams and end the process without Python's finalisation."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def spin_node(make_node: Callable[[], "rclpy.node.Node"], argv=None,
              exit_process: bool = True) -> int:
    """``main()`` of a single-node executable (see the module docstring)."""
    code = run_executable(make_node, argv)
    if exit_process:
        exit_now(code)
    return code

"""All a2llm_ros nodes in one process (``a2llm bringup``), as ``launch/a2llm.launch.py``.

The same parameter file (``--config``, default ``config/a2llm.yaml``) is
passed to the nodes with ``--params-file``, and the launch arguments become
options with the same meaning (a given option overrides the file, like a
launch argument)::

    launch argument   bringup option       parameter
    params_file       --config             (all nodes' parameter file)
    turn_params_file  --turn-config        (a2llm_node's second file)
    namespace         --namespace          (all nodes' namespace)
    mic_topic         --mic-topic          a2llm_node audio.topic
    backend           --backend            a2llm_node backend.kind
    checkpoint        --checkpoint         a2llm_node model.checkpoint
    engine_path       --engine-path        a2llm_node backend.engine_file_path
    use_sim_time      --use-sim-time       use_sim_time (all nodes)
    autostart         --no-autostart       a2llm_node autostart
    retarget          --no-retarget        (start flame_retarget_node)
    retarget_preset   --retarget-preset    flame_retarget_node preset
    preview           --preview            (start face_preview_node)
    preview_model     --preview-model      face_preview_node model

Nodes spin in a ``MultiThreadedExecutor``; the a2llm node's timing-critical
work runs in its own threads anyway.  ``face_preview_node`` (``--preview``)
runs in a child process of its own by default (``--preview-process own``), as
the launch file runs it: in the model's process its mesh work and its large
marker messages made speech and FLAME reach another process up to 4 s late
(2-core machine, 2026-12-05; README, "One process vs one process per node").
``--preview-process shared`` keeps every node in this process.
"""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from typing import Dict, List, Optional

__all__ = ["add_arguments", "ros_arguments", "node_overrides", "create_nodes", "run", "main",
           "LAUNCH_TO_OPTION", "preview_command"]

DEFAULT_CONFIG = "a2llm.yaml"
#: Where ``--preview`` runs face_preview_node: a child process, or this process.
PREVIEW_PROCESSES = ("own", "shared")
#: Seconds the preview child has to exit after SIGINT before it is killed.
CHILD_EXIT_S = 1.5
#: launch argument -> bringup option (dest names); a test keeps both in sync.
LAUNCH_TO_OPTION = {
    "namespace": "namespace", "mic_topic": "mic_topic", "backend": "backend",
    "checkpoint": "checkpoint", "engine_path": "engine_path", "use_sim_time": "use_sim_time",
    "autostart": "autostart", "retarget": "retarget", "retarget_preset": "retarget_preset",
    "preview": "preview", "preview_model": "preview_model", "params_file": "config",
    "turn_params_file": "turn_config",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help="ROS 2 parameter file (a path, or a name in config/; "
                             "default a2llm.yaml)")
    parser.add_argument("--turn-config", dest="turn_config", default=None,
                        help="second parameter file, read after --config (a path, or a name "
                             "in config/: fast_turns.yaml for fast turn-taking)")
    parser.add_argument("--namespace", default="", help="namespace of every node")
    parser.add_argument("--mic-topic", dest="mic_topic", default=None,
                        help="microphone topic (a2llm_node audio.topic)")
    parser.add_argument("--backend", default=None,
                        choices=("auto", "torch", "onnxruntime", "tensorrt"),
                        help="engine kind (a2llm_node backend.kind)")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint directory or 'default' (model.checkpoint)")
    parser.add_argument("--engine-path", dest="engine_path", default=None,
                        help="TensorRT engine directory (backend.engine_file_path)")
    parser.add_argument("--use-sim-time", dest="use_sim_time", action="store_true",
                        help="use /clock (e.g. with a bag)")
    parser.add_argument("--no-autostart", dest="autostart", action="store_false",
                        help="leave a2llm_node unconfigured (drive it with ros2 lifecycle)")
    parser.add_argument("--no-retarget", dest="retarget", action="store_false",
                        help="do not start flame_retarget_node")
    parser.add_argument("--retarget-preset", dest="retarget_preset", default=None,
                        help="retarget preset (arkit52, servo_head)")
    parser.add_argument("--preview", action="store_true", help="start face_preview_node")
    parser.add_argument("--preview-model", dest="preview_model", default=None,
                        help="FLAME model of the preview ('generated', .npz, FLAME dir)")
    parser.add_argument("--preview-process", dest="preview_process", default="own",
                        choices=PREVIEW_PROCESSES,
                        help="own (default): face_preview_node in a child process, as the "
                             "launch file runs it; shared: in this process")
    parser.add_argument("--ros-args", dest="ros_args", nargs=argparse.REMAINDER, default=[],
                        help="extra ROS arguments (remaps, log level...)")


def ros_arguments(args) -> List[str]:
    """Global ROS arguments: parameter file, namespace, use_sim_time, extras."""
    from a2llm_ros.paths import config_file
    out = ["--ros-args", "--params-file", config_file(args.config)]
    if getattr(args, "turn_config", None):
        out += ["--params-file", config_file(args.turn_config)]
    if args.namespace:
        ns = args.namespace if args.namespace.startswith("/") else "/" + args.namespace
        out += ["-r", f"__ns:={ns}"]
    if args.use_sim_time:
        out += ["-p", "use_sim_time:=true"]
    extra = [a for a in (args.ros_args or []) if a != "--ros-args"]
    return out + extra


def node_overrides(args) -> Dict[str, Dict[str, object]]:
    """Per-node parameter overrides from the options that were given."""
    a2llm: Dict[str, object] = {"autostart": bool(args.autostart)}
    for option, name in (("mic_topic", "audio.topic"), ("backend", "backend.kind"),
                         ("checkpoint", "model.checkpoint"),
                         ("engine_path", "backend.engine_file_path")):
        value = getattr(args, option, None)
        if value is not None:
            a2llm[name] = value
    retarget = {"preset": args.retarget_preset} if args.retarget_preset else {}
    preview = {"model": args.preview_model} if args.preview_model else {}
    return {"a2llm_node": a2llm, "flame_retarget_node": retarget,
            "face_preview_node": preview}


def create_nodes(args, context=None) -> list:
    """Construct the enabled nodes in ``context`` (rclpy must be initialised)."""
    from rclpy.parameter import Parameter

    from a2llm_ros.ros.a2llm_node import A2llmNode
    overrides = node_overrides(args)

    def params(name):
        return [Parameter(k, value=v) for k, v in overrides[name].items()]

    nodes = [A2llmNode(context=context, parameter_overrides=params("a2llm_node"))]
    if args.retarget:
        from a2llm_ros.ros.flame_retarget_node import FlameRetargetNode
        nodes.append(FlameRetargetNode(context=context,
                                       parameter_overrides=params("flame_retarget_node")))
    if args.preview and getattr(args, "preview_process", "own") == "shared":
        from a2llm_ros.ros.face_preview_node import FacePreviewNode
        nodes.append(FacePreviewNode(context=context,
                                     parameter_overrides=params("face_preview_node")))
    return nodes


def preview_command(args, ros_args: List[str]) -> List[str]:
    """argv of the preview's child process: its executable's module with the same ROS
    arguments, and its overrides as ``-p`` arguments."""
    over = node_overrides(args)["face_preview_node"]
    return ([sys.executable, "-m", "a2llm_ros.ros.face_preview_node"] + ros_args
            + [a for k, v in over.items() for a in ("-p", f"{k}:={v}")])


def start_preview(args, ros_args: List[str]) -> Optional[subprocess.Popen]:
    """The preview's child process (``--preview``, ``--preview-process own``), else None."""
    if not args.preview or getattr(args, "preview_process", "own") != "own":
        return None
    return subprocess.Popen(preview_command(args, ros_args), stdin=subprocess.DEVNULL)


def stop_child(child: Optional[subprocess.Popen]) -> None:
    """SIGINT the child, then kill it after :data:`CHILD_EXIT_S`."""
    if child is None or child.poll() is not None:
        return
    child.send_signal(signal.SIGINT)
    try:
        child.wait(timeout=CHILD_EXIT_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def destroy_nodes(nodes) -> None:
    """Destroy the nodes (each stops its own threads first)."""
    for node in nodes:
        node.destroy_node()


def run(args) -> int:
    """Start the graph and spin until Ctrl-C."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
    try:
        ros_args = ros_arguments(args)
    except FileNotFoundError as err:
        print(f"a2llm bringup: {err}", file=sys.stderr)
        return 2
    from a2llm_ros.flame.preview_mesh import set_blas_threads
    from a2llm_ros.ros.spin import DEFAULT_GIL_SWITCH_MS, SPIN_POLL_S
    sys.setswitchinterval(DEFAULT_GIL_SWITCH_MS / 1000.0)  # as the node executables do
    # numpy's OpenBLAS threads spin between the preview's small matrix products and
    # starved the model's threads (outputs up to 2.6 s late with the preview on, 2 cores)
    set_blas_threads(1)
    rclpy.init(args=ros_args)
    nodes: list = []
    child: Optional[subprocess.Popen] = None
    executor = MultiThreadedExecutor()
    try:
        nodes = create_nodes(args)
        for node in nodes:
            executor.add_node(node)
        child = start_preview(args, ros_args)
        names = [n.get_fully_qualified_name() for n in nodes]
        names += [f"face_preview_node (process {child.pid})"] if child else []
        print(f"a2llm bringup: {', '.join(names)} with {ros_args[2]}")
        while rclpy.ok():  # a lost shutdown wake-up cannot hang the loop (see ros/spin.py)
            executor.spin_once(timeout_sec=SPIN_POLL_S)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:  # noqa: BLE001
        if rclpy.ok():  # the context shut down under the executor: a shutdown
            raise
    finally:
        stop_child(child)
        executor.shutdown()
        destroy_nodes(nodes)
        rclpy.try_shutdown()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="a2llm bringup", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

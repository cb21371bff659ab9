"""Start the a2llm_ros graph: a2llm_node (+ flame_retarget_node, face_preview_node).

    ros2 launch a2llm_ros a2llm.launch.py mic_topic:=/audio/audio_stamped \
        backend:=tensorrt checkpoint:=/path/to/ckpt preview:=true

Every node reads ``params_file`` (default config/a2llm.yaml); a2llm_node then
reads ``turn_params_file`` (default: the same file; ``config/fast_turns.yaml``
for fast turn-taking, docs/latency.md); the arguments below override single
parameters.  ``a2llm bringup`` starts the same nodes
with the same parameters in one process (its options mirror these arguments).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

PACKAGE = "a2llm_ros"

#: name -> (default, description)
ARGUMENTS = {
    "namespace": ("", "namespace of every node"),
    "params_file": (PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "a2llm.yaml"]),
                    "ROS 2 parameter file of all nodes"),
    "turn_params_file": (LaunchConfiguration("params_file"),
                         "second parameter file of a2llm_node, e.g. config/fast_turns.yaml"),
    "mic_topic": ("/audio/audio_stamped", "microphone topic (a2llm_node audio.topic)"),
    "backend": ("auto", "engine kind: auto, torch, onnxruntime or tensorrt"),
    "checkpoint": ("default", "checkpoint directory, or 'default'"),
    "engine_path": ("", "TensorRT engine directory (empty: <checkpoint>/tensorrt)"),
    "use_sim_time": ("false", "use /clock (e.g. with a bag)"),
    "autostart": ("true", "a2llm_node configures and activates itself"),
    "retarget": ("true", "start flame_retarget_node"),
    "retarget_preset": ("arkit52", "retarget preset: arkit52 or servo_head"),
    "preview": ("false", "start face_preview_node (RViz mesh)"),
    "preview_model": ("generated", "FLAME model of the preview: generated, .npz or FLAME dir"),
}


def generate_launch_description():
    args = [DeclareLaunchArgument(name, default_value=default, description=text)
            for name, (default, text) in ARGUMENTS.items()]
    params_file = LaunchConfiguration("params_file")
    turn_params_file = LaunchConfiguration("turn_params_file")
    use_sim_time = ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)
    a2llm = LifecycleNode(
        package=PACKAGE, executable="a2llm_node", name="a2llm_node",
        namespace=LaunchConfiguration("namespace"), output="screen",
        parameters=[params_file, turn_params_file, {
            "use_sim_time": use_sim_time,
            "autostart": ParameterValue(LaunchConfiguration("autostart"), value_type=bool),
            "audio.topic": ParameterValue(LaunchConfiguration("mic_topic"), value_type=str),
            "backend.kind": ParameterValue(LaunchConfiguration("backend"), value_type=str),
            "model.checkpoint": ParameterValue(LaunchConfiguration("checkpoint"),
                                               value_type=str),
            "backend.engine_file_path": ParameterValue(LaunchConfiguration("engine_path"),
                                                       value_type=str),
        }])
    retarget = Node(
        package=PACKAGE, executable="flame_retarget_node", name="flame_retarget_node",
        namespace=LaunchConfiguration("namespace"), output="screen",
        condition=IfCondition(LaunchConfiguration("retarget")),
        parameters=[params_file, {
            "use_sim_time": use_sim_time,
            "preset": ParameterValue(LaunchConfiguration("retarget_preset"), value_type=str),
        }])
    preview = Node(
        package=PACKAGE, executable="face_preview_node", name="face_preview_node",
        namespace=LaunchConfiguration("namespace"), output="screen",
        condition=IfCondition(LaunchConfiguration("preview")),
        parameters=[params_file, {
            "use_sim_time": use_sim_time,
            "model": ParameterValue(LaunchConfiguration("preview_model"), value_type=str),
        }])
    return LaunchDescription(args + [a2llm, retarget, preview])

"""Replay a recorded microphone bag into the a2llm_ros graph.

    ros2 launch a2llm_ros replay.launch.py bag:=/path/to/bag [use_sim_time:=true]

Includes a2llm.launch.py (the arguments in FORWARDED pass through) and runs
``a2llm bag play <bag>`` from the package's lib directory, after ``delay``
seconds (model loading) and once the graph subscribes; with
``use_sim_time:=true`` the player also publishes /clock from the bag time.
The bag's audio topic must match ``mic_topic`` (the fixture bags use
/audio/audio_stamped with /audio/audio_info).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription
from launch.conditions import IfCondition, UnlessCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackagePrefix, FindPackageShare

PACKAGE = "a2llm_ros"

#: name -> (default, description)
ARGUMENTS = {
    "bag": ("", "rosbag2 directory to play (required)"),
    "rate": ("1.0", "playback speed factor"),
    "delay": ("5.0", "seconds to wait before playing (model loading)"),
    "namespace": ("", "namespace of every node"),
    "mic_topic": ("/audio/audio_stamped", "microphone topic recorded in the bag"),
    "backend": ("auto", "engine kind: auto, torch, onnxruntime or tensorrt"),
    "checkpoint": ("default", "checkpoint directory, or 'default'"),
    "use_sim_time": ("false", "nodes follow /clock, which the player publishes"),
    "retarget": ("true", "start flame_retarget_node"),
    "preview": ("false", "start face_preview_node (RViz mesh)"),
}
#: Arguments handed to the included a2llm.launch.py.
FORWARDED = ("namespace", "mic_topic", "backend", "checkpoint", "use_sim_time", "retarget",
             "preview")


def _player(use_clock: bool):
    cmd = [PathJoinSubstitution([FindPackagePrefix(PACKAGE), "lib", PACKAGE, "a2llm"]),
           "bag", "play", LaunchConfiguration("bag"),
           "--rate", LaunchConfiguration("rate"), "--delay", LaunchConfiguration("delay"),
           "--wait-for-subscribers", "10"]
    condition = IfCondition if use_clock else UnlessCondition
    return ExecuteProcess(cmd=cmd + (["--clock"] if use_clock else []), output="screen",
                          condition=condition(LaunchConfiguration("use_sim_time")))


def generate_launch_description():
    args = [DeclareLaunchArgument(name, default_value=default, description=text)
            for name, (default, text) in ARGUMENTS.items()]
    graph = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(
            PathJoinSubstitution([FindPackageShare(PACKAGE), "launch", "a2llm.launch.py"])),
        launch_arguments={name: LaunchConfiguration(name) for name in FORWARDED}.items())
    return LaunchDescription(args + [graph, _player(False), _player(True)])

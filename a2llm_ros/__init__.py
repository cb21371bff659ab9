"""a2llm_ros: A²-LLM (conversational audio avatar LLM) for ROS 2.

The pure-Python core (model, tokenizers, generation, engines, data, metrics)
lives in this package and never imports ``rclpy``; the ROS 2 nodes live in
``a2llm_ros.ros`` and are thin adapters around the core.

When the package is built with colcon, the rosidl-generated message module
``a2llm_ros.msg`` is installed into the install space's copy of this package.
``__path__`` is extended so that ``a2llm_ros.msg`` is found from a source
checkout too.
"""
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)  # noqa: F821 (module global)

__version__ = "0.1.0"

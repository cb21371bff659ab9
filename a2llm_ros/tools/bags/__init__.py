"""rosbag2 files for a2llm_ros, written and read without rclpy.

Built on the pure-Python ``rosbags`` library:

* :mod:`~a2llm_ros.tools.bags.types` -- typestores with the project's messages and
  either flavour of ``audio_common_msgs`` (ros-drivers 0.4.x or mgonzs13 4.x).
* :mod:`~a2llm_ros.tools.bags.io` -- :class:`~a2llm_ros.tools.bags.io.BagWriter` (MCAP or
  sqlite3, rosbag2 ``metadata.yaml``, embedded message definitions, offered
  QoS per topic) and :func:`~a2llm_ros.tools.bags.io.read_bag`.
* :mod:`~a2llm_ros.tools.bags.fixtures` -- deterministic test/demo bags with JSON
  sidecars (speech by espeak-ng, several sample formats, a malformed stream).
* :mod:`~a2llm_ros.tools.bags.export` -- audio topic -> WAV, FLAME topic -> NPZ.

Live record/play against a running ROS graph lives in the ROS layer, not here.
"""

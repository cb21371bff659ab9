"""ROS 2 layer of a2llm_ros: thin nodes around the ROS-free core.

Modules (only this sub-package imports ``rclpy`` and message packages):

* :mod:`.a2llm_node` -- lifecycle node: microphone in, speech + FLAME out.
* :mod:`.flame_retarget_node` -- FLAME -> robot face commands (JointState).
* :mod:`.face_preview_node` -- FLAME -> RViz ``Marker`` triangle mesh.
* :mod:`.bringup` -- all nodes in one process (``a2llm bringup``).
* :mod:`.spin` -- ``main()`` helper of the single-node executables.
* :mod:`.params` -- config dataclasses <-> ROS parameters, with validation.
* :mod:`.msgconv` -- message <-> numpy conversions.
* :mod:`.qos` -- the QoS profile of every topic.
* :mod:`.paths` -- where config/ and launch/ are (install share or checkout).
* :mod:`.bag_play`, :mod:`.bag_record` -- ``a2llm bag play|record``.
* :mod:`.graph_run` -- the whole graph in one process fed by a bag (demo,
  ``a2llm bench --graph``, fault-matrix tests).

Nothing is imported here, so ``import a2llm_ros.ros`` stays cheap.
"""

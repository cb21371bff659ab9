"""ROS graphs started by the tools: ``a2llm bringup``, bag record/play, and the in-process
graph runner behind ``a2llm demo`` and ``a2llm bench --graph``."""

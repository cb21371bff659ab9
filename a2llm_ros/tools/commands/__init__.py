"""Verbs of the ``a2llm`` command (see :mod:`a2llm_ros.tools.cli`)."""

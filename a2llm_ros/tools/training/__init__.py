"""Training curriculum of A²-LLM (stages 0-3), see :mod:`a2llm_ros.tools.training.stages`."""

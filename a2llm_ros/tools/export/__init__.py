"""ONNX export of every model graph (the wrappers in ``graphs``) and its parity checks.

The export directory's format and names are in :mod:`a2llm_ros.engines.manifest`, which the
runtime reads; building TensorRT plans from it is runtime
(:mod:`a2llm_ros.engines.tensorrt_build`), since a plan is built on the robot's own GPU."""

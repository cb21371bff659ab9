"""Demo outputs that need no ROS: the lip-sync preview image and the latency report.

* :mod:`~a2llm_ros.tools.demo.preview` -- ``preview.png``: rendered FLAME face frames
  over the waveform and the jaw-opening curves (matplotlib, Agg).
* :mod:`~a2llm_ros.tools.demo.report` -- ``latency.md``: markdown tables of per-turn
  latencies with summary rows.

Nothing is imported here, so ``import a2llm_ros.tools.demo`` stays cheap.
"""

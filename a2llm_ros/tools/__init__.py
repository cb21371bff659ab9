"""The tools around what a robot runs: the ``a2llm`` command line and what it drives.

Nothing in the runtime (``model``, ``generation``, ``engines``, ``audio``,
``conversation``, ``flame``, ``retarget``, ``ros``) imports this package; the
layering contract in ``.importlinter`` (run by ``make test``) enforces it.

=============  =================================================================
``cli``        ``a2llm`` entry point; one module per sub-command in ``commands``
``training``   the curriculum (stages 0-3), memory estimate, distributed runs
``data``       FLAME-QA synthesis and import, speech targets, fixtures
``evaluation`` face metrics (``metrics``), answer judging (``asr``), eval tables
``export``     ONNX export of every graph and its parity checks
``bench``      model, codec, engine, turn-taking and whole-graph benchmarks
``rosgraph``   bringup, bag record/play, the in-process graph runner (demo, bench)
``bags``       MCAP/rosbag2 reading, writing, fixtures and export
``demo``       ``a2llm demo`` report and preview
``render``     software face renderer (images, H.264 video)
``doctor``     environment and checkpoint diagnosis
=============  =================================================================
"""

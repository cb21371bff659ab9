"""Offline rendering of FLAME frames: images and videos of the talking face (a tool).

* :mod:`~a2llm_ros.tools.render.raster` -- a numpy software rasterizer (z-buffer,
  smooth shading from vertex normals) of :class:`~a2llm_ros.flame.mesh.FlameMesh`
  vertices with the materials of :mod:`a2llm_ros.flame.appearance`; used by
  ``preview.png`` and the videos.
* :mod:`~a2llm_ros.tools.render.timeline` -- FLAME frames and audio on one timeline
  (a ``flame.npz`` + WAV pair, or a recorded bag): which FLAME frame each video
  frame shows.
* :mod:`~a2llm_ros.tools.render.video` -- H.264 + AAC MP4 through ffmpeg (the binary
  of the ``imageio-ffmpeg`` wheel, else one on PATH), and a stream probe.

Not part of what a robot runs: the nodes never import this package
(``.importlinter``).  Nothing is imported here, so ``import a2llm_ros.tools.render``
stays cheap.
"""

"""Talking-face videos: rendered FLAME frames + the speech, H.264/AAC in an MP4.

:func:`render_video` renders a :class:`~a2llm_ros.tools.render.timeline.Clip` frame
by frame (:class:`~a2llm_ros.tools.render.raster.FaceRenderer`, a tqdm progress bar)
into an ffmpeg process that encodes H.264 (``libx264``, ``yuv420p``, plays in
any player) and muxes the clip's audio as AAC; the video has
``ceil(N * fps / sample_rate)`` frames for ``N`` audio samples, so both
streams last the same to within one frame plus the AAC padding.

ffmpeg is the binary shipped in the ``imageio-ffmpeg`` wheel
(requirements.txt; ``IMAGEIO_FFMPEG_EXE`` overrides it), else ``ffmpeg`` on
PATH.  :func:`probe` reads back the streams (codec, frame count, duration)
with the same binary (the wheel has no ffprobe).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np

#: Video size (pixels, square; a multiple of 16 for H.264) and encoder settings.
DEFAULT_SIZE = 448
DEFAULT_CRF = 20
DEFAULT_PRESET = "veryfast"
AUDIO_BITRATE = "128k"
INT16_SCALE = 32767.0
STDERR_TAIL = 2000


class FfmpegError(RuntimeError):
    """ffmpeg is missing or failed (the message holds the tail of its log)."""


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary (imageio-ffmpeg's, else PATH); FfmpegError if none."""
    try:
        import imageio_ffmpeg
        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        pass
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise FfmpegError("no ffmpeg: install the project's requirements (`make env`, "
                          "imageio-ffmpeg) or put ffmpeg on PATH")
    return exe


def _run(args: List[str]) -> str:
    """Run ffmpeg with ``args``; its stderr (FfmpegError on failure)."""
    res = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", *args],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise FfmpegError(f"ffmpeg {' '.join(args)} failed ({res.returncode}): "
                          f"{res.stderr[-STDERR_TAIL:]}")
    return res.stderr


@dataclass
class VideoReport:
    """What :func:`render_video` wrote."""

    path: Path
    n_frames: int
    fps: float
    size: Tuple[int, int]  # (width, height)
    audio_s: float

    @property
    def video_s(self) -> float:
        return self.n_frames / self.fps


def write_wav16(path, wave: np.ndarray, sample_rate: int) -> None:
    """Mono 16-bit PCM WAV of float ``wave`` [N] in [-1, 1]."""
    import soundfile
    pcm = np.clip(np.round(np.asarray(wave, np.float64) * INT16_SCALE), -INT16_SCALE - 1,
                  INT16_SCALE).astype(np.int16)
    soundfile.write(str(path), pcm, int(sample_rate), subtype="PCM_16")


def encode(images, n_frames: int, size: Tuple[int, int], fps: float, wave: np.ndarray,
           sample_rate: int, out, crf: int = DEFAULT_CRF, preset: str = DEFAULT_PRESET,
           progress: Optional[Callable[[int], None]] = None) -> int:
    """Encode ``n_frames`` RGB images [H, W, 3] uint8 (an iterable) + audio [N] to ``out``.

    Returns the number of frames written.
    """
    width, height = size
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="a2llm_render_") as tmp:
        wav = Path(tmp) / "audio.wav"
        write_wav16(wav, wave, sample_rate)
        log_path = Path(tmp) / "ffmpeg.log"
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", "-loglevel", "error",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
               "-r", f"{fps:g}", "-i", "-", "-i", str(wav), "-map", "0:v:0", "-map", "1:a:0",
               "-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p",
               "-c:a", "aac", "-b:a", AUDIO_BITRATE, "-movflags", "+faststart", str(out)]
        written = 0
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=log)
            try:
                for image in images:
                    if written == n_frames:
                        break
                    image = np.ascontiguousarray(image, np.uint8)
                    if image.shape != (height, width, 3):
                        raise ValueError(f"frame {written}: shape {image.shape}, expected "
                                         f"{(height, width, 3)}")
                    proc.stdin.write(image.tobytes())
                    written += 1
                    if progress is not None:
                        progress(1)
            except BrokenPipeError:
                pass
            finally:
                proc.stdin.close()
                rc = proc.wait()
        if rc != 0:
            raise FfmpegError(f"ffmpeg failed ({rc}) writing {out}: "
                              f"{log_path.read_text()[-STDERR_TAIL:]}")
    return written


def render_video(clip, out, mesh=None, size: int = DEFAULT_SIZE, supersample: int = 1,
                 bounds=None, progress: bool = True, crf: int = DEFAULT_CRF) -> VideoReport:
    """Render ``clip`` (:class:`~a2llm_ros.tools.render.timeline.Clip`) to an MP4 at ``out``.

    ``mesh``: a :class:`~a2llm_ros.flame.mesh.FlameMesh` (default: the generated
    head, or the FLAME model given to ``a2llm render --model``); ``bounds``: the
    view in metres (default: the head, framed over the whole clip).
    """
    from tqdm import tqdm

    from a2llm_ros.flame.mesh import FlameMesh
    from a2llm_ros.tools.render.raster import HEAD_DROP, HEAD_ZOOM, FaceRenderer, view_bounds

    frames = clip.video_frames()  # [K, D]
    if mesh is None:
        mesh = FlameMesh(layout=clip.layout)
    if bounds is None:
        every = np.unique(clip.frame_indices())
        step = max(1, len(every) // 200)  # frame the view on at most ~200 poses
        bounds = view_bounds(mesh, mesh.vertices(clip.frames[every[::step]]), HEAD_ZOOM,
                             HEAD_DROP)
    renderer = FaceRenderer(mesh, size, bounds, supersample)
    n = len(frames)
    with tqdm(total=n, desc=f"render {Path(out).name}", unit="frame",
              disable=not progress) as bar:
        written = encode(renderer.frames(frames), n, (renderer.width, renderer.height),
                         clip.fps, clip.wave, clip.sample_rate, out, crf=crf,
                         progress=bar.update)
    return VideoReport(Path(out), written, clip.fps, (renderer.width, renderer.height),
                       clip.duration_s)


@dataclass
class MediaInfo:
    """Streams of a media file as ffmpeg reads them."""

    streams: List[Tuple[str, str]] = field(default_factory=list)  # (kind, codec)
    video_frames: int = 0
    video_s: float = 0.0
    audio_s: float = 0.0
    fps: float = 0.0

    def codecs(self, kind: str) -> List[str]:
        return [codec for k, codec in self.streams if k == kind]


_STREAM = re.compile(r"Stream #\d+:\d+.*?: (Video|Audio): (\w+)")
_FPS = re.compile(r"([\d.]+) fps")
_TIME = re.compile(r"time=(\d+):(\d+):([\d.]+)")
_FRAME = re.compile(r"frame=\s*(\d+)")


def _last_time(log: str) -> float:
    hits = _TIME.findall(log)
    if not hits:
        return 0.0
    h, m, s = hits[-1]
    return int(h) * 3600 + int(m) * 60 + float(s)


def probe(path) -> MediaInfo:
    """Stream kinds and codecs, video frame count and duration, audio duration of ``path``.

    Durations are measured by demuxing each stream (``-c copy -f null``): the
    video's is frames / fps, the audio's the last packet's end.
    """
    path = str(path)
    res = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path],
                         capture_output=True, text=True)  # exits 1: no output file given
    info = MediaInfo(streams=[(k.lower(), c) for k, c in _STREAM.findall(res.stderr)])
    if not info.streams:
        raise FfmpegError(f"{path}: no streams ({res.stderr[-STDERR_TAIL:]})")
    if info.codecs("video"):
        log = _run(["-i", path, "-map", "0:v:0", "-c", "copy", "-f", "null", os.devnull])
        frames = _FRAME.findall(log)
        info.video_frames = int(frames[-1]) if frames else 0
        fps = [line for line in res.stderr.splitlines() if "Video:" in line]
        rate = _FPS.search(fps[0]) if fps else None
        info.fps = float(rate.group(1)) if rate else 0.0
        info.video_s = info.video_frames / info.fps if info.fps else _last_time(log)
    if info.codecs("audio"):
        log = _run(["-i", path, "-map", "0:a:0", "-f", "null", os.devnull])
        info.audio_s = _last_time(log)
    return info

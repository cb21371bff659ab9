"""Conversions between ROS messages and the core's numpy values.

Time stamps are integer nanoseconds on the node's ROS clock.  FLAME frames
are flat vectors in :class:`~a2llm_ros.flame.layout.FlameLayout` order
(expression, jaw, head rotation, eyelids).
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np
from builtin_interfaces.msg import Time
from std_msgs.msg import Header

from a2llm_ros.audio.frontend import AudioFormat, mgonzs13_field
from a2llm_ros.constants import FLAME_FPS, NS_PER_S, SAMPLE_RATE
from a2llm_ros.conversation.session import STATES
from a2llm_ros.flame.layout import DEFAULT_LAYOUT, N_EXPR_MAX, FlameLayout

__all__ = ["time_msg", "to_ns", "header", "layout_for", "flame_frame_msg", "flame_chunk_msg",
           "frame_vector", "frames_from_chunk", "pcm_encode", "audio_info_msg",
           "speech_audio_msgs", "ros_drivers_format", "mgonzs13_payload", "raw_bytes", "state_msg",
           "text_msg", "joint_state_msg", "STATE_CODES", "SOURCE_CODES"]

#: Session state name -> ConversationState constant value.
STATE_CODES = {name: code for code, name in enumerate(STATES)}
#: Session FLAME source -> FlameChunk.source value.
SOURCE_CODES = {"speech": 0, "listening": 1}


def time_msg(ns: int) -> Time:
    """builtin_interfaces/Time of ``ns`` nanoseconds (clamped at 0)."""
    sec, nanosec = divmod(max(0, int(ns)), NS_PER_S)
    return Time(sec=sec, nanosec=nanosec)


def to_ns(stamp) -> int:
    """Nanoseconds of a builtin_interfaces/Time."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def header(ns: int, frame_id: str) -> Header:
    return Header(stamp=time_msg(ns), frame_id=frame_id)


def layout_for(dim: int, version: int = DEFAULT_LAYOUT.version) -> FlameLayout:
    """Layout whose frame vector has ``dim`` values."""
    n_expr = dim - (DEFAULT_LAYOUT.dim - DEFAULT_LAYOUT.n_expr)
    if not 1 <= n_expr <= N_EXPR_MAX:
        raise ValueError(f"a FLAME frame vector of {dim} values has no layout")
    return FlameLayout(n_expr=n_expr, version=version)


# ----------------------------------------------------------------------------- FLAME

def flame_frame_msg(vec: np.ndarray, stamp_ns: int, turn_id: int, frame_id: str,
                    version: int = DEFAULT_LAYOUT.version):
    """FlameFrame of one frame vector ``[D]``."""
    from a2llm_ros.msg import FlameFrame
    layout = layout_for(len(vec), version)
    blocks = layout.split(np.asarray(vec, dtype=np.float32))
    return FlameFrame(header=header(stamp_ns, frame_id), flame_version=layout.version,
                      turn_id=int(turn_id), expression=blocks["expression"].tolist(),
                      jaw_pose=blocks["jaw_pose"].tolist(),
                      head_rotation=blocks["head_rotation"].tolist(),
                      eyelids=blocks["eyelids"].tolist(), eye_pose=[0.0] * 6)


def flame_chunk_msg(frames: np.ndarray, stamp_ns: int, turn_id: int, first_index: int,
                    source: str, frame_id: str, version: int = DEFAULT_LAYOUT.version):
    """FlameChunk of ``frames [n, D]``; frame i is stamped ``stamp_ns + i / 25 s``."""
    from a2llm_ros.msg import FlameChunk
    step = NS_PER_S // FLAME_FPS
    msgs = [flame_frame_msg(f, stamp_ns + i * step, turn_id, frame_id, version)
            for i, f in enumerate(frames)]
    return FlameChunk(header=header(stamp_ns, frame_id), frame_rate=float(FLAME_FPS),
                      turn_id=int(turn_id), first_frame_index=int(first_index),
                      source=SOURCE_CODES[source], frames=msgs)


def frame_vector(msg, n_expr: int = DEFAULT_LAYOUT.n_expr) -> np.ndarray:
    """FlameFrame -> ``[n_expr + 8]`` float32 (expression truncated/zero-padded)."""
    expr = np.zeros(n_expr, dtype=np.float32)
    got = np.asarray(msg.expression, dtype=np.float32)[:n_expr]
    expr[:len(got)] = got
    return np.concatenate([expr, np.asarray(msg.jaw_pose, np.float32),
                           np.asarray(msg.head_rotation, np.float32),
                           np.asarray(msg.eyelids, np.float32)])


def frames_from_chunk(msg, n_expr: int = DEFAULT_LAYOUT.n_expr
                      ) -> Tuple[np.ndarray, np.ndarray]:
    """FlameChunk -> (frames ``[n, n_expr + 8]``, stamps ``[n]`` int64 ns).

    A frame with a zero stamp is placed at ``header.stamp + i / frame_rate``.
    """
    rate = float(msg.frame_rate) if msg.frame_rate > 0 else float(FLAME_FPS)
    base = to_ns(msg.header.stamp)
    frames = np.zeros((len(msg.frames), n_expr + 8), dtype=np.float32)
    stamps = np.zeros(len(msg.frames), dtype=np.int64)
    for i, frame in enumerate(msg.frames):
        frames[i] = frame_vector(frame, n_expr)
        own = to_ns(frame.header.stamp)
        stamps[i] = own if own else base + int(round(i * NS_PER_S / rate))
    return frames, stamps


# ----------------------------------------------------------------------------- audio

def pcm_encode(samples: np.ndarray, sample_format: str) -> bytes:
    """Float ``[n]`` in [-1, 1] -> little-endian S16LE or F32LE bytes."""
    samples = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    if sample_format.upper() == "F32LE":
        return samples.astype("<f4").tobytes()
    return np.round(samples * 32767.0).astype("<i2").tobytes()


def audio_info_msg(sample_format: str = "S16LE", flavour: str = "ros_drivers",
                   sample_rate: int = SAMPLE_RATE):
    """ros-drivers AudioInfo of the speech output (mono PCM at ``sample_rate`` Hz)."""
    from audio_common_msgs.msg import AudioInfo
    fmt = sample_format.upper()
    bits = 32 if fmt == "F32LE" else 16
    return AudioInfo(channels=1, sample_rate=int(sample_rate), sample_format=fmt,
                     bitrate=int(sample_rate) * bits, coding_format="wave")


def speech_audio_msgs(flavour: str, samples: np.ndarray, stamp_ns: int, frame_id: str,
                      sample_format: str = "S16LE",
                      sample_rate: int = SAMPLE_RATE) -> Dict[str, object]:
    """Speech output messages of one piece of audio, keyed ``stamped`` / ``unstamped``.

    ros-drivers: AudioDataStamped and AudioData; mgonzs13: AudioStamped (its
    ``info`` carries the format, PortAudio code 8 = int16 or 1 = float32, and
    ``rate`` = ``sample_rate``).
    """
    import audio_common_msgs.msg as am
    fmt = sample_format.upper()
    if flavour == "mgonzs13":
        code = 1 if fmt == "F32LE" else 8
        field = mgonzs13_field(code)
        values = np.clip(np.asarray(samples, np.float32), -1.0, 1.0)
        values = values if code == 1 else np.round(values * 32767.0).astype(np.int16)
        data = am.AudioData(**{field: values.tolist()})
        info = am.AudioInfo(format=code, channels=1, rate=int(sample_rate), chunk=len(values))
        return {"stamped": am.AudioStamped(header=header(stamp_ns, frame_id),
                                           audio=am.Audio(audio_data=data, info=info))}
    raw = pcm_encode(samples, fmt)
    return {"stamped": am.AudioDataStamped(header=header(stamp_ns, frame_id),
                                           audio=am.AudioData(data=raw)),
            "unstamped": am.AudioData(data=raw)}


def ros_drivers_format(info) -> AudioFormat:
    """AudioFormat of a ros-drivers AudioInfo message."""
    return AudioFormat.from_ros_drivers(info.channels, info.sample_rate, info.sample_format,
                                        info.coding_format)


def mgonzs13_payload(msg) -> Tuple[object, AudioFormat]:
    """(typed sample array, AudioFormat) of an mgonzs13 AudioStamped (or Audio) message.

    Raises ``AudioFormatError`` for PortAudio format codes it cannot decode.
    """
    audio = getattr(msg, "audio", msg)
    info = audio.info
    fmt = AudioFormat.from_mgonzs13(info.format, info.channels, info.rate)
    return getattr(audio.audio_data, mgonzs13_field(info.format)), fmt


def raw_bytes(data) -> bytes:
    """uint8[] message field (array.array, list or bytes) -> bytes."""
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    if hasattr(data, "tobytes"):
        return data.tobytes()
    return bytes(data)


# ----------------------------------------------------------------------------- others

def state_msg(state: str, turn_id: int, reason: str, stamp_ns: int, frame_id: str):
    from a2llm_ros.msg import ConversationState
    return ConversationState(header=header(stamp_ns, frame_id), state=STATE_CODES[state],
                             turn_id=int(turn_id), reason=str(reason))


def text_msg(turn_id: int, text: str, final: bool, stamp_ns: int, frame_id: str):
    from a2llm_ros.msg import ResponseText
    return ResponseText(header=header(stamp_ns, frame_id), turn_id=int(turn_id),
                        text=str(text), final=bool(final))


def joint_state_msg(names: Sequence[str], positions: np.ndarray, stamp_ns: int,
                    frame_id: str = ""):
    from sensor_msgs.msg import JointState
    return JointState(header=header(stamp_ns, frame_id), name=list(names),
                      position=np.asarray(positions, dtype=np.float64).tolist())

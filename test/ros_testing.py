"""Helpers for the in-process rclpy node tests (test_ros_*.py); not a test module.

* :func:`ros_context` -- an rclpy Context of its own (domain from ROS_DOMAIN_ID,
  else derived from the pid) and a multi-threaded executor spinning in the
  background; every test uses its own namespace, so runs sharing a domain
  cannot talk to each other.
* :class:`Recorder` -- subscribes to topics and keeps ``(receive time, msg)``.
* :class:`MicFeeder` -- publishes a live microphone stream (AudioInfo +
  AudioDataStamped, any rate/channels, S16LE) in real time, silence (faint
  noise) unless an utterance was queued with :meth:`MicFeeder.say`.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor
from conftest import wait_for
from scipy.signal import resample_poly

from a2llm_ros.constants import SAMPLE_RATE

_NAMES = itertools.count()


def unique_namespace(tag: str) -> str:
    return f"/t{os.getpid()}_{tag}_{next(_NAMES)}"


def domain_id() -> int:
    env = os.environ.get("ROS_DOMAIN_ID", "")
    return int(env) if env.isdigit() else 40 + os.getpid() % 20


@contextlib.contextmanager
def ros_context():
    """Yield ``(context, executor)``; the executor spins in a daemon thread."""
    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain_id())
    executor = MultiThreadedExecutor(num_threads=3, context=ctx)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        yield ctx, executor
    finally:
        executor.shutdown(timeout_sec=2.0)
        rclpy.try_shutdown(context=ctx)
        thread.join(timeout=5.0)


class Recorder:
    """Records every message of the given topics with its receive time."""

    def __init__(self, node, topics: Dict[str, Tuple[type, object]]):
        self.node = node
        self.lock = threading.Lock()
        self.msgs: Dict[str, List[Tuple[float, object]]] = {k: [] for k in topics}
        self.subs = [node.create_subscription(cls, name, self._cb(name), qos)
                     for name, (cls, qos) in topics.items()]

    def _cb(self, name):
        def callback(msg):
            with self.lock:
                self.msgs[name].append((time.monotonic(), msg))
        return callback

    def get(self, name) -> List[Tuple[float, object]]:
        with self.lock:
            return list(self.msgs[name])

    def wait_for(self, predicate, timeout: float, what: str = "", poll: float = 0.02) -> bool:
        """:func:`conftest.wait_for`: raises naming ``what`` past the deadline, or
        (``what=""``) returns whether ``predicate`` came true."""
        return bool(wait_for(predicate, timeout, what, poll))


def to_device_audio(wave16k: np.ndarray, rate: int, channels: int) -> np.ndarray:
    """16 kHz mono float -> ``[n, channels]`` float at ``rate`` (channels slightly different)."""
    wave = resample_poly(np.asarray(wave16k, np.float64), rate, SAMPLE_RATE) \
        if rate != SAMPLE_RATE else np.asarray(wave16k, np.float64)
    gains = np.linspace(1.0, 0.9, channels)
    return wave[:, None] * gains[None, :]


class MicFeeder:
    """Real-time microphone publisher (S16LE, interleaved) on ``<ns>/audio/...``."""

    def __init__(self, node, topic: str, info_topic: str, rate: int = 44100,
                 channels: int = 2, chunk_ms: float = 20.0, noise: float = 1e-3,
                 coding_format: str = "wave", seed: int = 0):
        from audio_common_msgs.msg import AudioDataStamped, AudioInfo

        from a2llm_ros.ros.qos import latched_qos, sensor_qos
        self.node, self.rate, self.channels = node, rate, channels
        self.chunk = int(round(rate * chunk_ms / 1000.0))
        self.noise = noise
        self.rng = np.random.default_rng(seed)
        self.pub = node.create_publisher(AudioDataStamped, topic, sensor_qos(50))
        self.info_pub = node.create_publisher(AudioInfo, info_topic, latched_qos())
        self.info_pub.publish(AudioInfo(channels=channels, sample_rate=rate,
                                        sample_format="S16LE", bitrate=rate * channels * 16,
                                        coding_format=coding_format))
        self.lock = threading.Lock()
        self.pending = np.zeros((0, channels))
        self.position = 0             # samples (per channel) published so far
        self.publish_log: List[Tuple[int, float]] = []  # (end sample, wall time)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "MicFeeder":
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5.0)

    def say(self, wave16k: np.ndarray, onset_level: float = 0.05) -> int:
        """Queue an utterance; returns the stream sample (device rate) of its onset."""
        audio = to_device_audio(wave16k, self.rate, self.channels)
        mono = np.abs(audio[:, 0])
        onset = int(np.argmax(mono > onset_level * mono.max()))
        with self.lock:
            start = self.position + len(self.pending)
            self.pending = np.concatenate([self.pending, audio])
        return start + onset

    def busy(self) -> bool:
        with self.lock:
            return len(self.pending) > 0

    def wall_time_of(self, sample: int) -> Optional[float]:
        """When ``sample`` was 'spoken': its chunk's publish time minus the rest of the chunk."""
        for end, wall in self.publish_log:
            if end > sample:
                return wall - (end - sample) / self.rate
        return None

    def _next_chunk(self) -> np.ndarray:
        with self.lock:
            take = self.pending[:self.chunk]
            self.pending = self.pending[len(take):]
            self.position += self.chunk
        noise = self.noise * self.rng.standard_normal((self.chunk, self.channels))
        out = noise
        out[:len(take)] += take
        return out

    def _run(self) -> None:
        from audio_common_msgs.msg import AudioData, AudioDataStamped
        period = self.chunk / self.rate
        t0 = time.monotonic()
        k = 0
        while not self.stop.is_set():
            due = t0 + (k + 1) * period
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # sleep-ok: real-time pacing of the simulated microphone
            chunk = self._next_chunk()
            raw = np.round(np.clip(chunk, -1, 1) * 32767).astype("<i2").tobytes()
            msg = AudioDataStamped(audio=AudioData(data=raw))
            msg.header.stamp = self.node.get_clock().now().to_msg()
            self.pub.publish(msg)
            self.publish_log.append((self.position, time.monotonic()))
            k += 1

"""``a2llm_node``: microphone in -> A²-LLM -> speech audio, FLAME and text out.

A lifecycle node (``autostart:=true`` configures and activates it by itself):

* **on_configure** validates the parameters, loads the checkpoint/engine
  (``a2llm_ros.engines.load_backend``), warms it up and creates the (lifecycle)
  publishers; nothing is published while inactive (diagnostics excepted).
* **on_activate** subscribes to the microphone and starts two threads: the
  *worker* (VAD/end-pointing and generation via
  :class:`~a2llm_ros.conversation.session.ConversationSession`) and the
  *clock* (25 fps tick, listening face, paced publication); from here on a
  FLAME frame is published every 40 ms.  **on_deactivate** unsubscribes,
  cancels any answer and stops both threads; **on_cleanup**/**on_shutdown**
  free the model (and CUDA cache).

The executor thread only converts messages: audio callbacks decode/resample
(:class:`~a2llm_ros.audio.frontend.AudioFrontEnd`) and queue 16 kHz samples.
Speech audio is published at the output rate (``output.sample_rate``; 0 = the
speech codec's rate, resolved at configure, see :func:`output_rate_for`).
Outputs are placed on one timeline (see :mod:`a2llm_ros.conversation.output`): FLAME
frame ``f`` and speech sample ``f * rate / 25`` (640 f at 16 kHz, 960 f at
24 kHz) carry the same stamp, and both are published ``output.lead_s`` before
that time.  Topics, QoS and parameters are listed in ``docs/ros_interfaces.md``.
"""
from __future__ import annotations

import dataclasses
import gc
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np
from rclpy.lifecycle import LifecycleNode, LifecyclePublisher, TransitionCallbackReturn

from a2llm_ros.audio.frontend import (KEPT_AUDIO_REASONS, AudioFormat, AudioFormatError,
                                      AudioFrontEnd)
from a2llm_ros.constants import NS_PER_S, SAMPLE_RATE
from a2llm_ros.conversation.resample import check_output_rate
from a2llm_ros.conversation.runtime import THREAD_JOIN_S, ConversationRuntime
from a2llm_ros.conversation.session import ConversationSession
from a2llm_ros.interfaces import detect_audio_flavour
from a2llm_ros.ros import msgconv as mc
from a2llm_ros.conversation.output import Item, OutputScheduler
from a2llm_ros.ros.params import (CODEC_SAMPLE_RATE, LIVE_PARAMETERS, A2llmNodeConfig,
                                  AudioInputParams, ParameterBinding, ParamError)
from a2llm_ros.ros.qos import latched_qos, output_qos, sensor_qos, volatile_info_qos

__all__ = ["A2llmNode", "load_backend_for", "codec_sample_rate", "output_rate_for", "main"]

NODE_NAME = "a2llm_node"
#: Minimum interval between two warnings of the same kind (s).
WARN_INTERVAL_S = 5.0
#: mgonzs13 audio_capturer_node's topic, used when audio.topic keeps its ros-drivers default.
MGONZS13_TOPIC = "/audio"
#: Warm-up: steps at most / question length (s).
WARMUP_MAX_STEPS = 60
WARMUP_SECONDS = 1.0


def load_backend_for(checkpoint: str, backend_cfg) -> Any:
    """Backend for ``checkpoint`` as configured by ``backend_cfg``.

    Uses :func:`a2llm_ros.engines.load_backend` (``auto`` picks the best
    available engine; a missing or mismatched engine raises ``EngineError``).
    """
    from a2llm_ros.checkpoint_files import resolve_checkpoint
    from a2llm_ros.engines import BackendConfig, load_backend
    ckpt = resolve_checkpoint(checkpoint)
    if not isinstance(backend_cfg, BackendConfig):
        backend_cfg = BackendConfig(**dataclasses.asdict(backend_cfg))
    return load_backend(ckpt, backend_cfg)


def codec_sample_rate(backend) -> Optional[int]:
    """Sample rate of the backend's speech codec (``model.token2wav.sample_rate``), if known."""
    token2wav = getattr(getattr(backend, "model", None), "token2wav", None)
    rate = getattr(token2wav, "sample_rate", None)
    return int(rate) if isinstance(rate, (int, np.integer)) and rate > 0 else None


def output_rate_for(requested: int, backend) -> int:
    """The node's speech output rate: ``requested``, or for ``0`` the codec's own rate.

    A codec whose rate is unknown counts as the model's 16 kHz (its audio is
    resampled if it differs).  Raises ``ValueError`` if the codec's rate cannot
    be the output rate (not a multiple of 25 Hz in range): set ``output.sample_rate``.
    """
    if requested != CODEC_SAMPLE_RATE:
        return check_output_rate(requested, "output.sample_rate")
    rate = codec_sample_rate(backend) or SAMPLE_RATE
    return check_output_rate(rate, f"the speech codec's rate ({rate} Hz; set "
                             "output.sample_rate to resample it)")


def warm_up(backend, gen_cfg) -> float:
    """Run a short dummy turn (prefill + decode until the first motion segment); seconds."""
    from a2llm_ros.generation import FlameEvent, StreamingGenerator
    t0 = time.monotonic()
    gen = StreamingGenerator(backend, gen_cfg)
    rng = np.random.default_rng(0)
    gen.start((0.01 * rng.standard_normal(int(WARMUP_SECONDS * SAMPLE_RATE))).astype(np.float32))
    for _ in range(WARMUP_MAX_STEPS):
        if not gen.active or any(isinstance(e, FlameEvent) for e in gen.step()):
            break
    gen.cancel()
    gen.reset()
    return time.monotonic() - t0


@dataclasses.dataclass
class _Runtime:
    """Everything on_configure builds and on_cleanup frees: the ROS side (publishers,
    timers, audio front end) around the ROS-free :class:`ConversationRuntime`."""

    cfg: A2llmNodeConfig
    backend: Any
    layout: Any
    flavour: str
    frontend: AudioFrontEnd
    #: Speech output rate (Hz): ``output.sample_rate``, or the codec's rate for 0.
    output_rate: int = SAMPLE_RATE
    conv: Optional[ConversationRuntime] = None
    pubs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    timers: List[Any] = dataclasses.field(default_factory=list)
    #: Input problems the node (not the front end) counted, by reason.
    input_warnings: Dict[str, int] = dataclasses.field(default_factory=dict)
    warmup_s: float = 0.0

    @property
    def session(self) -> ConversationSession:
        return self.conv.session

    @property
    def out(self) -> OutputScheduler:
        return self.conv.out

    @property
    def threads(self) -> List[threading.Thread]:
        return self.conv.threads if self.conv is not None else []


class A2llmNode(LifecycleNode):
    """Lifecycle node running the conversation (see module docstring)."""

    def __init__(self, node_name: str = NODE_NAME,
                 wrap_generator: Optional[Callable[[Any], Any]] = None, **kwargs):
        """``wrap_generator``: applied to every turn's ``StreamingGenerator`` (an object
        with the same ``start``/``step``/``cancel``, e.g. a benchmark's timing probe);
        the other arguments are ``rclpy`` ``Node``'s."""
        super().__init__(node_name, **kwargs)
        self._wrap_generator = wrap_generator
        #: Why the last configure failed (None after a successful one).
        self.configure_error: Optional[str] = None
        self._rt: Optional[_Runtime] = None
        self._subs: List[Any] = []
        self._active = False
        self._in_format: Optional[AudioFormat] = None
        self._last_in_stamp: Optional[int] = None
        self._warned: Dict[str, float] = {}
        self.declare_parameter("autostart", False)
        self.params = ParameterBinding(self, A2llmNodeConfig(), live=LIVE_PARAMETERS,
                                       locked=lambda: self._rt is not None,
                                       on_live_change=self._on_live_change)
        self._autostart_timer = None
        if self.get_parameter("autostart").value:
            self._autostart_timer = self.create_timer(0.0, self._autostart)

    # ------------------------------------------------------------------ public helpers
    @property
    def runtime(self) -> Optional[_Runtime]:
        """The configured runtime (None while unconfigured)."""
        return self._rt

    @property
    def lifecycle_state(self) -> str:
        return self._state_machine.current_state[1]

    def _autostart(self) -> None:
        self.destroy_timer(self._autostart_timer)
        self._autostart_timer = None
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    def _warn(self, key: str, message: str) -> None:
        if not self.context.ok():
            return  # rclpy is shutting down (Ctrl-C): publishing fails, nothing to report
        now = time.monotonic()
        if now - self._warned.get(key, -1e9) >= WARN_INTERVAL_S:
            self._warned[key] = now
            self.get_logger().warning(message)

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state) -> TransitionCallbackReturn:
        self.configure_error = None
        try:
            cfg = self.params.config()
        except ParamError as err:
            self.configure_error = f"parameters refused: {err}"
            self.get_logger().error(f"configure refused: {err}")
            return TransitionCallbackReturn.FAILURE
        try:
            self._rt = self._build_runtime(cfg)
        except Exception as err:  # noqa: BLE001 (report, stay unconfigured)
            self.configure_error = f"{type(err).__name__}: {err}"
            self.get_logger().error(f"configure failed: {err}")
            self._teardown()
            return TransitionCallbackReturn.FAILURE
        rt = self._rt
        self.get_logger().info(
            f"configured: backend {type(rt.backend).__name__}, checkpoint "
            f"{cfg.model.checkpoint!r}, audio flavour {rt.flavour}, warm-up "
            f"{rt.warmup_s:.2f} s")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state) -> TransitionCallbackReturn:
        try:
            self._subscribe(self._rt.cfg)
        except Exception as err:  # noqa: BLE001
            self.get_logger().error(f"activate failed: {err}")
            self._unsubscribe()
            return TransitionCallbackReturn.FAILURE
        self._active = True
        rt = self._rt
        result = super().on_activate(state)  # activates the lifecycle publishers
        if "audio_info" in rt.pubs:
            rt.pubs["audio_info"].publish(mc.audio_info_msg(rt.cfg.output.sample_format,
                                                            sample_rate=rt.output_rate))
        rt.conv.start()
        self.get_logger().info(f"active: listening on {rt.cfg.audio.topic}")
        return result

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self._deactivate()
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        self._deactivate()
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state) -> TransitionCallbackReturn:
        self._deactivate()
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def shutdown_runtime(self) -> None:
        """Stop threads and free the model whatever the lifecycle state (process exit)."""
        self._deactivate()
        self._teardown()

    def destroy_node(self):
        """Stop the threads first (also when rclpy's shutdown destroys the node)."""
        if getattr(self, "_destroyed", False):
            return None
        self._destroyed = True
        self.shutdown_runtime()
        return super().destroy_node()

    # ------------------------------------------------------------------ configure
    def _build_runtime(self, cfg: A2llmNodeConfig) -> _Runtime:
        flavour = detect_audio_flavour()
        if flavour not in ("ros_drivers", "mgonzs13"):
            raise RuntimeError("audio_common_msgs is not importable (install the "
                               "ros-drivers or mgonzs13 audio_common_msgs)")
        backend = load_backend_for(cfg.model.checkpoint, cfg.backend)
        torch = sys.modules.get("torch")  # loaded by the PyTorch backend only
        if cfg.model.threads > 0 and torch is not None:
            torch.set_num_threads(cfg.model.threads)
        rate = output_rate_for(cfg.output.sample_rate, backend)
        frontend = AudioFrontEnd(cfg.audio.frontend, on_problem=self._on_audio_problem)
        chunk = max(1, int(round(cfg.output.audio_chunk_ms * rate / 1000.0)))
        out = OutputScheduler(int(cfg.output.lead_s * NS_PER_S), chunk, sample_rate=rate)
        rt = _Runtime(cfg=cfg, backend=backend, layout=backend.model.layout, flavour=flavour,
                      frontend=frontend, output_rate=rate)
        rt.warmup_s = warm_up(backend, cfg.generation) if cfg.model.warmup else 0.0
        rt.conv = ConversationRuntime(
            self._generator_factory(backend, cfg.generation), out,
            {"turn": cfg.turn, "vad": cfg.vad, "listening": cfg.listening,
             "end_of_turn": self._end_of_turn_head(cfg, backend)}, rate,
            publish=lambda item, stamp_ns, now_ns: self._publish(rt, item, stamp_ns, now_ns),
            clock_ns=lambda: self.get_clock().now().nanoseconds, warn=self._warn,
            error=lambda message: self.get_logger().error(message))
        codec = codec_sample_rate(backend)
        self.get_logger().info(
            f"speech output {rate} Hz (codec {codec or 'unknown'} Hz"
            f"{', resampled' if codec not in (None, rate) else ''})")
        self._rt = rt
        self._in_format = None
        self._make_publishers(rt)
        rt.timers.append(self.create_timer(cfg.output.diagnostics_period_s,
                                           self._publish_diagnostics))
        return rt

    def _end_of_turn_head(self, cfg: A2llmNodeConfig, backend):
        """The checkpoint's end-of-turn head when ``vad.end_of_turn`` asks for it; a
        missing file refuses configure with the reason."""
        if not cfg.vad.end_of_turn:
            return None
        from a2llm_ros.conversation.end_of_turn import HEAD_FILE, load_end_of_turn
        model = backend.model  # an A2LLM (base_dir) or an engine's ModelInfo (checkpoint_dir)
        base = getattr(model, "base_dir", None) or getattr(model, "checkpoint_dir", None)
        head = load_end_of_turn(base)
        if head is None:
            raise FileNotFoundError(f"vad.end_of_turn is on but the checkpoint ({base}) has no "
                                    f"{HEAD_FILE} (python -m "
                                    "a2llm_ros.tools.training.end_of_turn)")
        head.check_model(model)
        if head.pad_ms is not None and abs(head.pad_ms - cfg.vad.speech_pad_ms) > 1.0:
            self.get_logger().warning(
                f"{HEAD_FILE} was trained with {head.pad_ms:g} ms of speech padding, "
                f"vad.speech_pad_ms is {cfg.vad.speech_pad_ms:g}: it will miss more ends "
                f"and may take more pauses for the end (config/fast_turns.yaml)")
        return head

    def _generator_factory(self, backend, gen_cfg) -> Callable[[], Any]:
        from a2llm_ros.generation import StreamingGenerator
        wrap = self._wrap_generator or (lambda generator: generator)
        return lambda: wrap(StreamingGenerator(backend, gen_cfg))

    def _make_publishers(self, rt: _Runtime) -> None:
        import audio_common_msgs.msg as am
        from diagnostic_msgs.msg import DiagnosticArray

        from a2llm_ros.msg import ConversationState, FlameChunk, FlameFrame, ResponseText
        out, depth = rt.cfg.output, rt.cfg.output.qos_depth
        pubs = rt.pubs

        def lifecycle(cls, topic: str, qos=None):
            # publishes only while active (ros2/demos lifecycle_py)
            return self.create_lifecycle_publisher(cls, topic, qos or output_qos(depth))

        pubs["state"] = lifecycle(ConversationState, "conversation_state")
        pubs["text"] = lifecycle(ResponseText, "response_text")
        pubs["flame_chunk"] = lifecycle(FlameChunk, "flame/chunks")
        if out.publish_flame_frames:
            pubs["flame_frame"] = lifecycle(FlameFrame, "flame/frames")
        if rt.flavour == "mgonzs13":
            pubs["audio_stamped"] = lifecycle(am.AudioStamped, "speech/audio_stamped")
        else:
            pubs["audio_stamped"] = lifecycle(am.AudioDataStamped, "speech/audio_stamped")
            if out.publish_unstamped_audio:
                pubs["audio"] = lifecycle(am.AudioData, "speech/audio")
            pubs["audio_info"] = lifecycle(am.AudioInfo, "speech/audio_info", latched_qos())
        pubs["diagnostics"] = self.create_publisher(DiagnosticArray, "/diagnostics",
                                                    output_qos(10))

    # ------------------------------------------------------------------ activate
    def _input_message(self, cfg: A2llmNodeConfig, flavour: str) -> str:
        message = cfg.audio.message
        if message == "auto":
            return "mgonzs13" if flavour == "mgonzs13" else "stamped"
        if (message == "mgonzs13") != (flavour == "mgonzs13"):
            raise RuntimeError(f"audio.message {message!r} does not fit the installed "
                               f"audio_common_msgs flavour ({flavour})")
        return message

    def _subscribe(self, cfg: A2llmNodeConfig) -> None:
        import audio_common_msgs.msg as am
        message = self._input_message(cfg, self._rt.flavour)
        qos = sensor_qos(cfg.audio.qos_depth)
        if message == "mgonzs13":
            topic = cfg.audio.topic
            if topic == AudioInputParams().topic:
                topic = MGONZS13_TOPIC  # the ros-drivers default makes no sense here
            self._subs.append(self.create_subscription(am.AudioStamped, topic,
                                                       self._on_mgonzs13, qos))
            return
        cls, cb = ((am.AudioDataStamped, self._on_audio_stamped) if message == "stamped"
                   else (am.AudioData, self._on_audio_unstamped))
        self._subs.append(self.create_subscription(cls, cfg.audio.topic, cb, qos))
        for info_qos in (latched_qos(), volatile_info_qos()):
            self._subs.append(self.create_subscription(am.AudioInfo, cfg.audio.info_topic,
                                                       self._on_audio_info, info_qos))

    def _unsubscribe(self) -> None:
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []

    def _deactivate(self) -> None:
        self._unsubscribe()
        was_active, self._active = self._active, False
        rt = self._rt
        if rt is not None and rt.conv is not None:
            self._report_busy(rt.conv.stop(reset=was_active))

    def _report_busy(self, names: List[str]) -> None:
        for name in names:
            self.get_logger().warning(f"thread {name} still busy after {THREAD_JOIN_S:.1f} s; "
                                      "left as a daemon")

    # ------------------------------------------------------------------ cleanup
    def _teardown(self) -> None:
        rt, self._rt = self._rt, None
        if rt is None:
            return
        if rt.conv is not None:
            self._report_busy(rt.conv.stop(reset=False))
        for timer in rt.timers:
            self.destroy_timer(timer)
        for pub in rt.pubs.values():
            if isinstance(pub, LifecyclePublisher):
                self.destroy_lifecycle_publisher(pub)
            else:
                self.destroy_publisher(pub)
        rt.pubs.clear()
        rt.conv = rt.backend = None
        del rt
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ parameters
    def _on_live_change(self, cfg: A2llmNodeConfig, names) -> None:
        rt = self._rt
        if rt is None:
            return
        rt.cfg = dataclasses.replace(rt.cfg, turn=cfg.turn, output=dataclasses.replace(
            rt.cfg.output, lead_s=cfg.output.lead_s))
        rt.session.config = cfg.turn
        rt.out.lead_ns = int(cfg.output.lead_s * NS_PER_S)
        self.get_logger().info(f"updated live parameters: {', '.join(names)}")

    # ------------------------------------------------------------------ input callbacks
    def _on_audio_problem(self, reason: str, message: str) -> None:
        if reason == "format_change":
            self.get_logger().info(f"microphone format changed: {message}")
        elif reason in KEPT_AUDIO_REASONS:
            self._warn(reason, f"microphone audio ({reason}): {message}")
        else:
            self._warn(reason, f"microphone audio dropped ({reason}): {message}")

    def _on_audio_info(self, msg) -> None:
        self._in_format = mc.ros_drivers_format(msg)

    def _fallback_format(self) -> AudioFormat:
        a = self._rt.cfg.audio
        fmt = AudioFormat.from_ros_drivers(a.fallback_channels, a.fallback_sample_rate,
                                           a.fallback_sample_format, "wave")
        self._count_input_warning("no_info")
        self._warn("no_info", f"no AudioInfo received on {a.info_topic!r} yet: assuming "
                   f"{fmt.channels} ch, {fmt.sample_rate} Hz, {fmt.sample_format}")
        return fmt

    def _count_input_warning(self, reason: str) -> None:
        """Count an input oddity that is not a drop (``input_warnings.<reason>``)."""
        rt = self._rt
        if rt is not None:
            counts = rt.input_warnings
            counts[reason] = counts.get(reason, 0) + 1

    def _check_stamp(self, stamp) -> None:
        """Header stamps going backwards: warned and counted; the audio is kept (the node
        orders input by arrival, not by stamp)."""
        ns = mc.to_ns(stamp)
        last, self._last_in_stamp = self._last_in_stamp, ns
        if last is not None and 0 < ns < last:
            self._count_input_warning("stamp_backwards")
            self._warn("stamp_backwards", f"microphone header stamp went back "
                       f"{(last - ns) / NS_PER_S:.3f} s; audio kept in arrival order")

    def _on_audio_stamped(self, msg) -> None:
        self._check_stamp(msg.header.stamp)
        self._feed(mc.raw_bytes(msg.audio.data), self._in_format or self._fallback_format(),
                   mc.to_ns(msg.header.stamp))

    def _on_audio_unstamped(self, msg) -> None:
        self._feed(mc.raw_bytes(msg.data), self._in_format or self._fallback_format())

    def _on_mgonzs13(self, msg) -> None:
        if self._rt is None:
            return
        self._check_stamp(msg.header.stamp)
        try:
            data, fmt = mc.mgonzs13_payload(msg)
        except AudioFormatError as err:
            counters = self._rt.frontend.counters
            counters[err.reason] = counters.get(err.reason, 0) + 1
            self._on_audio_problem(err.reason, str(err))
            return
        self._feed(data, fmt, mc.to_ns(msg.header.stamp))

    def _feed(self, data, fmt: AudioFormat, stamp_ns: Optional[int] = None) -> None:
        rt = self._rt
        if rt is None or not self._active:
            return
        chunk = rt.frontend.process(data, fmt, stamp_ns)
        if chunk is not None and len(chunk.samples):
            rt.conv.submit_audio(chunk.samples, chunk.start_sample)

    # ------------------------------------------------------------------ output
    def _publish(self, rt: _Runtime, item: Item, stamp: int, now_ns: int) -> None:
        """A released output item -> its message(s) (the runtime's clock thread)."""
        pubs, out, p = rt.pubs, rt.cfg.output, item.payload
        version = rt.layout.version
        if item.kind == "state":
            pubs["state"].publish(mc.state_msg(p["state"], item.turn_id, p["reason"], now_ns,
                                               out.frame_id))
        elif item.kind == "text":
            pubs["text"].publish(mc.text_msg(item.turn_id, p["text"], p["final"], now_ns,
                                             out.frame_id))
        elif item.kind == "audio":
            msgs = mc.speech_audio_msgs(rt.flavour, p["samples"], stamp, out.frame_id,
                                        out.sample_format, sample_rate=rt.output_rate)
            pubs["audio_stamped"].publish(msgs["stamped"])
            if "audio" in pubs and "unstamped" in msgs:
                pubs["audio"].publish(msgs["unstamped"])
        elif item.kind == "flame_chunk":
            pubs["flame_chunk"].publish(mc.flame_chunk_msg(
                p["frames"], stamp, item.turn_id, p["first_index"], p["source"],
                out.frame_id, version))
        elif item.kind == "flame_frame" and "flame_frame" in pubs:
            pubs["flame_frame"].publish(mc.flame_frame_msg(p["frame"], stamp, item.turn_id,
                                                           out.frame_id, version))

    # ------------------------------------------------------------------ diagnostics
    def diagnostics_values(self) -> Dict[str, str]:
        """Current figures reported on /diagnostics (also handy in tests)."""
        rt = self._rt
        if rt is None:
            return {}
        values = {"lifecycle_state": self.lifecycle_state,
                  "backend": type(rt.backend).__name__,
                  "backend_kind": str(getattr(rt.cfg.backend, "kind", "")),
                  "audio_flavour": rt.flavour, "warmup_s": f"{rt.warmup_s:.3f}"}
        values.update(rt.conv.values())
        for name, count in sorted(rt.frontend.counters.items()):
            values[f"input_dropped.{name}"] = str(count)
        warned = {**rt.input_warnings, **rt.frontend.warnings}
        for name, count in sorted(warned.items()):
            values[f"input_warnings.{name}"] = str(count)
        return values

    def _publish_diagnostics(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
        rt = self._rt
        if rt is None:
            return
        values = self.diagnostics_values()
        drops = sum(int(v) for k, v in values.items()
                    if k.startswith("input_dropped.") and "format_change" not in k)
        drops += int(values.get("session.dropped_audio_chunks", 0))
        errors = int(values["generator_errors"])
        level, message = DiagnosticStatus.OK, "ok"
        if errors or drops:
            level = DiagnosticStatus.WARN
            message = f"{drops} input chunks dropped, {errors} generator errors"
        status = DiagnosticStatus(level=level, name=f"{self.get_fully_qualified_name()}: "
                                  "conversation", message=message,
                                  hardware_id=values["backend"],
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        rt.pubs["diagnostics"].publish(array)


def main(argv=None, exit_process: bool = True) -> int:
    """``ros2 run a2llm_ros a2llm_node [--gil-switch-interval-ms MS]`` (set
    ``autostart:=true`` to self-activate; process options: :mod:`a2llm_ros.ros.spin`)."""
    from a2llm_ros.ros.spin import exit_now, run_executable
    code = run_executable(A2llmNode, argv, cleanup=lambda node: node.shutdown_runtime())
    if exit_process:
        exit_now(code)
    return code


if __name__ == "__main__":
    sys.exit(main())

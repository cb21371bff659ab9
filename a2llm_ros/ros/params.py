"""Config dataclasses <-> ROS 2 parameters, with validation.

Every field of a (nested) config dataclass becomes one ROS parameter named by
its dotted path, e.g. ``vad.threshold`` or ``audio.frontend.max_message_seconds``;
in a YAML parameter file the sections nest::

    /**/a2llm_node:
      ros__parameters:
        vad:
          threshold: 0.5

:class:`A2llmNodeConfig` gathers the sections of ``a2llm_node`` (model,
generation, backend, audio, vad, turn, listening, output).  The plain helpers
(:func:`flatten`, :func:`field_kinds`, :func:`build_config`) need no ROS;
:class:`ParameterBinding` declares the parameters on a node and validates
every change in an ``on_set_parameters`` callback, so an invalid value is
rejected with a reason (``SetParametersResult``) and never raises in the node.

Parameters are declared with ``dynamic_typing`` and type-checked here, so a
YAML ``250`` is accepted for a float field; a string for a number, a
non-integral float for an int or an out-of-range value is rejected.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

from a2llm_ros.audio.frontend import SAMPLE_FORMATS, FrontEndConfig
from a2llm_ros.configbase import Bound, ConfigBase, above, at_least, between
from a2llm_ros.constants import FLAME_FPS, SAMPLE_RATE
from a2llm_ros.conversation.listening import ListeningConfig
from a2llm_ros.conversation.resample import (MAX_OUTPUT_RATE, MIN_OUTPUT_RATE,
                                             check_output_rate)
from a2llm_ros.conversation.session import TurnConfig
from a2llm_ros.conversation.vad import VadConfig

__all__ = ["ParamError", "ModelParams", "AudioInputParams", "OutputParams",
           "FallbackBackendConfig", "backend_config_class", "A2llmNodeConfig",
           "flatten", "field_kinds", "coerce", "build_config", "ParameterBinding",
           "LIVE_PARAMETERS", "BACKEND_KINDS", "INPUT_MESSAGES", "OUTPUT_SAMPLE_FORMATS",
           "CODEC_SAMPLE_RATE"]

#: Engine kinds understood by ``a2llm_ros.engines.load_backend``.
BACKEND_KINDS = ("auto", "torch", "onnxruntime", "tensorrt")
#: ``audio.message``: which microphone message type to subscribe.
INPUT_MESSAGES = ("auto", "stamped", "unstamped", "mgonzs13")
#: Sample formats of the published speech audio.
OUTPUT_SAMPLE_FORMATS = ("S16LE", "F32LE")
#: ``output.sample_rate`` value meaning "the speech codec's own rate, not resampled".
CODEC_SAMPLE_RATE = 0
#: Parameters (or dotted prefixes) that may change while the node is configured.
LIVE_PARAMETERS = ("turn.", "output.lead_s")


class ParamError(ValueError):
    """A parameter value is invalid; the message is the reason given to the caller."""


# ----------------------------------------------------------------------------- sections

@dataclasses.dataclass
class ModelParams(ConfigBase):
    """Which checkpoint to load and how to run it."""

    #: Checkpoint directory, or ``default`` for the one shipped in the package.
    checkpoint: str = "default"
    #: torch CPU threads (0 leaves torch's default).
    threads: int = 1
    #: Run one short dummy turn in on_configure so the first answer is not slow.
    warmup: bool = True

    BOUNDS = {"threads": at_least(0)}

    def __post_init__(self):
        self.check_bounds()
        if not self.checkpoint:
            raise ValueError("model.checkpoint must not be empty (use 'default')")


@dataclasses.dataclass
class AudioInputParams(ConfigBase):
    """Microphone input: topic, message type, format fallback and decoder limits."""

    #: Audio topic (AudioDataStamped, AudioData or mgonzs13 AudioStamped, see ``message``).
    topic: str = "/audio/audio_stamped"
    #: ``auto`` (stamped for ros-drivers, AudioStamped for mgonzs13), ``stamped``,
    #: ``unstamped`` or ``mgonzs13``.
    message: str = "auto"
    #: ros-drivers AudioInfo topic (transient-local and volatile publishers both work).
    info_topic: str = "/audio/audio_info"
    #: Format assumed until an AudioInfo arrives (a warning says so): rate (Hz).
    fallback_sample_rate: int = 16000
    #: Format assumed until an AudioInfo arrives: channels.
    fallback_channels: int = 1
    #: Format assumed until an AudioInfo arrives: ``S16LE``, ``S32LE``, ``F32LE``...
    fallback_sample_format: str = "S16LE"
    #: Depth of the best-effort (sensor-data) microphone subscription.
    qos_depth: int = 50
    frontend: FrontEndConfig = dataclasses.field(default_factory=FrontEndConfig)

    BOUNDS = {"fallback_sample_rate": at_least(1), "fallback_channels": between(1, 64),
              "qos_depth": at_least(1)}

    def __post_init__(self):
        self.check_bounds()
        if not self.topic:
            raise ValueError("audio.topic must not be empty")
        if self.message not in INPUT_MESSAGES:
            raise ValueError(f"audio.message must be one of {INPUT_MESSAGES}, "
                             f"got {self.message!r}")
        if self.fallback_sample_format.upper() not in SAMPLE_FORMATS:
            raise ValueError(f"audio.fallback_sample_format must be one of "
                             f"{sorted(SAMPLE_FORMATS)}, got {self.fallback_sample_format!r}")
        if self.frontend.target_rate != SAMPLE_RATE:
            raise ValueError(f"audio.frontend.target_rate must be {SAMPLE_RATE} (the model's "
                             f"rate), got {self.frontend.target_rate}")


@dataclasses.dataclass
class OutputParams(ConfigBase):
    """Published outputs: frame id, pacing and audio format."""

    #: ``header.frame_id`` of every published message.
    frame_id: str = "a2llm_head"
    #: Outputs are published this long before their presentation time (s).
    lead_s: float = 0.1
    #: Speech audio is published in pieces of this many milliseconds.
    audio_chunk_ms: int = 40
    #: ``S16LE`` or ``F32LE`` (mono, at ``sample_rate``).
    sample_format: str = "S16LE"
    #: Speech audio output rate (Hz): 0 = the speech codec's own rate as it is (16 kHz
    #: for the tiny codec, 24 kHz for Step-Audio-2's); > 0 = resampled to this rate
    #: (soxr, streaming), a multiple of 25 in 8000..192000.  AudioInfo reports it.
    sample_rate: int = CODEC_SAMPLE_RATE
    #: ros-drivers only: also publish unstamped AudioData (for audio_play).
    publish_unstamped_audio: bool = True
    #: Also publish every FLAME frame on its own (``flame/frames``).
    publish_flame_frames: bool = True
    #: History depth of the reliable output publishers.
    qos_depth: int = 100
    #: Period of the diagnostics message (s).
    diagnostics_period_s: float = 1.0

    BOUNDS = {"lead_s": between(0.0, 5.0), "audio_chunk_ms": between(10, 1000),
              "sample_rate": between(0, MAX_OUTPUT_RATE), "qos_depth": at_least(1),
              "diagnostics_period_s": above(0.0)}

    def __post_init__(self):
        self.check_bounds()
        if self.sample_format.upper() not in OUTPUT_SAMPLE_FORMATS:
            raise ValueError(f"output.sample_format must be one of {OUTPUT_SAMPLE_FORMATS}, "
                             f"got {self.sample_format!r}")
        if self.sample_rate != CODEC_SAMPLE_RATE:
            try:
                check_output_rate(self.sample_rate)
            except ValueError as err:
                raise ValueError(
                    f"output.sample_rate must be {CODEC_SAMPLE_RATE} (the speech codec's rate) "
                    f"or a multiple of {FLAME_FPS} Hz in {MIN_OUTPUT_RATE}..{MAX_OUTPUT_RATE}, "
                    f"got {self.sample_rate}") from err


@dataclasses.dataclass
class FallbackBackendConfig(ConfigBase):
    """Stand-in for ``a2llm_ros.engines.BackendConfig`` while that module is missing."""

    kind: str = "auto"
    model_file_path: str = ""
    engine_file_path: str = ""
    force_engine_update: bool = False
    precision: str = "fp16"
    device: str = "auto"

    def __post_init__(self):
        if self.kind not in BACKEND_KINDS:
            raise ValueError(f"backend.kind must be one of {BACKEND_KINDS}, got {self.kind!r}")


def backend_config_class():
    """``a2llm_ros.engines.BackendConfig`` if importable (and a dataclass), else the fallback."""
    try:
        from a2llm_ros.engines import BackendConfig
    except ImportError:
        return FallbackBackendConfig
    return BackendConfig if dataclasses.is_dataclass(BackendConfig) else FallbackBackendConfig


def _generation_config():
    from a2llm_ros.generation import GenerationConfig
    return GenerationConfig()


@dataclasses.dataclass
class A2llmNodeConfig:
    """All parameters of ``a2llm_node`` (one section per core config)."""

    model: ModelParams = dataclasses.field(default_factory=ModelParams)
    generation: Any = dataclasses.field(default_factory=_generation_config)
    backend: Any = dataclasses.field(default_factory=lambda: backend_config_class()())
    audio: AudioInputParams = dataclasses.field(default_factory=AudioInputParams)
    vad: VadConfig = dataclasses.field(default_factory=VadConfig)
    turn: TurnConfig = dataclasses.field(default_factory=TurnConfig)
    listening: ListeningConfig = dataclasses.field(default_factory=ListeningConfig)
    output: OutputParams = dataclasses.field(default_factory=OutputParams)

    def __post_init__(self):
        kind = getattr(self.backend, "kind", "auto")
        if kind not in BACKEND_KINDS:
            raise ValueError(f"backend.kind must be one of {BACKEND_KINDS}, got {kind!r}")


# ----------------------------------------------------------------------------- generic tree

#: kind names: bool, int, float, str, float_list, int_list, str_list, bool_list
_SCALARS = {bool: "bool", int: "int", float: "float", str: "str"}


def _hints(cls) -> Dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 (unresolvable hints: fall back to default values)
        return {}


def _kind_of(hint, default) -> str:
    """Parameter kind of a field from its type hint, or its default value."""
    if hint in _SCALARS:
        return _SCALARS[hint]
    origin = typing.get_origin(hint)
    if origin in (tuple, list):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if args and args[0] in _SCALARS:
            return _SCALARS[args[0]] + "_list"
    if isinstance(default, (tuple, list)):
        inner = type(default[0]) if default else float
        return _SCALARS.get(inner, "float") + "_list"
    for typ, name in _SCALARS.items():
        if type(default) is typ:
            return name
    raise TypeError(f"cannot map field of type {hint!r} (default {default!r}) to a parameter")


def _is_section(value) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def flatten(cfg, prefix: str = "") -> Dict[str, Any]:
    """Dotted name -> ROS-compatible value (tuples become lists) of a config tree."""
    out: Dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        name = prefix + f.name
        if _is_section(value):
            out.update(flatten(value, name + "."))
        elif isinstance(value, (tuple, list)):
            out[name] = list(value)
        else:
            out[name] = value
    return out


def field_kinds(cfg, prefix: str = "") -> Dict[str, str]:
    """Dotted name -> kind (``bool``, ``int``, ``float``, ``str``, ``float_list`` ...)."""
    out: Dict[str, str] = {}
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        name = prefix + f.name
        if _is_section(value):
            out.update(field_kinds(value, name + "."))
        else:
            out[name] = _kind_of(hints.get(f.name), value)
    return out


def coerce(name: str, kind: str, value) -> Any:
    """Check/convert one ROS parameter value to the field's type; raise :class:`ParamError`."""
    if kind.endswith("_list"):
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise ParamError(f"{name} must be a list of {kind[:-5]} values, got {value!r}")
        return tuple(coerce(f"{name}[{i}]", kind[:-5], v) for i, v in enumerate(value))
    if kind == "bool":
        if not isinstance(value, bool):
            raise ParamError(f"{name} must be true or false, got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise ParamError(f"{name} must be a string, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamError(f"{name} must be a number, got {value!r}")
    if kind == "int":
        if float(value) != int(value):
            raise ParamError(f"{name} must be an integer, got {value!r}")
        return int(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ParamError(f"{name} must be finite, got {value!r}")
    return float(value)


def build_config(default, values: Mapping[str, Any], prefix: str = ""):
    """A new config tree like ``default`` with ``values`` (dotted names) applied.

    Each dataclass is rebuilt with its constructor, so its ``__post_init__``
    checks run; any failure becomes :class:`ParamError` naming the section.
    """
    kinds = field_kinds(default, prefix)
    unknown = [n for n in values if n.startswith(prefix) and n not in kinds
               and not any(k.startswith(n + ".") for k in kinds)]
    if unknown and not prefix:
        raise ParamError(f"unknown parameters: {', '.join(sorted(unknown))}")
    return _build(default, values, kinds, prefix)


def _build(cfg, values, kinds, prefix):
    kwargs = {}
    for f in dataclasses.fields(cfg):
        if not f.init:
            continue
        name = prefix + f.name
        current = getattr(cfg, f.name)
        if _is_section(current):
            kwargs[f.name] = _build(current, values, kinds, name + ".")
        elif name in values:
            kwargs[f.name] = coerce(name, kinds[name], values[name])
        else:
            kwargs[f.name] = current
    bad = [f"{prefix}{n} must be {bound}, got {kwargs[n]}"
           for n, bound in getattr(type(cfg), "BOUNDS", {}).items()
           if n in kwargs and not bound.contains(kwargs[n])]
    if bad:  # named as the ROS parameters (the config's own check names its fields)
        raise ParamError("; ".join(bad))
    try:
        return type(cfg)(**kwargs)
    except (ValueError, TypeError, KeyError) as err:
        section = prefix.rstrip(".") or type(cfg).__name__
        raise ParamError(f"invalid {section}: {err}") from err


def _tree(cfg, table: Callable[[type], Mapping[str, Any]], prefix: str = "") -> Dict[str, Any]:
    """Dotted parameter name -> ``table(config class)[field]`` over a config tree."""
    out: Dict[str, Any] = {}
    per_field = table(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if _is_section(value):
            out.update(_tree(value, table, prefix + f.name + "."))
        elif f.name in per_field:
            out[prefix + f.name] = per_field[f.name]
    return out


def tree_docs(cfg, prefix: str = "") -> Dict[str, str]:
    """Dotted parameter name -> the field's doc comment, for a whole config tree."""
    from a2llm_ros.configbase import field_docs
    return _tree(cfg, field_docs, prefix)


def tree_bounds(cfg, prefix: str = "") -> Dict[str, Bound]:
    """Dotted parameter name -> the field's :class:`~a2llm_ros.configbase.Bound`."""
    return _tree(cfg, lambda cls: getattr(cls, "BOUNDS", {}), prefix)


def describe(kind: str, doc: str, bound: Optional[Bound], live: bool):
    """The ``ParameterDescriptor`` of one field: its doc, its kind, its range and
    when it applies (``ros2 param describe`` shows them)."""
    from rcl_interfaces.msg import ParameterDescriptor
    when = "live: applies at once" if live else "static: set while unconfigured"
    allowed = f"; {bound}" if bound is not None else ""
    return ParameterDescriptor(
        dynamic_typing=True, description=doc,
        additional_constraints=f"{kind}{allowed}; {when}; checked on every set "
                               f"(an invalid value is refused with the reason)")


def with_range(desc, kind: str, bound: Optional[Bound]):
    """``desc`` with rcl's integer or floating-point range for a two-sided bound (what
    rqt_reconfigure draws as a slider; rclpy then also refuses a value outside it),
    else ``desc`` itself."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange
    if bound is None or bound.low is None or bound.high is None or \
            kind not in ("int", "float"):
        return desc
    ranged = copy.deepcopy(desc)
    if kind == "int":
        ranged.integer_range = [IntegerRange(from_value=int(bound.low),
                                             to_value=int(bound.high), step=0)]
    else:
        ranged.floating_point_range = [FloatingPointRange(
            from_value=float(bound.low), to_value=float(bound.high), step=0.0)]
    return ranged


# ----------------------------------------------------------------------------- rclpy side

def _is_live(name: str, live: Iterable[str]) -> bool:
    return any(name == p or (p.endswith(".") and name.startswith(p)) for p in live)


class ParameterBinding:
    """Declares a config tree as parameters of ``node`` and validates every change.

    ``locked()`` returning True (e.g. node configured) makes parameters not in
    ``live`` read-only with a reason (``frozen_hint`` says what to do); accepted
    changes of live parameters are passed to ``on_live_change(new_config,
    changed_names)``.  ``validate(config)``
    may add checks (raise :class:`ParamError`).  Parameters not part of the
    tree (``use_sim_time``, ``autostart`` ...) are left alone.
    """

    def __init__(self, node, default, live: Iterable[str] = (),
                 locked: Callable[[], bool] = lambda: False,
                 on_live_change: Optional[Callable[[Any, Tuple[str, ...]], None]] = None,
                 descriptions: Optional[Mapping[str, str]] = None,
                 validate: Optional[Callable[[Any], None]] = None,
                 frozen_hint: str = "deactivate + cleanup the node, set, configure"):
        self.node, self.default, self.frozen_hint = node, default, frozen_hint
        self.live, self.locked, self.on_live_change = tuple(live), locked, on_live_change
        self.validate = validate
        self.kinds = field_kinds(default)
        docs = {**tree_docs(default), **(descriptions or {})}
        bounds = tree_bounds(default)
        for name, value in flatten(default).items():
            kind, bound = self.kinds[name], bounds.get(name)
            desc = describe(kind, docs.get(name, ""), bound, _is_live(name, self.live))
            # declared without the rcl range, so a start-up value outside it (from a
            # parameter file) is kept and refused at configure with the reason instead
            # of killing the node; the range is added once the value lies inside
            value = node.declare_parameter(name, value, desc).value
            ranged = with_range(desc, kind, bound)
            if ranged is not desc and bound.contains(value):
                node.set_descriptor(name, ranged)
        node.add_on_set_parameters_callback(self._on_set)

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(self.kinds)

    def values(self) -> Dict[str, Any]:
        """Current parameter values of the tree (dotted names)."""
        return {n: self.node.get_parameter(n).value for n in self.kinds}

    def config(self):
        """The validated config from the current values; raises :class:`ParamError`."""
        return self._checked(self.values())

    def _checked(self, values: Mapping[str, Any]):
        config = build_config(self.default, values)
        if self.validate is not None:
            self.validate(config)
        return config

    def _on_set(self, params):
        from rcl_interfaces.msg import SetParametersResult
        try:
            changed = tuple(p.name for p in params if p.name in self.kinds)
            if not changed:
                return SetParametersResult(successful=True)
            if self.locked():
                frozen = [n for n in changed if not _is_live(n, self.live)]
                if frozen:
                    raise ParamError(
                        f"{', '.join(frozen)} cannot change now ({self.frozen_hint}); "
                        f"parameters that can: {', '.join(self.live) or 'none'}")
            values = self.values()
            values.update({p.name: p.value for p in params if p.name in self.kinds})
            config = self._checked(values)
            if self.locked() and self.on_live_change is not None:
                self.on_live_change(config, changed)
            return SetParametersResult(successful=True)
        except ParamError as err:
            return SetParametersResult(successful=False, reason=str(err))
        except Exception as err:  # noqa: BLE001 (a parameter never takes the node down)
            return SetParametersResult(successful=False, reason=f"rejected: {err!r}")

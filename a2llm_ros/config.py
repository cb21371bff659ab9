"""Aggregate configuration of the whole A²-LLM model (:class:`A2LLMConfig`).

``A2LLMConfig.preset(name)`` builds every component's preset and links the
shared sizes: the audio adaptor and the motion connector take the LLM hidden
size, the connector's levels/codebook follow the motion tokenizer, and the
audio encoder's mel bins follow ``mel``.  ``__post_init__`` re-checks these
links, so a hand-edited config that breaks them fails early with the field
names.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from a2llm_ros.model.configs import MelConfig
from a2llm_ros.configbase import PRESETS, ConfigBase, ConfigMismatchError
from a2llm_ros.model.configs import AudioEncoderConfig
from a2llm_ros.model.configs import InterleaveConfig, LLMConfig
from a2llm_ros.model.configs import ConnectorConfig
from a2llm_ros.model.configs import MotionTokenizerConfig
from a2llm_ros.model.configs import SpeechCodecConfig

_PARTS = {"mel": MelConfig, "audio": AudioEncoderConfig,
          "llm": LLMConfig, "interleave": InterleaveConfig, "connector": ConnectorConfig,
          "motion": MotionTokenizerConfig, "codec": SpeechCodecConfig}


@dataclass
class A2LLMConfig(ConfigBase):
    """All component configs of :class:`a2llm_ros.model.a2llm.A2LLM`."""

    preset_name: str = "tiny"
    mel: MelConfig = field(default_factory=lambda: MelConfig.preset("tiny"))
    audio: AudioEncoderConfig = field(
        default_factory=lambda: AudioEncoderConfig.preset("tiny"))
    llm: LLMConfig = field(default_factory=lambda: LLMConfig.preset("tiny"))
    interleave: InterleaveConfig = field(
        default_factory=lambda: InterleaveConfig.preset("tiny"))
    connector: ConnectorConfig = field(
        default_factory=lambda: ConnectorConfig.preset("tiny", llm_hidden=256))
    motion: MotionTokenizerConfig = field(
        default_factory=lambda: MotionTokenizerConfig.preset("tiny"))
    codec: SpeechCodecConfig = field(default_factory=lambda: SpeechCodecConfig.preset("tiny"))

    @classmethod
    def preset(cls, name: str, **overrides) -> "A2LLMConfig":
        """Every component's ``name`` preset, linked.

        ``overrides`` maps a part name to a dict of field overrides, e.g.
        ``A2LLMConfig.preset("edge", llm=dict(hidden_size=64, ...))``.
        """
        if name not in PRESETS:
            raise KeyError(f"A2LLMConfig: unknown preset {name!r}; "
                           f"known: {', '.join(PRESETS)}")
        unknown = set(overrides) - set(_PARTS)
        if unknown:
            raise KeyError(f"A2LLMConfig.preset: unknown parts {sorted(unknown)}")
        parts = {p: c.preset(name, **overrides.get(p, {})) for p, c in _PARTS.items()}
        llm, motion = parts["llm"], parts["motion"]
        links = {"audio": dict(llm_hidden=llm.hidden_size, n_mels=parts["mel"].n_mels),
                 "connector": dict(llm_hidden=llm.hidden_size, n_levels=motion.n_levels,
                                   codebook_size=motion.codebook_size)}
        for part, values in links.items():
            values = {k: v for k, v in values.items() if k not in overrides.get(part, {})}
            parts[part] = dataclasses.replace(parts[part], **values)
        return cls(preset_name=name, **parts)

    def __post_init__(self):
        checks = {"audio.llm_hidden": (self.audio.llm_hidden, self.llm.hidden_size),
                  "audio.n_mels": (self.audio.n_mels, self.mel.n_mels),
                  "connector.llm_hidden": (self.connector.llm_hidden, self.llm.hidden_size),
                  "connector.n_levels": (self.connector.n_levels, self.motion.n_levels),
                  "connector.codebook_size": (self.connector.codebook_size,
                                              self.motion.codebook_size)}
        bad = [name for name, (a, b) in checks.items() if a != b]
        if bad:
            raise ConfigMismatchError("A2LLMConfig (linked sizes)", differing=bad)

    def model_diff(self, other: "A2LLMConfig") -> list:
        """Fields that change the model (dotted names): every field but the folder
        paths of :data:`PATH_FIELDS`, which may be written relative to wherever a
        checkpoint lies (the folders themselves are checked by fingerprint)."""
        paths = {f"{part}.{name}" for part, name in PATH_FIELDS}
        return [name for name in self.diff(other) if name not in paths]

    def check_same_model(self, other: "A2LLMConfig") -> None:
        """Raise :class:`ConfigMismatchError` naming the fields of :meth:`model_diff`."""
        differing = self.model_diff(other)
        if differing:
            raise ConfigMismatchError(type(self).__name__, differing=differing)

    def with_paths(self, **paths: str) -> "A2LLMConfig":
        """Copy with path fields replaced, e.g. ``with_paths(backbone=...)``."""
        parts = {}
        for part, name in PATH_FIELDS:
            if name in paths:
                parts[part] = dataclasses.replace(getattr(self, part), **{name: paths[name]})
        return dataclasses.replace(self, **parts)


#: Config fields naming a folder: absolute, or relative to the checkpoint directory.
PATH_FIELDS = (("llm", "backbone"), ("codec", "token2wav_dir"))

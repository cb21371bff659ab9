"""Base for the per-component config dataclasses.

Every component has one dataclass deriving from :class:`ConfigBase` with named
presets (``tiny`` for CPU tests, ``edge`` for Jetson Orin, ``paper`` for the
7B setup).  Configs serialise to plain JSON-able dicts; loading a dict whose
fields do not match the dataclass raises :class:`ConfigMismatchError` naming
the offending fields.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import typing
from typing import Any, ClassVar, Dict, Mapping, Optional

PRESETS = ("tiny", "edge", "paper")


class ConfigMismatchError(ValueError):
    """A stored config does not match the code's dataclass."""

    def __init__(self, cls_name: str, unknown=(), missing=(), differing=()):
        self.unknown = sorted(unknown)
        self.missing = sorted(missing)
        self.differing = sorted(differing)
        parts = []
        if self.unknown:
            parts.append("unknown fields: " + ", ".join(self.unknown))
        if self.missing:
            parts.append("missing fields: " + ", ".join(self.missing))
        if self.differing:
            parts.append("differing fields: " + ", ".join(self.differing))
        super().__init__(f"{cls_name} config mismatch ({'; '.join(parts)})")


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> Dict[str, str]:
    """Field name -> the ``#:`` doc comment written right above it in ``cls``'s source
    (several lines joined; a field without one is absent).  Empty when the source
    cannot be read (e.g. a stripped install).  Used for parameter descriptions."""
    try:
        lines, _ = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return {}
    source = textwrap.dedent("".join(lines))
    tree = ast.parse(source)
    inline = _inline_comments(source)
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: Dict[str, str] = {}
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        comment, row = [], node.lineno - 2  # 0-based index of the line above the field
        while row >= 0 and lines[row].strip().startswith("#:"):
            comment.insert(0, lines[row].strip()[2:].strip())
            row -= 1
        if not comment and node.end_lineno in inline:
            comment = [inline[node.end_lineno]]
        if comment:
            docs[node.target.id] = " ".join(comment)
    for name, text in _docstring_bullets(inspect.getdoc(cls) or "").items():
        docs.setdefault(name, text)
    return docs


def _docstring_bullets(doc: str) -> Dict[str, str]:
    """``* ``name``: text`` (or ``* ``a`` / ``b``: text``) bullets of a class docstring."""
    import re
    out: Dict[str, str] = {}
    bullets = re.split(r"\n\s*\*\s+", "\n" + doc)
    for bullet in bullets[1:]:
        head = re.match(r"((?:``\w+``(?:\s*/\s*)?)+):\s*(.*)", bullet, re.S)
        if head:
            text = " ".join(head.group(2).split())
            for name in re.findall(r"``(\w+)``", head.group(1)):
                out[name] = text
    return out


def _inline_comments(source: str) -> Dict[int, str]:
    """1-based line -> the comment that ends a code line (``x: int = 3  # doc``)."""
    import io
    import tokenize
    out: Dict[int, str] = {}
    code_lines = set()
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT and tok.start[0] in code_lines:
                out[tok.start[0]] = tok.string.lstrip("#").strip()
            elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                                  tokenize.DEDENT, tokenize.COMMENT):
                code_lines.add(tok.start[0])
    except (tokenize.TokenError, IndentationError):
        return {}
    return out


@dataclasses.dataclass
@dataclasses.dataclass(frozen=True)
class Bound:
    """The interval a numeric field must lie in: ``low``/``high`` (None: unbounded),
    each end included unless ``low_open``/``high_open``.  Checked by
    :meth:`ConfigBase.check_bounds` and shown as the ROS parameter's range."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the interval (NaN never does)."""
        if value != value:  # NaN
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None
                    and (value >= self.high if self.high_open else value > self.high))

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return "any value"


def at_least(low: float) -> Bound:
    """``>= low``."""
    return Bound(low)


def above(low: float) -> Bound:
    """``> low``."""
    return Bound(low, low_open=True)


def between(low: float, high: float) -> Bound:
    """``[low, high]``."""
    return Bound(low, high)


class ConfigBase:
    """Mixin with dict round-trip, strict loading, presets and field bounds."""

    #: Preset name -> field overrides, only for the presets (:data:`PRESETS`) that
    #: differ from the defaults; a class whose presets are all its defaults has none.
    PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: Numeric field -> its :class:`Bound` (the one place a field's range is written:
    #: checked on construction and shown by ``ros2 param describe``).
    BOUNDS: ClassVar[Mapping[str, Bound]] = {}

    def __post_init__(self):
        self.check_bounds()

    def check_bounds(self) -> None:
        """Raise ValueError naming every field outside its :attr:`BOUNDS`."""
        bad = [f"{name} must be {bound}, got {getattr(self, name)}"
               for name, bound in self.BOUNDS.items()
               if not bound.contains(getattr(self, name))]
        if bad:
            raise ValueError(f"{type(self).__name__}: " + "; ".join(bad))

    @classmethod
    def preset(cls, name: str, **overrides):
        """Return the named preset, with optional field overrides."""
        known = list(PRESETS) + [n for n in cls.PRESETS if n not in PRESETS]
        if name not in known:
            raise KeyError(f"{cls.__name__}: unknown preset {name!r}; "
                           f"known: {', '.join(known)}")
        values = dict(cls.PRESETS.get(name, {}))
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> Dict[str, Any]:
        """Plain-JSON dict (nested configs become nested dicts)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], strict: bool = True):
        """Build from a dict; with ``strict`` unknown or missing fields raise."""
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(data) - set(fields)
        required = {n for n, f in fields.items()
                    if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING}
        missing = (set(fields) - set(data)) if strict else (required - set(data))
        if strict and (unknown or missing):
            raise ConfigMismatchError(cls.__name__, unknown, missing)
        kwargs = {}
        for name, value in data.items():
            if name not in fields:
                continue
            hint = hints.get(name)
            if isinstance(hint, type) and issubclass(hint, ConfigBase) and \
                    isinstance(value, Mapping):
                value = hint.from_dict(value, strict=strict)
            elif isinstance(value, list) and _is_tuple_hint(hint):
                value = tuple(value)
            kwargs[name] = value
        return cls(**kwargs)

    def diff(self, other: "ConfigBase", prefix: str = "") -> list:
        """Names of fields (dotted for nested configs) that differ."""
        out = []
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name, None)
            if isinstance(a, ConfigBase) and isinstance(b, ConfigBase):
                out.extend(a.diff(b, prefix + f.name + "."))
            elif a != b:
                out.append(prefix + f.name)
        return out

    def check_matches(self, other: "ConfigBase") -> None:
        """Raise :class:`ConfigMismatchError` naming fields that differ."""
        differing = self.diff(other)
        if differing:
            raise ConfigMismatchError(type(self).__name__, differing=differing)


def _is_tuple_hint(hint) -> bool:
    return hint is tuple or typing.get_origin(hint) is tuple

"""``latency.md``: per-turn latencies as a markdown table, with summary rows and a legend.

Generic: a table is rows of dicts and a column spec (:class:`Column`: key,
header, number format, unit, description, whether it is summarised).  The
default spec :data:`LATENCY_COLUMNS` is the demo's: turn, question end, first
text / audio / FLAME after the question end, real-time factor and
audio/FLAME skew.  Missing or non-finite values print as an em dash and are
left out of the summary rows (mean, median, p95, max by default).

    write_latency_md("demo_out/latency.md", [
        {"turn": 1, "question_end_s": 2.31, "first_text_ms": 410, "first_audio_ms": 620,
         "first_flame_ms": 640, "rtf": 0.42, "skew_ms": 3.0}],
        meta={"device": "2-core CPU", "checkpoint": "tiny (random)"})
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

DASH = "\u2014"
SUMMARIES = ("mean", "median", "p95", "max")


@dataclass(frozen=True)
class Column:
    """One table column: ``rows[i][key]`` formatted with ``fmt`` (a ``str.format`` spec)."""

    key: str
    header: str = ""
    fmt: str = "{:.1f}"
    unit: str = ""
    description: str = ""
    summary: bool = True  # take part in the summary rows

    @property
    def title(self) -> str:
        head = self.header or self.key
        return f"{head} ({self.unit})" if self.unit else head


LATENCY_COLUMNS = (
    Column("turn", "Turn", "{}", summary=False, description="conversation turn id"),
    Column("question_end_s", "Question end", "{:.2f}", "s",
           "end of the user's question (end of utterance), seconds since the start",
           summary=False),
    Column("first_text_ms", "First text", "{:.0f}", "ms",
           "question end -> first ResponseText message"),
    Column("first_audio_ms", "First audio", "{:.0f}", "ms",
           "question end -> first speech audio chunk"),
    Column("first_flame_ms", "First FLAME", "{:.0f}", "ms",
           "question end -> first FlameChunk"),
    Column("rtf", "RTF", "{:.2f}", "",
           "generation time / answer audio duration (below 1: faster than real time)"),
    Column("skew_ms", "A/V skew", "{:+.1f}", "ms",
           "FLAME presentation time minus audio presentation time of the same instant"),
)

ColumnSpec = Union[Column, str, Tuple]
Rows = Union[Sequence[Mapping], Mapping[object, Mapping]]


def as_columns(spec: Iterable[ColumnSpec]) -> List[Column]:
    """Column objects from Columns, keys, or tuples ``(key, header, fmt, unit, description)``."""
    out = []
    for item in spec:
        if isinstance(item, Column):
            out.append(item)
        elif isinstance(item, str):
            out.append(Column(item))
        else:
            out.append(Column(*item))
    return out


def as_rows(rows: Rows, key: str = "turn") -> List[dict]:
    """A list of row dicts; a mapping ``id -> row`` puts ``id`` under ``key`` when absent."""
    if isinstance(rows, Mapping):
        return [{key: ident, **dict(row)} for ident, row in rows.items()]
    return [dict(row) for row in rows]


def _number(value) -> Optional[float]:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def format_value(value, column: Column) -> str:
    """Cell text: ``column.fmt`` for numbers, the text for strings, an em dash when missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    try:
        text = column.fmt.format(value)
    except (ValueError, TypeError):
        text = str(value)
    return text.replace("|", "\\|")


def summary_rows(rows: Sequence[Mapping], columns: Sequence[Column],
                 which: Sequence[str] = SUMMARIES) -> List[dict]:
    """One row per statistic in ``which`` (mean, median, p95, max, min) over finite values."""
    funcs = {"mean": np.mean, "median": np.median, "max": np.max, "min": np.min,
             "p95": lambda v: np.percentile(v, 95)}
    out = []
    for name in which:
        row = {}
        for col in columns:
            values = [_number(r.get(col.key)) for r in rows] if col.summary else []
            values = [v for v in values if v is not None]
            row[col.key] = float(funcs[name](values)) if values else None
        out.append(row)
    return out


def markdown_table(rows: Rows, columns: Iterable[ColumnSpec] = LATENCY_COLUMNS,
                   summaries: Sequence[str] = SUMMARIES) -> str:
    """The markdown table (header, rows, bold summary rows) of ``rows``."""
    cols = as_columns(columns)
    body = as_rows(rows)
    lines = ["| " + " | ".join(c.title for c in cols) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(cols))) + "|"]
    for row in body:
        lines.append("| " + " | ".join(format_value(row.get(c.key), c) for c in cols) + " |")
    if body and summaries and any(c.summary for c in cols):
        for name, row in zip(summaries, summary_rows(body, cols, summaries)):
            cells = [f"**{name}**"] + [format_value(row[c.key], c) if c.summary else ""
                                       for c in cols[1:]]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def latency_markdown(rows: Rows, columns: Iterable[ColumnSpec] = LATENCY_COLUMNS, *,
                     title: str = "Latency", intro: Optional[str] = None,
                     meta: Optional[Mapping[str, object]] = None,
                     notes: Sequence[str] = (), summaries: Sequence[str] = SUMMARIES) -> str:
    """The whole report: title, intro, setup list, table, column legend, notes."""
    cols = as_columns(columns)
    parts = [f"# {title}", ""]
    if intro:
        parts += [intro.strip(), ""]
    if meta:
        parts += [f"- **{k}**: {v}" for k, v in meta.items()] + [""]
    body = as_rows(rows)
    parts += [markdown_table(body, cols, summaries) if body else "_No turns recorded._", ""]
    legend = [f"- **{c.title}**: {c.description}" for c in cols if c.description]
    if legend:
        parts += ["Columns:", ""] + legend + [""]
    if notes:
        parts += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(parts)


def write_latency_md(path, rows: Rows, columns: Iterable[ColumnSpec] = LATENCY_COLUMNS,
                     **options) -> str:
    """Write :func:`latency_markdown` of ``rows`` to ``path``; returns the text.

    ``rows``: a list of dicts, or a mapping ``turn -> dict``.  ``options``:
    ``title``, ``intro``, ``meta`` (setup facts listed above the table),
    ``notes``, ``summaries``.
    """
    text = latency_markdown(rows, columns, **options)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf8")
    return text


def rows_from_events(turns: Mapping[int, Mapping[str, float]]) -> List[Dict[str, float]]:
    """Latency rows from per-turn event times in seconds.

    ``turns[turn]`` may hold ``question_end``, ``first_text``, ``first_audio``,
    ``first_flame`` (times on one clock, s), ``gen_s`` + ``audio_s`` (for the
    RTF) and ``skew_s``; missing events give missing cells.
    """
    rows = []
    for turn, ev in sorted(turns.items()):
        end = _number(ev.get("question_end"))
        row = {"turn": turn, "question_end_s": end}
        for name in ("first_text", "first_audio", "first_flame"):
            t = _number(ev.get(name))
            row[f"{name}_ms"] = None if t is None or end is None else (t - end) * 1000.0
        gen, audio = _number(ev.get("gen_s")), _number(ev.get("audio_s"))
        row["rtf"] = gen / audio if gen is not None and audio else None
        skew = _number(ev.get("skew_s"))
        row["skew_ms"] = None if skew is None else skew * 1000.0
        rows.append(row)
    return rows

"""latency.md: table, summary rows, legend, missing values."""
import math

from a2llm_ros.tools.demo.report import (DASH, Column, latency_markdown, markdown_table,
                                         rows_from_events, write_latency_md)


def test_latency_report_table_and_summary(tmp_path):
    rows = {1: {"question_end_s": 2.0, "first_text_ms": 300, "first_audio_ms": 500,
                "first_flame_ms": 520, "rtf": 0.5, "skew_ms": 2.0},
            2: {"question_end_s": 9.5, "first_text_ms": 100, "first_audio_ms": None,
                "first_flame_ms": float("nan"), "rtf": 0.7, "skew_ms": -4.0}}
    text = write_latency_md(tmp_path / "latency.md", rows, meta={"device": "cpu"},
                            notes=["synthetic"])
    assert (tmp_path / "latency.md").read_text() == text
    lines = text.splitlines()
    assert lines[0] == "# Latency" and "- **device**: cpu" in lines
    table = [ln for ln in lines if ln.startswith("|")]
    assert table[0].startswith("| Turn | Question end (s) | First text (ms)")
    assert table[2] == "| 1 | 2.00 | 300 | 500 | 520 | 0.50 | +2.0 |"
    assert table[3] == f"| 2 | 9.50 | 100 | {DASH} | {DASH} | 0.70 | -4.0 |"
    mean = next(ln for ln in table if ln.startswith("| **mean**"))
    assert mean == "| **mean** |  | 200 | 500 | 520 | 0.60 | -1.0 |"
    assert any(ln.startswith("| **p95**") for ln in table)
    assert "- **RTF**: generation time / answer audio duration" in text


def test_generic_columns_and_events():
    table = markdown_table([{"name": "a|b", "v": 1.234}], ["name", ("v", "Value", "{:.2f}")],
                           summaries=("max",))
    assert "| a\\|b | 1.23 |" in table and "| **max** | 1.23 |" in table
    rows = rows_from_events({3: {"question_end": 10.0, "first_text": 10.25, "first_audio": 10.5,
                                 "gen_s": 1.0, "audio_s": 4.0, "skew_s": 0.001}})
    assert rows[0]["first_text_ms"] == 250.0 and rows[0]["rtf"] == 0.25
    assert rows[0]["first_flame_ms"] is None and math.isclose(rows[0]["skew_ms"], 1.0)
    assert "_No turns recorded._" in latency_markdown([], [Column("turn")])

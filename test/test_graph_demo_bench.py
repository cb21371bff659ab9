"""``a2llm demo`` and ``a2llm bench --graph`` end to end (a random tiny checkpoint stands in
for the shipped default one), and the demo's advice when the default checkpoint is missing."""
import json

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy missing: run through `make test`")
pytest.importorskip("a2llm_ros.msg", reason="interfaces not built/sourced: run `make test`")
am = pytest.importorskip("audio_common_msgs.msg", reason="run through `make test`")
if not hasattr(am, "AudioDataStamped"):
    pytest.skip("the fixtures are ros-drivers bags", allow_module_level=True)

from ros_testing import unique_namespace  # noqa: E402

from a2llm_ros.tools.cli import main  # noqa: E402

pytestmark = pytest.mark.ros

TAB_BLUE, TAB_RED = (31, 119, 180), (214, 39, 40)  # jaw pitch / lip gap curves


@pytest.fixture(scope="module")
def checkpoint(checkpoint):
    """conftest's random tiny checkpoint; the demo and bench speak with espeak-ng."""
    if not __import__("shutil").which("espeak-ng"):
        pytest.skip("espeak-ng is not installed")
    return checkpoint


def _has_colour(img, rgb, tol=12):
    return bool((np.abs(img[..., :3].astype(int) - rgb).max(axis=-1) <= tol).any())


def test_demo_writes_every_file(checkpoint, tmp_path, capsys):
    from matplotlib.image import imread

    from a2llm_ros.tools.bags.io import bag_topics
    out = tmp_path / "demo_out"
    rc = main(["demo", "--out", str(out), "--checkpoint", checkpoint, "--max-answer-s", "1.0",
               "--namespace", unique_namespace("demo")])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    assert "a2llm demo: 2 answer(s)" in stdout and "files in" in stdout

    for name in ("answer_turn1.wav", "answer_turn2.wav", "answers.wav", "flame.npz",
                 "preview.png", "latency.md", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    import soundfile
    wave, rate = soundfile.read(out / "answer_turn1.wav")
    assert rate == 16000 and len(wave) == 16000  # 1.0 s answer
    flame = np.load(out / "flame.npz")
    assert flame["frames"].shape[1] == 58 and (np.diff(flame["stamps_ns"]) > 0).all()
    assert {1, 2} <= set(flame["turn_ids"].tolist()) and 0 in flame["turn_ids"]

    # An MCAP of every topic: the microphone in, everything the graph publishes out.
    assert list((out / "graph_bag").glob("*.mcap"))
    recorded = {t.rsplit("/", 1)[-1] for t in bag_topics(out / "graph_bag")}
    assert {"audio_stamped", "audio_info", "conversation_state", "response_text",
            "chunks", "frames", "diagnostics", "face_commands"} <= recorded

    # latency.md: a row per turn with the first-audio latency.
    text = (out / "latency.md").read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| 1 ") or ln.startswith("| 2 ")]
    assert len(rows) == 2 and all("\u2014" not in r.split("|")[5] for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert all(t["first_audio_ms"] > 0 for t in summary["turns"])

    # preview.png: faces (skin pixels) in the top strip, the two curves below.
    img = (imread(out / "preview.png") * 255).astype(np.uint8)
    assert img.shape[:2] == (900, 1600)
    strip = img[60:330].astype(int)
    skin = (strip[..., 0] > 150) & (strip[..., 0] - strip[..., 2] > 40) & (strip[..., 1] < 230)
    assert skin.mean() > 0.05
    lower = img[450:]
    assert _has_colour(lower, TAB_BLUE) and _has_colour(lower, TAB_RED)


def test_demo_without_default_checkpoint_says_how_to_build_it(tmp_path, monkeypatch, capsys):
    import a2llm_ros.checkpoint_files as ck
    monkeypatch.setattr(ck, "DEFAULT_CHECKPOINT", str(tmp_path / "not_built"))
    rc = main(["demo", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "make default-checkpoint" in err and str(tmp_path / "not_built") in err
    assert not (tmp_path / "out").exists()  # nothing ran with a random model


def test_bench_graph_prints_the_table(checkpoint, tmp_path, capsys):
    json_path = tmp_path / "bench" / "graph.json"
    rc = main(["bench", "--graph", "--checkpoint", checkpoint, "--runs", "1",
               "--speech-tokens", "25", "--json", str(json_path)])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    assert "| Turn | End-point ms | TTFA audio ms | TTFA FLAME ms |" in stdout
    assert "**mean**" in stdout and "RSS" in stdout
    report = json.loads(json_path.read_text())
    assert len(report["turns"]) == 2
    for turn in report["turns"]:
        assert turn["ttfa_ms"] > turn["endpoint_ms"] > 0
        assert turn["inproc_ttfa_ms"] > 0 and turn["ros_overhead"] > 0
        assert turn["stamp_skew_max_ms"] < 1.0 and turn["rtf"] > 0
    assert report["resources"]["rss_peak_mb"] > 0
    assert (tmp_path / "bench" / "graph_bench.md").exists()
    assert (tmp_path / "bench" / "graph_bench.png").stat().st_size > 10_000

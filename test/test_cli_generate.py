"""``a2llm init`` + ``a2llm generate`` on a random tiny checkpoint; bad inputs exit 2."""
import json
import os

import numpy as np
import pytest
import soundfile
import torch

from a2llm_ros.tools.cli import main

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ckpt"))
    assert main(["init", "--preset", "tiny", "--out", out, "--seed", "3"]) == 0
    return out


def write_question(path, seconds=1.2, rate=16000):
    rng = np.random.default_rng(0)
    soundfile.write(path, (0.1 * rng.standard_normal(int(rate * seconds))).astype(np.float32),
                    rate)
    return path


def test_generate_writes_outputs(ckpt, tmp_path, capsys):
    q = write_question(str(tmp_path / "q.wav"), rate=22050)  # resampled on read
    out = str(tmp_path / "out")
    rc = main(["generate", "--checkpoint", ckpt, "--input", q, "--out", out, "--seed", "1",
               "--max-speech-tokens", "37"])
    assert rc == 0
    audio, rate = soundfile.read(os.path.join(out, "answer.wav"), dtype="float32")
    assert rate == 16000 and audio.ndim == 1
    flame = np.load(os.path.join(out, "flame.npz"))
    frames = flame["frames"]
    assert frames.dtype == np.float32 and frames.shape[1] == 58 and int(flame["fps"]) == 25
    assert json.loads(str(flame["layout"]))["dim"] == 58 and int(flame["flame_version"]) == 2020
    # FLAME frames == answer duration x 25 (within one frame)
    assert abs(frames.shape[0] - audio.shape[0] / 16000 * 25) <= 1
    events = [json.loads(line) for line in open(os.path.join(out, "events.jsonl"))]
    assert events[-1]["type"] == "end" and events[-1]["n_frames"] == frames.shape[0]
    assert events[-1]["n_speech_tokens"] * 640 == audio.shape[0]
    assert sum(e["n_samples"] for e in events if e["type"] == "audio") == audio.shape[0]
    assert {"text", "audio", "flame", "end"} >= {e["type"] for e in events}
    assert "answer" in capsys.readouterr().out


def test_greedy_is_reproducible(ckpt, tmp_path):
    q = write_question(str(tmp_path / "q.wav"))
    outs = []
    for name in ("a", "b"):
        out = str(tmp_path / name)
        assert main(["generate", "--checkpoint", ckpt, "--input", q, "--out", out,
                     "--greedy", "--max-speech-tokens", "12"]) == 0
        outs.append(np.load(os.path.join(out, "flame.npz"))["frames"])
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("kind", ["missing", "empty", "nan", "short"])
def test_bad_input_exit_code_2(ckpt, tmp_path, capsys, kind):
    path = str(tmp_path / f"{kind}.wav")
    if kind == "empty":
        soundfile.write(path, np.zeros(0, np.float32), 16000)
    elif kind == "nan":
        soundfile.write(path, np.full(8000, np.nan, np.float32), 16000, subtype="FLOAT")
    elif kind == "short":
        soundfile.write(path, np.zeros(100, np.float32), 16000)
    rc = main(["generate", "--checkpoint", ckpt, "--input", path, "--out",
               str(tmp_path / "o")])
    assert rc == 2
    assert "bad input audio" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")


def test_missing_checkpoint_is_clear(tmp_path, capsys):
    q = write_question(str(tmp_path / "q.wav"))
    rc = main(["generate", "--checkpoint", str(tmp_path / "nope"), "--input", q,
               "--out", str(tmp_path / "o")])
    assert rc == 1 and "not found" in capsys.readouterr().err

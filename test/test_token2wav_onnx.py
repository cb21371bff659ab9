"""The tiny token2wav ONNX stand-ins: real I/O names/dtypes/ranks, sane behaviour."""
import numpy as np
import pytest

import onnxruntime as ort

from a2llm_ros.tools.data.token2wav_onnx import (CAMPPLUS_INPUT, CAMPPLUS_OUTPUT, S3_INPUTS,
                                                 S3_OUTPUT, write_tiny_campplus,
                                                 write_tiny_speech_tokenizer)


_ORT_TYPES = {"float32": "tensor(float)", "int32": "tensor(int32)", "int64": "tensor(int64)"}
_NP_TYPES = {"float32": np.float32, "int32": np.int32, "int64": np.int64}


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "speech_tokenizer_v2_25hz.onnx"
    write_tiny_speech_tokenizer(str(path))
    return _session(path)


@pytest.fixture(scope="module")
def campplus(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "campplus.onnx"
    write_tiny_campplus(str(path))
    return _session(path)


def _io(args):
    return tuple((a.name, a.type, len(a.shape)) for a in args)


def _expect(specs):
    return tuple((name, _ORT_TYPES[dtype], rank) for name, dtype, rank in specs)


def _tokens(session, mel, lengths=None):
    if lengths is None:
        lengths = np.full(mel.shape[0], mel.shape[2], np.int32)
    return session.run(None, {S3_INPUTS[0][0]: mel, S3_INPUTS[1][0]: lengths})[0]


def test_tokenizer_io_matches_the_real_graph(tokenizer):
    assert _io(tokenizer.get_inputs()) == _expect(S3_INPUTS)
    assert _io(tokenizer.get_outputs()) == _expect((S3_OUTPUT,))


def test_campplus_io_matches_the_real_graph(campplus):
    assert _io(campplus.get_inputs()) == _expect((CAMPPLUS_INPUT,))
    assert _io(campplus.get_outputs()) == _expect((CAMPPLUS_OUTPUT,))


@pytest.mark.parametrize("frames", [4, 7, 400])
def test_tokenizer_gives_one_id_per_four_frames(tokenizer, frames):
    mel = np.random.default_rng(frames).standard_normal((2, 128, frames)).astype(np.float32)
    ids = _tokens(tokenizer, mel)
    assert ids.dtype == _NP_TYPES[S3_OUTPUT[1]]
    assert ids.shape == (2, frames // 4)
    assert ids.min() >= 0 and ids.max() < 6561


def test_tokenizer_depends_on_its_input_and_is_deterministic(tokenizer, tmp_path):
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((1, 128, 400)).astype(np.float32) for _ in range(2))
    ids_a = _tokens(tokenizer, a)
    assert not np.array_equal(ids_a, _tokens(tokenizer, b))
    assert len(np.unique(ids_a)) > 10  # spread over the vocabulary, not one id
    np.testing.assert_array_equal(ids_a, _tokens(tokenizer, a))
    path = tmp_path / "again.onnx"
    write_tiny_speech_tokenizer(str(path))  # same seed -> same graph
    np.testing.assert_array_equal(ids_a, _tokens(_session(path), a))


def test_tokenizer_uses_the_lengths(tokenizer):
    mel = np.random.default_rng(3).standard_normal((1, 128, 400)).astype(np.float32)
    full = _tokens(tokenizer, mel)
    half = _tokens(tokenizer, mel, np.array([200], np.int32))
    np.testing.assert_array_equal(full[:, :50], half[:, :50])
    assert not np.array_equal(full[:, 50:], half[:, 50:])


def test_campplus_gives_a_finite_input_dependent_embedding(campplus):
    rng = np.random.default_rng(0)
    name = CAMPPLUS_INPUT[0]
    embs = []
    for scale in (1.0, 3.0):
        fbank = (scale * rng.standard_normal((1, 250, 80))).astype(np.float32)
        fbank -= fbank.mean(axis=1, keepdims=True)  # mean-normalised, like the real front end
        emb = campplus.run(None, {name: fbank})[0]
        assert emb.shape == (1, 192) and emb.dtype == np.float32
        assert np.isfinite(emb).all()
        embs.append(emb)
    assert np.abs(embs[0] - embs[1]).max() > 1e-3

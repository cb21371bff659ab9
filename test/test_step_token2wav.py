"""Step-Audio-2-mini's codec (CosyVoice2 S3 tokens -> flow matching -> HiFT, 24 kHz) on a
tiny ``token2wav/`` folder written in the exact published layout."""
import os
import shutil

import numpy as np
import pytest
import torch

from a2llm_ros.audio.io import write_wav
from a2llm_ros.constants import FLAME_FPS, SAMPLE_RATE
from a2llm_ros.tools.data.token2wav_fixture import write_token2wav
from a2llm_ros.model.codecs import make_codec
from a2llm_ros.model.configs import SpeechCodecConfig
from a2llm_ros.model.step_token2wav import (OUTPUT_RATE, SAMPLES_PER_TOKEN, TOKEN2WAV_FILES,
                                            CodecError, prompt_mel)

#: Streaming vs one-shot tolerance on the flow's mel: mean |difference| as a fraction of
#: the one-shot mel's standard deviation.  Measured 2026-12-04 on the tiny folder
#: (160 tokens, no cache trimming): 0.09 % (the chunked encoder sees 3 tokens of
#: lookahead, the one-shot pass the whole answer).
MEL_TOLERANCE = 0.01
#: The vocoder streamed in chunks (mel and source carried, 160 ms Hamming cross-fade)
#: vs one pass over the same mel, compared on the audio's log-mel: at most this times
#: the difference between two one-pass renderings that differ only in the source
#: noise seed (a random HiFT's output is dominated by its noise source; measured
#: 2026-12-04: 0.48 vs 0.50).
VOCODER_NOISE_RATIO = 1.2


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_token2wav(str(tmp_path_factory.mktemp("t2w") / "token2wav"))


@pytest.fixture(scope="module")
def codec(folder):
    return make_codec(SpeechCodecConfig.step(folder, device="cpu"))


def _codes(n, seed=1):
    return torch.randint(0, 6561, (n,), generator=torch.Generator().manual_seed(seed))


def _stream(t2w, codes, piece):
    state, sizes, parts = t2w.init_state(), [], []
    for chunk in codes.split(piece):
        audio, state = t2w.step(chunk, state)
        sizes.append(audio.shape[0])
        parts.append(audio)
    audio, state = t2w.flush(state)
    sizes.append(audio.shape[0])
    parts.append(audio)
    return torch.cat(parts), sizes, state


def test_load_stream_flush_lengths(codec):
    tok, t2w = codec
    assert t2w.sample_rate == OUTPUT_RATE == 24_000 and t2w.samples_per_token == 960
    assert t2w.lookahead_tokens == 3 and t2w.first_chunk_tokens == 28
    codes = _codes(60)
    audio, sizes, state = _stream(t2w, codes, 5)
    # nothing until 25 + 3 tokens; then one chunk less the vocoder's held-back 160 ms
    assert sizes[:5] == [0] * 5 and sizes[5] == 25 * 960 - 8 * 480
    assert sum(sizes) == audio.shape[0] == 60 * SAMPLES_PER_TOKEN
    assert state.n_tokens == 60 and state.n_samples == 60 * 960
    assert torch.isfinite(audio).all() and float(audio.abs().max()) > 1e-3


@pytest.mark.parametrize("n", [0, 1, 10, 28, 53])
def test_short_and_boundary_lengths(codec, n):
    _, t2w = codec
    audio, sizes, _ = _stream(t2w, _codes(n, seed=n), 7)
    assert audio.shape[0] == n * SAMPLES_PER_TOKEN
    if n < 28:
        assert sum(sizes[:-1]) == 0  # everything comes with the flush


def test_arrival_pattern_does_not_change_audio(codec):
    _, t2w = codec
    codes = _codes(70)
    a, _, _ = _stream(t2w, codes, 1)
    b, _, _ = _stream(t2w, codes, 9)
    assert torch.equal(a, b) and torch.equal(a, t2w.decode(codes))


def _rel(a, b):
    return float((a - b).abs().mean() / b.std())


def test_stream_matches_one_shot_mel(folder):
    """Without cache trimming the streamed flow equals the one-shot pass within
    MEL_TOLERANCE over a 6.4 s answer (8 chunks)."""
    _, t2w = make_codec(SpeechCodecConfig.step(folder, device="cpu",
                                               estimator_cache_frames=1000))
    codes = _codes(160)
    stream, once = t2w.stream_mel(codes), t2w.one_shot_mel(codes)
    assert stream.shape == once.shape == (320, 80)
    assert _rel(stream, once) < MEL_TOLERANCE, _rel(stream, once)


def test_trimmed_stream_matches_until_the_trim(codec):
    """With the official trim (prompt + last 100 frames) the first two chunks, decoded
    before any trim, match the one-shot mel; later ones draw the flow's noise from a
    capped offset, as upstream, so they are only checked for shape and finiteness."""
    _, t2w = codec
    codes = _codes(120)
    stream, once = t2w.stream_mel(codes), t2w.one_shot_mel(codes)
    assert stream.shape == once.shape == (240, 80) and torch.isfinite(stream).all()
    assert _rel(stream[:100], once[:100]) < MEL_TOLERANCE


def test_streamed_vocoder_matches_one_pass(codec):
    from a2llm_ros.model.step_token2wav import StepT2WState
    _, t2w = codec
    mel = t2w.one_shot_mel(_codes(100))  # [200, 80]
    once = t2w.vocode(mel)
    state = t2w.init_state()
    parts = []
    for start in range(0, 200, 50):
        last = start + 50 >= 200
        audio, carry = t2w._vocode(mel[start:start + 50].T[None], state, last)
        state = StepT2WState(**{**state.__dict__, **carry,
                                "n_samples": state.n_samples + audio.shape[0]})
        parts.append(audio)
    stream = torch.cat(parts)
    assert stream.shape == once.shape == (200 * 480,)
    spec = prompt_mel(once)  # [200, 80] log-mel of the audio
    with torch.random.fork_rng():
        torch.manual_seed(5)
        reseeded = t2w.hift(mel.T[None])[0][0]
    err, noise = _rel(prompt_mel(stream), spec), _rel(prompt_mel(reseeded), spec)
    assert err < VOCODER_NOISE_RATIO * noise, (err, noise)


def test_prompt_is_computed_once(codec, tmp_path):
    _, t2w = codec
    assert t2w.prompt() is t2w.prompt()
    assert t2w.prompt().tokens.shape[1] * 2 == t2w.prompt().n_frames


def test_token_ids_out_of_range(codec):
    _, t2w = codec
    state = t2w.init_state()
    with pytest.raises(ValueError, match=r"\[0, 6561\)"):
        t2w.step(torch.tensor([5, 6561]), state)
    with pytest.raises(ValueError, match=r"\[0, 6561\)"):
        t2w.step(torch.tensor([-1]), state)


def test_s3_tokenizer_counts_and_batch(codec):
    tok, _ = codec
    rng = np.random.default_rng(0)
    waves = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (640 * 7 + 100, 16000)]
    one = [tok.encode(w) for w in waves]
    assert [o.shape[0] for o in one] == [7, 25]
    batch = tok.encode_batch(waves)
    assert all(torch.equal(a, b) for a, b in zip(one, batch))
    assert all(int(o.min()) >= 0 and int(o.max()) < 6561 for o in one)
    long = 0.1 * rng.standard_normal(31 * SAMPLE_RATE).astype(np.float32)
    assert tok.encode(long).shape[0] == 31 * 25  # split into 30 s windows


# ----------------------------------------------------------------------------- bad input

def _copy(folder, tmp_path):
    dst = str(tmp_path / "token2wav")
    shutil.copytree(folder, dst)
    return dst


@pytest.mark.parametrize("name", TOKEN2WAV_FILES)
def test_missing_file_is_named(folder, tmp_path, name):
    dst = _copy(folder, tmp_path)
    os.remove(os.path.join(dst, name))
    with pytest.raises(CodecError, match=name.replace(".", r"\.")):
        make_codec(SpeechCodecConfig.step(dst, device="cpu"))


@pytest.mark.parametrize("name", ["flow.pt", "hift.pt", "campplus.onnx",
                                  "speech_tokenizer_v2_25hz.onnx"])
def test_truncated_file_is_named(folder, tmp_path, name):
    dst = _copy(folder, tmp_path)
    path = os.path.join(dst, name)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 3])
    with pytest.raises(CodecError, match=name.replace(".", r"\.")):
        make_codec(SpeechCodecConfig.step(dst, device="cpu"))


@pytest.mark.parametrize("old,new,error", [
    ("depth: 2", "depth: 3", r"flow\.pt does not match flow\.yaml.*missing"),
    ("!new:cosyvoice2.flow.decoder_dit.DiT", "!new:os.system", "os.system"),
], ids=["state_dict_mismatch", "foreign_class"])
def test_bad_flow_yaml(folder, tmp_path, old, new, error):
    """A flow.pt that does not match flow.yaml, and a flow.yaml naming a class outside
    the four flow classes (never instantiated), are refused naming what is wrong."""
    dst = _copy(folder, tmp_path)
    path = os.path.join(dst, "flow.yaml")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace(old, new))
    with pytest.raises(CodecError, match=error):
        make_codec(SpeechCodecConfig.step(dst, device="cpu"))


@pytest.mark.parametrize("kind", ["empty", "silent", "missing", "short"])
def test_bad_voice_prompt(folder, tmp_path, kind):
    path = str(tmp_path / "voice.wav")
    if kind == "empty":
        open(path, "wb").close()
    elif kind == "silent":
        write_wav(path, np.zeros(3 * SAMPLE_RATE, np.float32), SAMPLE_RATE)
    elif kind == "short":
        write_wav(path, 0.1 * np.ones(800, np.float32), SAMPLE_RATE)
    _, t2w = make_codec(SpeechCodecConfig.step(folder, device="cpu", prompt_wav=path))
    with pytest.raises(CodecError, match="voice prompt"):
        t2w.init_state()


def test_prompt_at_another_rate(folder, tmp_path):
    """A 44.1 kHz stereo prompt is read, resampled and gives the same length contract."""
    import soundfile
    rng = np.random.default_rng(3)
    wave = 0.2 * rng.standard_normal((3 * 44100, 2)).astype(np.float32)
    path = str(tmp_path / "voice44k.wav")
    soundfile.write(path, wave, 44100)
    _, t2w = make_codec(SpeechCodecConfig.step(folder, device="cpu", prompt_wav=path))
    assert t2w.decode(_codes(30)).shape[0] == 30 * 960


# ----------------------------------------------------------------------------- generator

@pytest.fixture(scope="module")
def step_model(tmp_path_factory, folder):
    from step_folder import write_step_folder

    from a2llm_ros.checkpoint import load_step_folder
    root = write_step_folder(str(tmp_path_factory.mktemp("step") / "Step-Audio-2-mini"))
    shutil.copytree(folder, os.path.join(root, "token2wav"))
    model = load_step_folder(root)
    return model


def test_step_folder_uses_step_codec(step_model):
    assert step_model.cfg.codec.kind == "step_token2wav"
    assert step_model.token2wav.sample_rate == 24_000


def test_generator_audio_and_flame_in_lockstep(step_model):
    from a2llm_ros.generation import AudioEvent, FlameEvent, GenerationConfig, StreamingGenerator
    from a2llm_ros.engines.torch_backend import generate_batch
    from a2llm_ros.engines.torch_backend import TorchBackend
    cfg = GenerationConfig(max_speech_tokens=40, seed=0)
    question = (0.1 * np.random.default_rng(0).standard_normal(2 * SAMPLE_RATE)).astype(
        np.float32)
    gen = StreamingGenerator(TorchBackend(step_model), cfg)
    result = gen.generate(question)
    n = len(result.speech_codes)
    assert n > 0
    audio = [e for e in result.events if isinstance(e, AudioEvent)]
    flame = [e for e in result.events if isinstance(e, FlameEvent)]
    assert all(e.sample_rate == 24_000 for e in audio)
    # contiguous audio pieces; frame i starts at sample 960 i: one timeline
    assert [e.start_sample for e in audio] == list(np.cumsum([0] + [len(e.samples)
                                                                    for e in audio])[:-1])
    assert result.audio.shape[0] == n * 960 == result.frames.shape[0] * 960
    for e in flame:
        assert e.start_time * 24_000 == pytest.approx(e.start_frame * 960)
        assert e.start_frame / FLAME_FPS == pytest.approx(e.start_time)
    for e in audio:
        assert e.start_time == pytest.approx(e.start_sample / 24_000)
    # events leave in time order: a FLAME event only once the audio under it is out
    emitted = 0
    for e in result.events:
        if isinstance(e, AudioEvent):
            emitted += len(e.samples)
        elif isinstance(e, FlameEvent):
            assert (e.start_frame + len(e.frames)) * 960 <= emitted
    batch = generate_batch(step_model, question, cfg)
    assert batch.speech_codes == result.speech_codes
    np.testing.assert_array_equal(batch.audio, result.audio)


# ----------------------------------------------------------------------------- targets

def test_data_speech_tokens_cli(folder, tmp_path, capsys):
    """`a2llm data speech-tokens` writes the S3 ids of every answer (batched)."""
    from test_data_flameqa import make_sample

    from a2llm_ros.tools.cli import main
    from a2llm_ros.tools.data.flameqa import FlameQAWriter
    from a2llm_ros.tools.data.speech_tokens import load_answer_tokens
    from a2llm_ros.model.step_token2wav import S3SpeechTokenizer
    data = str(tmp_path / "qa")
    samples = [make_sample(f"s{i}", seconds=0.8 + 0.3 * i, seed=i) for i in range(5)]
    with FlameQAWriter(data) as writer:
        for s in samples:
            writer.add(s)
    assert main(["data", "speech-tokens", data, "--token2wav", folder, "--batch", "2"]) == 0
    tokens = load_answer_tokens(os.path.join(data, "speech_tokens_s3.npz"))
    tok = S3SpeechTokenizer(SpeechCodecConfig.step(folder, device="cpu"), folder,
                            torch.device("cpu"))
    for s in samples:
        np.testing.assert_array_equal(tokens[s.id], tok.encode(s.answer_audio).numpy())
    assert main(["data", "speech-tokens", data, "--token2wav", str(tmp_path)]) == 2
    assert "missing or empty" in capsys.readouterr().out


def test_checkpoint_carries_the_codec_kind(step_model, tmp_path):
    """A checkpoint on the backbone reloads with Step's codec from the backbone folder."""
    from a2llm_ros.checkpoint import load_checkpoint, save_checkpoint
    out = str(tmp_path / "ckpt")
    save_checkpoint(step_model, out)
    again = load_checkpoint(out)
    assert again.cfg.codec.kind == "step_token2wav"
    assert again.token2wav.sample_rate == 24_000
    codes = _codes(30)
    assert torch.equal(again.token2wav.decode(codes), step_model.token2wav.decode(codes))


def test_doctor_reports_the_codec_folder(folder, tmp_path, capsys):
    from step_folder import write_step_folder

    from a2llm_ros.tools.cli import main
    root = write_step_folder(str(tmp_path / "Step-Audio-2-mini"))
    main(["doctor", "--checkpoint", root])
    assert "no token2wav/" in capsys.readouterr().out
    shutil.copytree(folder, os.path.join(root, "token2wav"))
    os.remove(os.path.join(root, "token2wav", "hift.pt"))
    main(["doctor", "--checkpoint", root])
    assert "incomplete (missing or empty hift.pt)" in capsys.readouterr().out
    shutil.copy(os.path.join(folder, "hift.pt"), os.path.join(root, "token2wav", "hift.pt"))
    main(["doctor", "--checkpoint", root])
    out = capsys.readouterr().out
    assert "token2wav/ complete" in out and "step_token2wav, 24 kHz" in out


def test_engine_export_refuses_the_step_codec(step_model, tmp_path):
    from a2llm_ros.engines import EngineError
    from a2llm_ros.tools.export.exporter import export_onnx
    with pytest.raises(EngineError, match="kmeans_mel.*step_token2wav.*backend torch"):
        export_onnx(step_model, str(tmp_path / "onnx"), log=lambda _: None)

"""Audio LLM pieces: vocabulary layout, interleaving schedule, audio encoder, training losses."""
import numpy as np
import pytest
import torch

from a2llm_ros.config import A2LLMConfig
from a2llm_ros.configbase import ConfigMismatchError
from a2llm_ros.model.a2llm import A2LLM
from a2llm_ros.model.audio_encoder import AudioEncoder, AudioEncoderConfig, n_positions
from a2llm_ros.model.audio_llm import (SPEECH, TEXT, InterleaveConfig, Schedule, VocabLayout,
                                       build_answer_sequence)
from a2llm_ros.model.text_tokenizer import CharTokenizer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return A2LLM(A2LLMConfig.preset("tiny"))


def test_vocab_layout_ranges():
    v = VocabLayout(n_text=128, n_speech=256)
    assert v.special("<pad>") == 128 and v.speech_start == 137 and v.size == 393
    assert v.speech_code(v.speech_id(17)) == 17 and v.is_speech(v.speech_id(255))
    assert v.is_text(127) and not v.is_text(v.special("<bos>"))
    m = v.kind_mask(TEXT, n_text_used=96)
    assert m[:96].all() and not m[96:128].any() and m[v.special("<text_end>")]
    assert m.sum() == 97
    s = v.kind_mask(SPEECH)
    assert s[v.speech_start:].all() and s[v.special("<speech_end>")] and s.sum() == 257


def test_interleaving_groups_and_ends():
    v, cfg = VocabLayout(128, 256), InterleaveConfig(text_per_group=4, speech_per_group=5)
    seq = build_answer_sequence(list(range(10)), list(range(23)), v, cfg)
    te, se = v.special("<text_end>"), v.special("<speech_end>")
    # 4 text, 5 speech, 4 text, 5 speech, 2 text + <text_end>, then speech only
    assert seq.ids[:4] == [0, 1, 2, 3]
    assert seq.ids[4:9] == [v.speech_id(i) for i in range(5)]
    assert seq.ids[18:21] == [8, 9, te]
    assert seq.ids[21:] == [v.speech_id(i) for i in range(10, 23)] + [se]
    assert sum(seq.is_speech_token) == 23 and sum(seq.is_text) == 11
    assert len(seq.ids) == 10 + 1 + 23 + 1


def test_schedule_text_after_speech_end():
    v, cfg = VocabLayout(128, 256), InterleaveConfig(2, 3)
    seq = build_answer_sequence(list(range(9)), [0, 1], v, cfg)
    assert seq.ids[-1] == v.special("<text_end>")  # text continues after <speech_end>
    s = Schedule.from_config(cfg)
    kinds = []
    for i, tok in enumerate(seq.ids):
        kinds.append(s.next_kind())
        s.push(tok in (v.special("<text_end>"), v.special("<speech_end>")))
    assert s.finished
    assert [k == TEXT for k in kinds] == seq.is_text


def test_text_stays_ahead_for_typical_answer():
    """A 30-character answer over 2 s of speech (0.62 chars/token, measured) ends text first."""
    v, cfg = VocabLayout(128, 256), InterleaveConfig.preset("tiny")
    seq = build_answer_sequence(list(range(30)), list(range(50)), v, cfg)
    text_end = seq.ids.index(v.special("<text_end>"))
    assert sum(seq.is_speech_token[:text_end]) < 50


def test_char_tokenizer_round_trip():
    tok = CharTokenizer.printable_ascii()
    assert tok.vocab_size == 96
    ids = tok.encode("Hello, Robo!")
    assert tok.decode(ids) == "Hello, Robo!" and 0 not in ids
    assert tok.encode("é") == [0]
    again = CharTokenizer.from_json(tok.to_json())
    assert again.chars == tok.chars


def test_audio_encoder_rates():
    enc = AudioEncoder(AudioEncoderConfig.preset("tiny"))
    for n_frames in (100, 157, 203):
        out = enc(torch.randn(2, 80, n_frames))
        assert out.shape == (2, n_positions(n_frames), 256)
    assert n_positions(200) == 25  # 2 s of mel -> 12.5 Hz


def test_audio_encoder_padding_exact():
    """Batched (padded) outputs equal each sample encoded alone."""
    torch.manual_seed(0)
    enc = AudioEncoder(AudioEncoderConfig.preset("tiny")).eval()
    lengths = [203, 150, 97]
    mels = [torch.randn(80, n) for n in lengths]
    batch = torch.zeros(3, 80, 203)
    for i, m in enumerate(mels):
        batch[i, :, :m.shape[1]] = m
    with torch.no_grad():
        out = enc(batch, torch.tensor(lengths))
        for i, m in enumerate(mels):
            alone = enc(m[None])[0]  # [n, H]
            torch.testing.assert_close(out[i, :alone.shape[0]], alone, atol=1e-5, rtol=1e-5)


def test_presets_link_sizes():
    for name, hidden in (("tiny", 256), ("edge", 896), ("paper", 3584)):
        cfg = A2LLMConfig.preset(name)
        assert cfg.audio.llm_hidden == cfg.connector.llm_hidden == cfg.llm.hidden_size == hidden
    paper = A2LLMConfig.preset("paper")
    assert (paper.audio.n_mels, paper.audio.d_model, paper.audio.n_layers) == (128, 1280, 32)
    assert (paper.llm.n_layers, paper.llm.n_heads, paper.llm.n_kv_heads) == (28, 28, 4)
    with pytest.raises(ConfigMismatchError, match="connector.llm_hidden"):
        A2LLMConfig.preset("tiny", connector=dict(llm_hidden=64))


def test_forward_train_losses_and_gradients(model):
    rng = np.random.default_rng(0)
    waves = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (16000, 24000)]
    batch = model.collate(waves, ["Hello there.", "Hi!"],
                          [rng.integers(0, 256, 52), rng.integers(0, 256, 31)],
                          [rng.integers(0, 256, (10, 6)), rng.integers(0, 256, (8, 6))])
    assert batch.motion_lengths.tolist() == [10, 6]  # min(n_speech // 5, n_codes)
    out = model.forward_train(batch)
    for key in ("text_ce", "speech_ce", "motion_ce", "total"):
        assert torch.isfinite(out[key]) and out[key] > 0
    # random init: CE close to log(vocab)
    assert abs(float(out["speech_ce"].detach()) - np.log(model.vocab.size)) < 1.5
    out["total"].backward()
    assert model.connector.pool.weight.grad.abs().sum() > 0
    assert model.audio_encoder.conv1.weight.grad.abs().sum() > 0


def test_tiny_param_budget(model):
    assert model.n_params() <= 20_000_000

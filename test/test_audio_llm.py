"""Audio LLM pieces: tokenizer, vocabulary, chat prompt, interleaving, audio encoder, losses."""
import numpy as np
import pytest
import torch

from a2llm_ros.config import A2LLMConfig
from a2llm_ros.configbase import ConfigMismatchError
from a2llm_ros.model.a2llm import A2LLM
from a2llm_ros.model.audio_encoder import Adapter, AudioEncoder
from a2llm_ros.model.chat import n_positions
from a2llm_ros.model.configs import AudioEncoderConfig
from a2llm_ros.model.chat import (SPEECH, TASK_TRANSCRIBE, TEXT, Schedule, Vocab,
                                  build_answer_sequence, build_prompt)
from a2llm_ros.model.configs import InterleaveConfig
from a2llm_ros.model.text_tokenizer import (CHAT_TOKENS, TextTokenizer, TokenizerError,
                                            make_tiny_tokenizer, speech_token)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return A2LLM(A2LLMConfig.preset("tiny"))


@pytest.fixture(scope="module")
def tok():
    return make_tiny_tokenizer(256)


@pytest.fixture(scope="module")
def vocab(tok):
    return Vocab.from_tokenizer(tok, 256, 384)


def test_vocab_resolved_by_name(tok, vocab):
    """Text ids below <audio_start>, speech code k = <audio_0> + k, pad code after them."""
    assert vocab.speech_start == tok.token_id("<audio_0>")
    assert vocab.speech_pad == tok.token_id("<audio_256>") == vocab.speech_start + 256
    assert vocab.audio_start == tok.token_id("<audio_start>") < vocab.speech_start
    assert vocab.speech_code(vocab.speech_id(17)) == 17 and vocab.is_speech(vocab.speech_id(255))
    assert not vocab.is_speech(vocab.speech_pad) and vocab.is_padding(vocab.speech_pad)
    assert vocab.is_text(tok.encode("a")[0]) and not vocab.is_text(vocab.eot)
    assert not vocab.is_text(vocab.unk) and not vocab.is_text(vocab.audio_start)
    m = vocab.kind_mask(TEXT)
    assert m[vocab.tts_pad] and not m[vocab.eot] and not m[vocab.unk] and not m[vocab.speech_start]
    s = vocab.kind_mask(SPEECH)
    assert s[vocab.tts_end] and int(s.sum()) == 257 and not s[vocab.speech_pad]


def test_vocab_refuses_ids_beyond_the_embedding(tok):
    with pytest.raises(ValueError, match="do not fit"):
        Vocab.from_tokenizer(tok, 256, 300)


def test_tokenizer_without_a_chat_token_is_refused(tmp_path, tok):
    import json
    tok.save(str(tmp_path))
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<tts_start>"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(TokenizerError, match="<tts_start>"):
        TextTokenizer.load(str(tmp_path))
    assert "<tts_start>" in CHAT_TOKENS and speech_token(3) == "<audio_3>"


def test_chat_prompt_format(tok, vocab):
    p = build_prompt(tok, vocab, 5)
    pieces = tok.tok.convert_ids_to_tokens(p.ids)
    text = "".join(pieces)
    assert text.startswith("<|BOT|>system\nYou are a helpful assistant.<|EOT|><|BOT|>human\n")
    assert text.endswith("<audio_end><|EOT|><|BOT|>assistant\n<tts_start>")
    assert p.ids[p.patch_start - 1] == vocab.audio_start
    assert p.ids[p.patch_start:p.patch_start + 5] == [vocab.audio_patch] * 5
    assert p.ids[p.patch_start + 5] == vocab.audio_end
    asr = build_prompt(tok, vocab, 5, TASK_TRANSCRIBE)
    assert asr.ids[:asr.patch_start] == p.ids[:p.patch_start]  # the shared prefix
    assert asr.ids[-1] != vocab.tts_start


def test_interleaving_groups_and_ends(vocab):
    cfg = InterleaveConfig(text_per_group=4, speech_per_group=5, enforce=True)
    seq = build_answer_sequence(list(range(1, 11)), list(range(23)), vocab, cfg)
    # 4 text, 5 speech, 4 text, 5 speech, 2 text + <tts_pad>, speech + <tts_end>, <|EOT|>
    assert seq.ids[:4] == [1, 2, 3, 4]
    assert seq.ids[4:9] == [vocab.speech_id(i) for i in range(5)]
    assert seq.ids[18:21] == [9, 10, vocab.tts_pad]
    tail = [vocab.speech_id(i) for i in range(10, 23)] + [vocab.tts_end, vocab.eot]
    assert seq.ids[21:] == tail
    assert sum(seq.is_speech_token) == 23 and sum(seq.is_text) == 12
    assert len(seq.ids) == 10 + 1 + 23 + 1 + 1


def test_schedule_text_after_speech_end(vocab):
    cfg = InterleaveConfig(2, 3, enforce=True)
    seq = build_answer_sequence(list(range(1, 10)), [0, 1], vocab, cfg)
    assert seq.ids[-2:] == [vocab.tts_pad, vocab.eot]  # text continues after <tts_end>
    s = Schedule.from_config(cfg)
    kinds = []
    for tok in seq.ids[:-1]:
        kinds.append(s.next_kind())
        s.push(tok in (vocab.tts_pad, vocab.tts_end))
    assert s.finished
    assert [k == TEXT for k in kinds] == seq.is_text[:-1]


def test_text_stays_ahead_for_typical_answer(vocab):
    """A 30-character answer over 2 s of speech (0.62 chars/token, measured) ends text first."""
    seq = build_answer_sequence(list(range(1, 31)), list(range(50)), vocab,
                                InterleaveConfig.preset("tiny"))
    text_end = seq.ids.index(vocab.tts_pad)
    assert sum(seq.is_speech_token[:text_end]) < 50


def test_tiny_tokenizer_round_trip(tok, tmp_path):
    ids = tok.encode("Hello, Robo!\n")
    assert tok.decode(ids) == "Hello, Robo!\n" and tok.unk_id not in ids
    assert tok.encode("é") == [tok.unk_id]
    tok.save(str(tmp_path))
    again = TextTokenizer.load(str(tmp_path))
    assert again.encode("<|BOT|>hi<tts_start>") == tok.encode("<|BOT|>hi<tts_start>")
    assert again.token_id("<audio_255>") == tok.token_id("<audio_255>")


def test_audio_encoder_rates():
    cfg = AudioEncoderConfig.preset("tiny")
    enc, ad = AudioEncoder(cfg), Adapter(cfg)
    for n_frames in (100, 157, 203):
        states = enc(torch.randn(2, 80, n_frames))
        assert states.shape == (2, ((n_frames - 1) // 2 + 1) // 2, 128)  # 25 Hz
        out = ad(states)
        assert out.shape[-1] == 256 and out.shape[1] >= n_positions(n_frames)
    # Step's <audio_patch> count: 2 s of audio (+ 479 padding samples) -> 202 frames -> 25
    assert n_positions(202) == 25 and n_positions(200) == 25


def test_audio_encoder_padding_exact():
    """Batched (padded) outputs equal each sample encoded alone."""
    torch.manual_seed(0)
    cfg = AudioEncoderConfig.preset("tiny")
    enc, ad = AudioEncoder(cfg).eval(), Adapter(cfg).eval()
    lengths = [203, 150, 97]
    mels = [torch.randn(80, n) for n in lengths]
    batch = torch.zeros(3, 80, 203)
    for i, m in enumerate(mels):
        batch[i, :, :m.shape[1]] = m
    with torch.no_grad():
        out = ad(enc(batch, torch.tensor(lengths)))
        for i, m in enumerate(mels):
            n = n_positions(m.shape[1])
            alone = ad(enc(m[None]))[0, :n]  # [n, H]
            torch.testing.assert_close(out[i, :n], alone, atol=1e-5, rtol=1e-5)


def test_presets_link_sizes():
    for name, hidden in (("tiny", 256), ("edge", 3584), ("paper", 3584)):
        cfg = A2LLMConfig.preset(name)
        assert cfg.audio.llm_hidden == cfg.connector.llm_hidden == cfg.llm.hidden_size == hidden
    paper = A2LLMConfig.preset("paper")
    assert (paper.audio.n_mels, paper.audio.d_model, paper.audio.n_layers) == (128, 1280, 32)
    assert (paper.llm.n_layers, paper.llm.n_heads, paper.llm.n_kv_heads) == (28, 28, 4)
    assert (paper.llm.vocab_size, paper.audio.adaptor_hidden, paper.mel.pad_samples) == (
        158720, 2048, 479)
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
    assert model.encoder.conv1.weight.grad.abs().sum() > 0
    assert model.adapter.linear2.weight.grad.abs().sum() > 0


def test_tiny_param_budget(model):
    assert model.n_params() <= 20_000_000


def test_shared_prefix_training_equals_full_forward(model):
    """_hidden runs the shared prompt prefix once; each row equals its own full forward."""
    rng = np.random.default_rng(1)
    waves = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (16000, 20000)]
    batch = model.collate(waves, ["Yes.", "No!"], [rng.integers(0, 256, 12),
                                                   rng.integers(0, 256, 7)],
                          [rng.integers(0, 256, (2, 6)), rng.integers(0, 256, (1, 6))],
                          tasks=[0, TASK_TRANSCRIBE])
    model.eval()
    with torch.no_grad():
        hidden, mask, offsets = model._hidden(batch)
        for i, w in enumerate(waves):
            mel = model.log_mel(w)
            prompt = model.prompt(n_positions(mel.shape[1]), int(batch.task[i]))
            full = torch.cat([model.prompt_embeds(prompt, model.encode_audio(mel[None])[0]),
                              model.embed_ids(batch.answer_ids[i, :batch.answer_lengths[i]])])
            ref, _ = model.llm(full[None])
            n = int(mask[i].sum())
            torch.testing.assert_close(hidden[i, :n], ref[0, prompt.patch_start:][:n],
                                       atol=1e-5, rtol=1e-5)

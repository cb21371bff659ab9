"""A tiny Step-Audio-2-mini folder in the published layout, through every entry point.

* ``load_checkpoint(folder)`` (the code path of the real folder): sizes from
  config.json, weights equal to the files' tensors, float32 on the CPU, the
  vocabulary's named ids at Step's numbers;
* ``a2llm generate`` on the bare folder; broken folders and bad audio give one
  clear error naming the file or key;
* an A²-LLM checkpoint on the folder stores only what A²-LLM adds plus the
  folder's path and fingerprint, and refuses a changed folder naming what changed;
* ``a2llm backbone-check`` agrees with an independent forward written here in
  plain torch from the safetensors (features, Whisper-style encoder, adaptor,
  Qwen2 with rope / GQA / SwiGLU / RMSNorm) and with prompt ids made here from
  the tokenizer file.
"""
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from step_folder import AUDIO_START_ID, N_SPEECH, SPEECH_START_ID, write_step_folder

from a2llm_ros.checkpoint import init_model, load_checkpoint, save_checkpoint
from a2llm_ros.checkpoint_files import CheckpointError
from a2llm_ros.tools.cli import main
from a2llm_ros.model.step_audio import BackboneError, fingerprint, step_config
from a2llm_ros.model.text_tokenizer import TokenizerError

torch.set_num_threads(1)

SHARD1 = "model-00001-of-00002.safetensors"
SHARD2 = "model-00002-of-00002.safetensors"
#: Small connector / motion tokenizer for checkpoints saved in these tests (the
#: paper preset's would be ~0.5 GB of random float32).
SMALL_HEADS = {"connector": dict(d_model=64, n_layers=1, n_heads=4, ff=128),
               "motion": dict(latent_dim=32, hidden=64, enc_depth=1, dec_depth=1)}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_step_folder(str(tmp_path_factory.mktemp("step") / "Step-Audio-2-mini"))


@pytest.fixture(scope="module")
def model(folder):
    return load_checkpoint(folder)


def folder_tensors(path):
    """Every tensor of a folder under its published name (as stored)."""
    with open(os.path.join(path, "model.safetensors.index.json")) as f:
        weight_map = json.load(f)["weight_map"]
    out = {}
    for name, shard in weight_map.items():
        with safe_open(os.path.join(path, shard), framework="pt") as f:
            out[name] = f.get_tensor(name)
    return out


def linked_copy(src, dst):
    """A copy of a folder whose files are hard links (replace a file by unlinking it first)."""
    shutil.copytree(src, dst, copy_function=os.link)
    return str(dst)


def replace_json(path, edit):
    with open(path) as f:
        data = json.load(f)
    edit(data)
    os.unlink(path)  # it may be a hard link to the shared folder
    with open(path, "w") as f:
        json.dump(data, f, indent=2)


def rewrite_shard(path, edit):
    tensors = load_file(path)
    edit(tensors)
    os.unlink(path)
    save_file(tensors, path, metadata={"format": "pt"})


def write_question(path, seconds=1.2, rate=16000, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.2 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)
    soundfile.write(path, wave.astype(np.float32), rate)
    return path


def small_config(folder):
    """``step_config(folder)`` (the bare folder's config) with a small connector and
    motion tokenizer."""
    cfg = step_config(folder)
    return dataclasses.replace(
        cfg, connector=dataclasses.replace(cfg.connector, **SMALL_HEADS["connector"]),
        motion=dataclasses.replace(cfg.motion, **SMALL_HEADS["motion"]))


# ----------------------------------------------------------------------------- loading

def test_load_folder_sizes_weights_and_vocab(folder, model):
    cfg = model.cfg
    assert (cfg.llm.hidden_size, cfg.llm.n_layers, cfg.llm.n_heads, cfg.llm.n_kv_heads,
            cfg.llm.intermediate_size, cfg.llm.vocab_size) == (64, 2, 4, 2, 128, 158720)
    assert (cfg.llm.rope_theta, cfg.llm.rms_norm_eps) == (1e6, 1e-6)
    assert (cfg.audio.n_mels, cfg.audio.d_model, cfg.audio.n_layers, cfg.audio.n_heads,
            cfg.audio.max_positions, cfg.audio.adaptor_hidden, cfg.audio.llm_hidden) == \
        (128, 64, 2, 4, 1500, 96, 64)
    assert cfg.mel.n_mels == 128 and cfg.llm.backbone == os.path.abspath(folder)
    files = folder_tensors(folder)
    state = {}
    for part in ("encoder", "adapter", "llm"):
        state.update({f"{part}.{k}": v for k, v in getattr(model, part).state_dict().items()})
    assert len(files) == 70
    for name, value in files.items():
        target = state["llm." + name if name.startswith(("model.", "lm_head.")) else name]
        assert target.dtype == torch.float32 and target.device.type == "cpu", name
        assert value.dtype == torch.bfloat16
        assert torch.equal(target, value.float()), name
    v = model.vocab
    assert (v.audio_start, v.speech_start, v.n_speech, v.speech_pad, v.size) == \
        (AUDIO_START_ID, SPEECH_START_ID, N_SPEECH, SPEECH_START_ID + N_SPEECH, 158720)
    assert v.text_limit == 151688 and v.bot < 151688 and v.eot < 151688
    assert sorted([v.audio_end, v.audio_patch, v.tts_start, v.tts_end, v.tts_pad]) == \
        [151689, 151690, 151692, 151693, 151694]
    assert model.backbone_dir == os.path.abspath(folder)
    # the placeholder codec has one code per speech token, every code distinct
    cents = model.token2wav.codebook.centroids
    assert cents.shape[0] == N_SPEECH and torch.unique(cents, dim=0).shape[0] == N_SPEECH


def test_load_float32_folder(tmp_path):
    path = write_step_folder(str(tmp_path / "f32"), seed=1, dtype=torch.float32)
    model = load_checkpoint(path)
    files = folder_tensors(path)
    assert all(t.dtype == torch.float32 for t in files.values())
    assert torch.equal(model.llm.lm_head.weight, files["lm_head.weight"])
    assert torch.equal(model.encoder.blocks[1].attn.key.weight,
                       files["encoder.blocks.1.attn.key.weight"])
    assert torch.equal(model.adapter.linear2.bias, files["adapter.linear2.bias"])


# ----------------------------------------------------------------------------- generate

def test_generate_cli_on_bare_folder(folder, tmp_path, capsys):
    q = write_question(str(tmp_path / "q.wav"), rate=22050)
    out = str(tmp_path / "out")
    rc = main(["generate", "--checkpoint", folder, "--input", q, "--out", out, "--seed", "1",
               "--max-speech-tokens", "10"])
    assert rc == 0, capsys.readouterr().err
    audio, rate = soundfile.read(os.path.join(out, "answer.wav"), dtype="float32")
    flame = np.load(os.path.join(out, "flame.npz"))
    frames = flame["frames"]
    assert rate == 16000 and audio.ndim == 1 and np.isfinite(audio).all()
    assert frames.dtype == np.float32 and frames.shape[1] == 58 and frames.shape[0] > 0
    assert abs(frames.shape[0] - audio.shape[0] / 16000 * 25) <= 1
    events = [json.loads(line) for line in open(os.path.join(out, "events.jsonl"))]
    assert events[-1]["type"] == "end" and events[-1]["n_frames"] == frames.shape[0]
    assert events[-1]["n_speech_tokens"] * 640 == audio.shape[0]


@pytest.mark.parametrize("kind", ["empty", "nan"])
def test_bad_audio_on_folder(folder, tmp_path, capsys, kind):
    path = str(tmp_path / f"{kind}.wav")
    if kind == "empty":
        soundfile.write(path, np.zeros(0, np.float32), 16000)
    else:
        soundfile.write(path, np.full(8000, np.nan, np.float32), 16000, subtype="FLOAT")
    rc = main(["generate", "--checkpoint", folder, "--input", path, "--out",
               str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "bad input audio" in err
    if kind == "empty":
        assert "audio file is empty" in err and path in err
    else:
        assert "NaN" in err
    assert not os.path.exists(tmp_path / "o")
    rc = main(["backbone-check", "--checkpoint", folder, "--input", path, "--json",
               str(tmp_path / "c.json")])
    assert rc == 2 and "bad input audio" in capsys.readouterr().err


# ----------------------------------------------------------------------------- bad folders

def test_missing_shard(folder, tmp_path):
    path = linked_copy(folder, tmp_path / "f")
    os.unlink(os.path.join(path, SHARD2))
    with pytest.raises(BackboneError, match=f"missing shard file.*{SHARD2}.*index.json"):
        load_checkpoint(path)


def test_shape_not_matching_config(folder, tmp_path):
    path = linked_copy(folder, tmp_path / "f")
    key = "model.layers.1.mlp.up_proj.weight"
    rewrite_shard(os.path.join(path, SHARD1),
                  lambda t: t.__setitem__(key, torch.zeros(100, 64, dtype=torch.bfloat16)))
    with pytest.raises(BackboneError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert SHARD1 in msg and key in msg and "(100, 64)" in msg and "(128, 64)" in msg


def test_wrong_model_type(folder, tmp_path):
    path = linked_copy(folder, tmp_path / "f")
    replace_json(os.path.join(path, "config.json"),
                 lambda c: c.__setitem__("model_type", "qwen2_audio"))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert "config.json" in msg and "'qwen2_audio'" in msg and "step_audio_2" in msg


def test_tokenizer_without_tts_start(tmp_path):
    path = write_step_folder(str(tmp_path / "f"), tokenizer_drop=("<tts_start>",))
    with pytest.raises(TokenizerError) as err:
        load_checkpoint(path)
    assert "<tts_start>" in str(err.value) and path in str(err.value)


# ----------------------------------------------------------------------------- on a backbone

def test_checkpoint_on_backbone(folder, tmp_path):
    step = linked_copy(folder, tmp_path / "step")
    model = init_model(small_config(step), seed=2)
    out = save_checkpoint(model, str(tmp_path / "ckpt"))
    stored = load_file(os.path.join(out, "model.safetensors"))
    assert not [k for k in stored if k.startswith(("llm.", "encoder.", "adapter."))]
    assert any(k.startswith("connector.") for k in stored)
    assert any(k.startswith("codec.") for k in stored)
    with open(os.path.join(out, "config.json")) as f:
        meta = json.load(f)
    assert meta["llm_weights"] == "backbone"
    assert meta["backbone"]["path"] == os.path.abspath(step)
    assert meta["backbone"]["fingerprint"] == fingerprint(step)
    assert not os.path.exists(os.path.join(out, "tokenizer.json"))  # the folder's is used

    again = load_checkpoint(out)
    assert torch.equal(again.llm.lm_head.weight, model.llm.lm_head.weight)
    for key, value in model.connector.state_dict().items():
        assert torch.equal(again.connector.state_dict()[key], value), key
    assert torch.equal(again.token2wav.codebook.centroids, model.token2wav.codebook.centroids)

    # a shard rewritten with one tensor of another shape: refused, naming the shard
    size = os.path.getsize(os.path.join(step, SHARD2))
    rewrite_shard(os.path.join(step, SHARD2), lambda t: t.__setitem__(
        "adapter.linear2.bias", torch.zeros(65, dtype=torch.bfloat16)))
    with pytest.raises(BackboneError) as err:
        load_checkpoint(out)
    msg = str(err.value)
    new = os.path.getsize(os.path.join(step, SHARD2))
    assert "not the one this checkpoint was made on" in msg
    assert f"shard {SHARD2} is {new} bytes, was {size}" in msg and SHARD1 not in msg
    assert "config.json" not in msg.split("(")[-1]

    # config.json changed (same sizes, other text): named as well
    rewrite_shard(os.path.join(step, SHARD2), lambda t: t.__setitem__(
        "adapter.linear2.bias", torch.zeros(64, dtype=torch.bfloat16)))
    replace_json(os.path.join(step, "config.json"),
                 lambda c: c.__setitem__("torch_dtype", "float16"))
    with pytest.raises(BackboneError, match="config.json changed"):
        load_checkpoint(out)


def test_relative_backbone_via_init_cli(folder, tmp_path, capsys):
    out = tmp_path / "ckpt"
    out.mkdir()
    linked_copy(folder, out / "Step-Audio-2-mini")
    rc = main(["init", "--preset", "edge", "--backbone", str(out / "Step-Audio-2-mini"),
               "--out", str(out), "--seed", "1"])
    assert rc == 0, capsys.readouterr().err
    with open(out / "config.json") as f:
        meta = json.load(f)
    assert meta["backbone"]["path"] == "Step-Audio-2-mini"  # relative to the checkpoint
    assert meta["config"]["llm"]["backbone"] == "Step-Audio-2-mini"
    assert meta["config"]["llm"]["hidden_size"] == 64
    moved = tmp_path / "elsewhere"
    os.rename(out, moved)  # the pair moves together
    model = load_checkpoint(str(moved))
    assert model.backbone_dir == os.path.join(str(moved), "Step-Audio-2-mini")
    assert model.cfg.llm.n_layers == 2 and model.vocab.speech_start == SPEECH_START_ID
    # edge / paper need --backbone; a folder that is not one is named
    assert main(["init", "--preset", "paper", "--out", str(tmp_path / "x")]) == 2
    assert "--backbone" in capsys.readouterr().err
    assert main(["init", "--preset", "paper", "--backbone", str(tmp_path / "nothing"),
                 "--out", str(tmp_path / "x")]) == 1
    assert "no config.json" in capsys.readouterr().err


# ----------------------------------------------------------------------------- backbone-check

def reference_features(wave):
    """Step-Audio-2's log-mel: 479 zeros appended, Whisper STFT / mel / log recipe."""
    try:
        import librosa
        fb = torch.from_numpy(librosa.filters.mel(sr=16000, n_fft=400, n_mels=128)).float()
    except ImportError:
        from a2llm_ros.audio.features import mel_filterbank
        from a2llm_ros.model.configs import MelConfig
        fb = mel_filterbank(MelConfig(n_mels=128))  # Slaney, area-normalised (as librosa)
    x = F.pad(torch.as_tensor(wave, dtype=torch.float32), (0, 479))
    spec = torch.stft(x, 400, 160, window=torch.hann_window(400), center=True,
                      pad_mode="reflect", return_complex=True)[:, :-1]
    log = torch.log10((fb @ spec.abs() ** 2).clamp(min=1e-10))
    log = torch.maximum(log, log.max() - 8.0)
    return (log + 4.0) / 4.0  # [128, T]


def reference_audio(W, cfg, feats):
    """Whisper-style encoder + Step adaptor in plain torch: [M, T] -> [T / 8, H]."""
    a = cfg["audio_encoder_config"]
    d, h = a["n_audio_state"], a["n_audio_head"]
    x = F.gelu(F.conv1d(feats[None], W["encoder.conv1.weight"], W["encoder.conv1.bias"],
                        padding=1))
    x = F.gelu(F.conv1d(x, W["encoder.conv2.weight"], W["encoder.conv2.bias"], stride=2,
                        padding=1))[0].T  # [T50, d]
    x = x + W["encoder.positional_embedding.weight"][:x.shape[0]]
    for i in range(a["n_audio_layer"]):
        p = f"encoder.blocks.{i}."
        y = F.layer_norm(x, (d,), W[p + "attn_ln.weight"], W[p + "attn_ln.bias"])
        q = (y @ W[p + "attn.query.weight"].T + W[p + "attn.query.bias"]).view(-1, h, d // h)
        k = (y @ W[p + "attn.key.weight"].T).view(-1, h, d // h)
        v = (y @ W[p + "attn.value.weight"].T + W[p + "attn.value.bias"]).view(-1, h, d // h)
        att = torch.einsum("thc,shc->hts", q, k) / (d // h) ** 0.5
        o = torch.einsum("hts,shc->thc", att.softmax(-1), v).reshape(-1, d)
        x = x + o @ W[p + "attn.out.weight"].T + W[p + "attn.out.bias"]
        y = F.layer_norm(x, (d,), W[p + "mlp_ln.weight"], W[p + "mlp_ln.bias"])
        y = F.gelu(y @ W[p + "mlp.0.weight"].T + W[p + "mlp.0.bias"])
        x = x + y @ W[p + "mlp.2.weight"].T + W[p + "mlp.2.bias"]
    x = F.avg_pool1d(x.T[None], 2, 2)[0].T  # [T25, d]
    x = F.layer_norm(x, (d,), W["encoder.after_norm.weight"], W["encoder.after_norm.bias"])
    x = F.gelu(F.conv1d(x.T[None], W["adapter.conv.weight"], W["adapter.conv.bias"],
                        stride=2, padding=1))[0].T  # [T12.5, d]
    x = F.relu(x @ W["adapter.linear1.weight"].T + W["adapter.linear1.bias"])
    return x @ W["adapter.linear2.weight"].T + W["adapter.linear2.bias"]


def rms_norm(x, w, eps):
    return w * (x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps))


def reference_logits(W, cfg, embeds):
    """Qwen2 in plain torch: input embeddings [T, H] -> last position's logits [V]."""
    t = cfg["text_config"]
    H, nh, nkv, eps = (t["hidden_size"], t["num_attention_heads"], t["num_key_value_heads"],
                       t["rms_norm_eps"])
    dh, T = H // nh, embeds.shape[0]
    inv = t["rope_theta"] ** (-torch.arange(0, dh, 2, dtype=torch.float64) / dh)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None]  # [T, dh / 2]
    cos, sin = ang.cos().float(), ang.sin().float()

    def rope(x):  # [T, heads, dh], halves rotated (Qwen2's rotate_half)
        x1, x2 = x[..., :dh // 2], x[..., dh // 2:]
        c, s = cos[:, None], sin[:, None]
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)

    causal = torch.ones(T, T, dtype=torch.bool).tril()
    x = embeds
    for i in range(t["num_hidden_layers"]):
        p = f"model.layers.{i}."
        y = rms_norm(x, W[p + "input_layernorm.weight"], eps)
        q = (y @ W[p + "self_attn.q_proj.weight"].T + W[p + "self_attn.q_proj.bias"])
        k = (y @ W[p + "self_attn.k_proj.weight"].T + W[p + "self_attn.k_proj.bias"])
        v = (y @ W[p + "self_attn.v_proj.weight"].T + W[p + "self_attn.v_proj.bias"])
        q, k = rope(q.view(T, nh, dh)), rope(k.view(T, nkv, dh))
        k = k.repeat_interleave(nh // nkv, dim=1)  # query head j uses kv head j // (nh / nkv)
        v = v.view(T, nkv, dh).repeat_interleave(nh // nkv, dim=1)
        att = torch.einsum("thc,shc->hts", q, k) / dh ** 0.5
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        o = torch.einsum("hts,shc->thc", att, v).reshape(T, H)
        x = x + o @ W[p + "self_attn.o_proj.weight"].T
        y = rms_norm(x, W[p + "post_attention_layernorm.weight"], eps)
        y = F.silu(y @ W[p + "mlp.gate_proj.weight"].T) * (y @ W[p + "mlp.up_proj.weight"].T)
        x = x + y @ W[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, W["model.norm.weight"], eps)
    return x[-1] @ W["lm_head.weight"].T


def reference_prompt(folder, n):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))

    def enc(text):
        return tok.encode(text, add_special_tokens=False).ids

    ids = enc("<|BOT|>system\nYou are a helpful assistant.<|EOT|>") + enc("<|BOT|>human\n")
    ids += enc("<audio_start>")
    start = len(ids)
    ids += enc("<audio_patch>") * n + enc("<audio_end>") + enc("<|EOT|>")
    ids += enc("<|BOT|>assistant\n<tts_start>")
    return ids, start


def test_backbone_check_matches_independent_forward(folder, tmp_path, capsys):
    q = write_question(str(tmp_path / "q.wav"), seconds=1.37, seed=4)
    out = str(tmp_path / "check.json")
    rc = main(["backbone-check", "--checkpoint", folder, "--input", q, "--json", out])
    assert rc == 0, capsys.readouterr().err
    with open(out) as f:
        got = json.load(f)

    wave, rate = soundfile.read(q, dtype="float32")
    assert rate == 16000
    feats = reference_features(wave)  # [128, T]
    T = feats.shape[1]
    assert T == (wave.size + 479) // 160
    e = (T - 2 + 1) // 2 // 2
    n = (e + 2 - 3) // 2 + 1
    ids, start = reference_prompt(folder, n)
    assert got["n_audio_patches"] == n
    assert got["prompt_ids"] == ids
    assert ids[start - 1] == AUDIO_START_ID and ids[-1] == got["prompt_ids"][-1]

    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    W = {k: v.float() for k, v in folder_tensors(folder).items()}
    with torch.no_grad():
        audio = reference_audio(W, cfg, feats)  # [>= n, H]
        embeds = W["model.embed_tokens.weight"][torch.tensor(ids)].clone()
        embeds[start:start + n] = audio[:n]
        logits = reference_logits(W, cfg, embeds)  # [V]
    values, top = torch.topk(logits, 10)
    got_ids = [i for i, _ in got["first_step_top"]]
    got_values = torch.tensor([v for _, v in got["first_step_top"]])
    assert got_ids == top.tolist()
    torch.testing.assert_close(got_values, values, rtol=1e-4, atol=1e-4)
    assert got["vocab_size"] == 158720


def test_placeholder_codec_fit_is_explicit():
    """6561 codes from 16 s of synthetic audio: only as an explicit placeholder."""
    from a2llm_ros.checkpoint import synthetic_codec_audio
    from a2llm_ros.model.codecs import make_codec
    from a2llm_ros.model.configs import SpeechCodecConfig
    cfg = SpeechCodecConfig.preset("paper")
    assert cfg.n_codes == N_SPEECH
    audio = synthetic_codec_audio(0)
    tok, _ = make_codec(cfg)
    with pytest.raises(ValueError, match=f"need at least {N_SPEECH} token vectors"):
        tok.fit([audio], seed=0)
    tok.fit([audio], seed=0, placeholder=True)
    again, _ = make_codec(cfg)
    again.fit([audio], seed=0, placeholder=True)
    cents = tok.codebook.centroids
    assert cents.shape == (N_SPEECH, 4 * 128) and torch.isfinite(cents).all()
    assert torch.equal(cents, again.codebook.centroids)  # deterministic
    assert torch.unique(cents, dim=0).shape[0] == N_SPEECH
    codes = tok.encode(audio)  # every synthetic vector is (near) one of the codes
    assert codes.shape[0] == audio.size // 640 and int(codes.max()) < N_SPEECH

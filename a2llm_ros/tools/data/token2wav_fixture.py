"""Write a Step-Audio-2-mini ``token2wav/`` folder in the exact published layout, random
weights (tests and codec benchmarks; no download).

* ``flow.yaml``: the real tags (``!new:cosyvoice2...`` classes) at toy sizes
  (``size="tiny"``) or at the published sizes (``size="full"``: 6 + 4 conformer
  blocks 512 wide, a 16-layer DiT 512 wide, 8 heads of 64);
* ``flow.pt``: a random state dict of that flow (the real key names);
* ``hift.pt``: a random state dict of the default ``HiFTGenerator`` (the real
  vocoder's size and key names, ``generator.`` prefix);
* ``speech_tokenizer_v2_25hz.onnx`` / ``campplus.onnx``: tiny graphs with the
  real input/output names and dtypes (:mod:`a2llm_ros.tools.data.token2wav_onnx`).
"""
import os

import torch

from a2llm_ros.tools.data.token2wav_onnx import write_tiny_campplus, write_tiny_speech_tokenizer

TINY_FLOW_YAML = """\
# toy-sized flow of the CosyVoice2 token2wav decoder (same classes as the real one)
flow: !new:cosyvoice2.flow.flow.CausalMaskedDiffWithXvec
    input_size: 32
    output_size: 80
    spk_embed_dim: 192
    output_type: mel
    vocab_size: 6561
    encoder: !new:cosyvoice2.transformer.upsample_encoder_v2.UpsampleConformerEncoderV2
        input_size: 32
        output_size: 32
        input_layer: linear
        pre_lookahead_len: 3
        num_blocks: 1
        num_up_blocks: 1
        up_stride: 2
        up_scale_factor: 2
        attention_heads: 2
        pos_enc_layer_type: rel_pos_espnet
        selfattention_layer_type: rel_selfattn
        key_bias: true
        linear_units: 64
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0.1
        normalize_before: true
    decoder: !new:cosyvoice2.flow.flow_matching.CausalConditionalCFM
        inference_cfg_rate: 0.7
        estimator: !new:cosyvoice2.flow.decoder_dit.DiT
            in_channels: 320
            out_channels: 80
            mlp_ratio: 2.0
            depth: 2
            num_heads: 2
            head_dim: 16
            hidden_size: 32
"""
#: Published sizes (Step-Audio-2-mini token2wav/flow.yaml).
FULL_SIZES = {"input_size: 32": "input_size: 512", "output_size: 32": "output_size: 512",
              "num_blocks: 1": "num_blocks: 6", "num_up_blocks: 1": "num_up_blocks: 4",
              "attention_heads: 2": "attention_heads: 8", "linear_units: 64": "linear_units: 2048",
              "mlp_ratio: 2.0": "mlp_ratio: 4.0", "depth: 2": "depth: 16",
              "num_heads: 2": "num_heads: 8", "head_dim: 16": "head_dim: 64",
              "hidden_size: 32": "hidden_size: 512"}
SIZES = ("tiny", "full")


def flow_yaml(size: str = "tiny") -> str:
    """The ``flow.yaml`` text at ``size`` (``tiny`` or ``full``)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    text = TINY_FLOW_YAML
    if size == "full":
        for tiny, full in FULL_SIZES.items():
            text = text.replace(tiny, full)
        text = text.replace("# toy-sized flow", "# published-size flow")
    return text


#: Standard deviation of the random flow weights (the upstream init zeroes the
#: DiT's adaLN and output layers, which would make every mel constant).
FLOW_STD = 0.05


def write_token2wav(folder: str, seed: int = 0, size: str = "tiny") -> str:
    """Write the five files into ``folder`` (created); returns ``folder``."""
    from flashcosyvoice.modules.hifigan import HiFTGenerator

    from a2llm_ros.model.step_token2wav import load_flow_yaml
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "flow.yaml"), "w") as f:
        f.write(flow_yaml(size))
    torch.manual_seed(seed)
    flow = load_flow_yaml(os.path.join(folder, "flow.yaml"))
    gen = torch.Generator().manual_seed(seed)
    std = FLOW_STD if size == "tiny" else FLOW_STD / 4
    state = {k: std * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
             for k, v in flow.state_dict().items()}
    torch.save(state, os.path.join(folder, "flow.pt"))
    hift = HiFTGenerator()
    torch.save({"generator." + k: v for k, v in hift.state_dict().items()},
               os.path.join(folder, "hift.pt"))
    write_tiny_speech_tokenizer(os.path.join(folder, "speech_tokenizer_v2_25hz.onnx"), seed)
    write_tiny_campplus(os.path.join(folder, "campplus.onnx"), seed)
    return folder

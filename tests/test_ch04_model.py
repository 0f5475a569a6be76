"""The chapter 4 model as exported from ch04/ch04.ipynb, its SDPA option, and the FLOP count
of ch04/perf_analysis.py."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import exports, import_path

ch = exports("ch04")
perf = import_path("ch04/perf_analysis.py")

SMALL = {"vocab_size": 97, "context_length": 12, "emb_dim": 24, "n_heads": 3,
         "n_layers": 2, "drop_rate": 0.0, "qkv_bias": False}


def test_124m_parameter_counts_on_meta_device():
    with torch.device("meta"):
        model = ch.GPTModel(ch.GPT_CONFIG_124M)
    total = sum(p.numel() for p in model.parameters())
    assert total == 163_009_536
    assert total - model.out_head.weight.numel() == 124_412_160


def test_parameter_names_chapter_5_relies_on():
    names = set(ch.GPTModel(SMALL).state_dict())
    for name in ["tok_emb.weight", "pos_emb.weight", "final_norm.scale", "final_norm.shift",
                 "out_head.weight", "trf_blocks.1.att.W_query.weight", "trf_blocks.1.att.W_key.weight",
                 "trf_blocks.1.att.W_value.weight", "trf_blocks.1.att.out_proj.weight",
                 "trf_blocks.1.att.out_proj.bias", "trf_blocks.1.ff.layers.0.weight",
                 "trf_blocks.1.ff.layers.2.bias", "trf_blocks.1.norm1.scale", "trf_blocks.1.norm2.shift"]:
        assert name in names, name
    assert "out_head.bias" not in names


def test_layernorm_and_gelu_match_torch():
    torch.manual_seed(0)
    x = torch.randn(4, 5, 10) * 3 + 1
    ours, ref = ch.LayerNorm(10), nn.LayerNorm(10)
    with torch.no_grad():
        ours.scale.copy_(torch.randn(10)); ours.shift.copy_(torch.randn(10))
        ref.weight.copy_(ours.scale); ref.bias.copy_(ours.shift)
    assert torch.allclose(ours(x), ref(x), atol=1e-5)
    assert torch.allclose(ch.GELU()(x), F.gelu(x, approximate="tanh"), atol=1e-5)


def test_blocks_and_model_shapes():
    block = ch.TransformerBlock(SMALL)
    x = torch.randn(2, 7, SMALL["emb_dim"])
    assert block(x).shape == x.shape
    assert ch.FeedForward(SMALL).layers[0].out_features == 4 * SMALL["emb_dim"]
    logits = ch.GPTModel(SMALL)(torch.randint(0, 97, (2, 7)))
    assert logits.shape == (2, 7, 97)


def test_bad_input_errors():
    model = ch.GPTModel(SMALL)
    with pytest.raises(ValueError, match=r"\[0, 97\).*from 0 to 97"):
        model(torch.tensor([[0, 97]]))
    with pytest.raises(ValueError, match=r"from -1 to 3"):
        model(torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError, match=r"13 tokens but context_length is 12"):
        model(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(batch, seq_len\)"):
        model(torch.zeros(5, dtype=torch.long))


def test_generation_crops_to_context_and_is_greedy():
    torch.manual_seed(1)
    model = ch.GPTModel(SMALL).eval()
    idx = torch.randint(0, 97, (2, 10))
    out = ch.generate_text_simple(model, idx, max_new_tokens=8, context_size=SMALL["context_length"])
    assert out.shape == (2, 18) and torch.equal(out[:, :10], idx)
    # oracle: the last new token is the argmax at the end of the last 12 tokens before it
    with torch.no_grad():
        expected = model(out[:, -13:-1])[:, -1].argmax(dim=-1)
    assert torch.equal(out[:, -1], expected)


def test_sdpa_option_loads_same_state_dict_and_matches():
    torch.manual_seed(2)
    ref = ch.GPTModel(SMALL)
    sdpa = ch.GPTModel({**SMALL, "use_sdpa": True})
    sdpa.load_state_dict(ref.state_dict())
    assert isinstance(sdpa.trf_blocks[0].att, ch.SDPAMultiHeadAttention)
    assert type(ref.trf_blocks[0].att) is ch.MultiHeadAttention  # the chapter default
    idx = torch.randint(0, 97, (2, 12))
    # drop_rate 0, so training mode is deterministic too: compare losses and gradients
    losses = []
    for m in (ref, sdpa):
        loss = m(idx).logsumexp(-1).mean()
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    for (name, p), q in zip(ref.named_parameters(), sdpa.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), name


def test_sdpa_uses_dropout_only_in_training():
    torch.manual_seed(3)
    model = ch.GPTModel({**SMALL, "drop_rate": 0.5, "use_sdpa": True})
    idx = torch.randint(0, 97, (1, 12))
    model.eval()
    assert torch.equal(model(idx), model(idx))
    model.train()
    assert not torch.equal(model(idx), model(idx))


def test_perf_flop_count():
    cfg = ch.GPT_CONFIG_124M
    expected = 6 * 163_009_536 * 512 + 12 * 12 * 512 * 256 * 768
    assert perf.step_flops(cfg, 163_009_536, 2, 256) == expected


def test_perf_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        perf.parse_args(["--seq-len", "2000"])
    with pytest.raises(SystemExit):
        perf.parse_args(["--batch-size", "0"])
    assert perf.parse_args([]).seq_len == 256

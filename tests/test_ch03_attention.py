"""Chapter 3: the chapter's MultiHeadAttention and the efficient implementations in
ch03/efficient_attention.py compute the same function (same weights copied in, dropout off)."""
import pytest
import torch

from conftest import import_path

ea = import_path("ch03/efficient_attention.py")
MultiHeadAttention = ea.MultiHeadAttention  # the chapter's class, from ch03/previous_chapters.py
FAST = [name for name in ea.IMPLEMENTATIONS if name != "chapter"]
ATOL = 1e-5

# (batch, num_tokens, d_in, d_out, num_heads, context_length, qkv_bias)
SHAPES = {
    "single-token": (1, 1, 768, 768, 12, 1024, False),
    "short-with-bias": (2, 7, 64, 64, 4, 16, True),
    "full-context": (3, 16, 64, 64, 4, 16, False),
    "gpt2-full-context": (1, 1024, 768, 768, 12, 1024, False),
    "d_in-differs": (2, 5, 6, 8, 2, 9, True),
}


def make_pair(name, shape, seed=123, dropout=0.0):
    b, t, d_in, d_out, h, ctx, bias = shape
    torch.manual_seed(seed)
    ref = MultiHeadAttention(d_in, d_out, ctx, dropout, h, qkv_bias=bias)
    x = torch.randn(b, t, d_in)
    return ref, ea.from_chapter(ea.IMPLEMENTATIONS[name], ref), x


def supports(name, shape):
    return not (name == "torch_mha" and shape[2] != shape[3])


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("name", FAST)
def test_same_output_as_chapter(name, shape):
    if not supports(name, shape):
        pytest.skip("nn.MultiheadAttention needs d_in == d_out (checked in test_torch_mha_rejects_d_in_differs)")
    ref, fast, x = make_pair(name, shape)
    ref.eval(), fast.eval()
    with torch.no_grad():
        expected, got = ref(x), fast(x)
    assert got.shape == expected.shape == (shape[0], shape[1], shape[3])
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", FAST)
def test_same_gradients_as_chapter_in_train_mode(name):
    shape = SHAPES["short-with-bias"]
    ref, fast, x = make_pair(name, shape)  # dropout=0.0, modules in train mode
    assert ref.training and fast.training
    x_ref, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad_out = torch.randn(shape[0], shape[1], shape[3])
    (ref(x_ref) * grad_out).sum().backward()
    (fast(x_fast) * grad_out).sum().backward()
    torch.testing.assert_close(x_fast.grad, x_ref.grad, atol=ATOL, rtol=0)
    # the output projection's weight gradient sees every head, so it catches head-order mix-ups
    out_w = fast.mha.out_proj.weight if name == "torch_mha" else fast.out_proj.weight
    torch.testing.assert_close(out_w.grad, ref.out_proj.weight.grad, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", list(ea.IMPLEMENTATIONS))
def test_causal_future_tokens_do_not_leak(name):
    _, fast, x = make_pair(name, SHAPES["full-context"])
    fast.eval()
    changed = x.clone()
    changed[:, 10:] += 1.0  # alter every token from position 10 on
    with torch.no_grad():
        a, b = fast(x), fast(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10], atol=ATOL, rtol=0)
    assert (a[:, 10:] - b[:, 10:]).abs().max() > 1e-3


def test_weights_are_copied_not_shared():
    ref, fast, x = make_pair("fused_qkv", SHAPES["short-with-bias"])
    with torch.no_grad():
        ref.W_query.weight.add_(1.0)
    assert not torch.allclose(ref.W_query.weight, fast.qkv.weight[: ref.d_out])


@pytest.mark.parametrize("name", list(ea.IMPLEMENTATIONS))
def test_dropout_is_active_in_training_only(name):
    ref, fast, x = make_pair(name, SHAPES["full-context"], dropout=0.5)
    fast.train()
    torch.manual_seed(0)
    y1 = fast(x)
    y2 = fast(x)
    assert not torch.allclose(y1, y2), "dropout should make two training-mode passes differ"
    ref.eval(), fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", list(ea.IMPLEMENTATIONS))
def test_d_out_not_divisible_by_heads(name):
    with pytest.raises(ValueError, match=r"(?s)(?=.*\b10\b)(?=.*\b3\b)"):
        ea.IMPLEMENTATIONS[name](d_in=10, d_out=10, context_length=4, dropout=0.0, num_heads=3)


@pytest.mark.parametrize("name", list(ea.IMPLEMENTATIONS))
def test_input_longer_than_context(name):
    module = ea.IMPLEMENTATIONS[name](d_in=8, d_out=8, context_length=4, dropout=0.0, num_heads=2)
    with pytest.raises(ValueError, match=r"(?s)(?=.*\b5\b)(?=.*\b4\b)"):
        module(torch.randn(1, 5, 8))


@pytest.mark.parametrize("name", FAST)
def test_wrong_feature_size_and_rank(name):
    module = ea.IMPLEMENTATIONS[name](d_in=8, d_out=8, context_length=4, dropout=0.0, num_heads=2)
    with pytest.raises(ValueError, match=r"(?s)(?=.*\b6\b)(?=.*\b8\b)"):
        module(torch.randn(1, 3, 6))
    with pytest.raises(ValueError, match="2 dimensions"):
        module(torch.randn(3, 8))


def test_torch_mha_rejects_d_in_differs():
    with pytest.raises(ValueError, match=r"(?s)(?=.*\b6\b)(?=.*\b8\b)"):
        ea.MHATorchMultiheadAttention(d_in=6, d_out=8, context_length=4, dropout=0.0, num_heads=2)


def test_from_chapter_rejects_other_modules():
    with pytest.raises(TypeError, match="MHAFusedQKV"):
        ea.from_chapter(ea.MHASDPA, ea.MHAFusedQKV(8, 8, 4, 0.0, 2))


def test_gpt2_sized_parameter_counts_match():
    cfg = dict(d_in=768, d_out=768, context_length=1024, dropout=0.0, num_heads=12)
    counts = {name: sum(p.numel() for p in cls(**cfg).parameters()) for name, cls in ea.IMPLEMENTATIONS.items()}
    assert set(counts.values()) == {4 * 768 * 768 + 768}, counts


def test_benchmark_script_runs_tiny_and_rejects_bad_sizes(capsys):
    bench = import_path("ch03/bench_attention.py")
    bench.main(["--batch", "1", "--tokens", "8", "--emb-dim", "16", "--heads", "2", "--repeats", "1", "--warmup", "0"])
    out = capsys.readouterr().out
    for name in ea.IMPLEMENTATIONS:
        assert name in out
    assert "fastest forward:" in out and "fastest forward+backward:" in out
    with pytest.raises(SystemExit):
        bench.main(["--emb-dim", "10", "--heads", "3"])
    assert "10" in capsys.readouterr().err

"""ch04/gpt_with_kv_cache.py: the cached model is a drop-in for the chapter's GPTModel and
greedy generation with the cache is token for token the same as without it."""
import pytest
import torch

from conftest import exports, import_path

kv = import_path("ch04/gpt_with_kv_cache.py")
chapter = exports("ch04")  # the chapter's own GPTModel and generator

CFG = {"vocab_size": 101, "context_length": 16, "emb_dim": 32, "n_heads": 4,
       "n_layers": 2, "drop_rate": 0.1, "qkv_bias": False}


def make_pair(cfg=CFG, seed=0):
    """The chapter's model with random weights and a cached model loaded from its state_dict."""
    torch.manual_seed(seed)
    ref = chapter.GPTModel(cfg)
    # bigger weights than the default init, so logits differ clearly and argmax has no near-ties
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.5 * torch.randn_like(p))
    cached = kv.GPTModel(cfg)
    cached.load_state_dict(ref.state_dict())  # strict: same names and shapes
    return ref.eval(), cached.eval()


def test_chapter_state_dict_loads_unchanged():
    ref, cached = make_pair()
    assert list(ref.state_dict()) == list(cached.state_dict())
    for k, v in ref.state_dict().items():
        assert torch.equal(v, cached.state_dict()[k]), k


def test_forward_without_cache_matches_chapter_model():
    ref, cached = make_pair()
    idx = torch.randint(0, CFG["vocab_size"], (2, 11))
    with torch.no_grad():
        assert torch.allclose(ref(idx), cached(idx), atol=1e-5)
    assert cached.current_pos == 0 and cached.kv_cache_bytes() == 0


def test_prefill_then_single_tokens_equal_full_forward():
    ref, cached = make_pair()
    idx = torch.randint(0, CFG["vocab_size"], (2, CFG["context_length"]))
    with torch.no_grad():
        full = ref(idx)
        cached.reset_kv_cache()
        parts = [cached(idx[:, :5], use_cache=True)]
        parts += [cached(idx[:, i:i + 1], use_cache=True) for i in range(5, 9)]
        parts.append(cached(idx[:, 9:], use_cache=True))  # several tokens at once after a prefix
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-4)
    assert cached.current_pos == CFG["context_length"]
    # 2 (k and v) x layers x batch x heads x tokens x head_dim x 4 bytes
    assert cached.kv_cache_bytes() == 2 * 2 * 2 * 4 * 16 * 8 * 4


@pytest.mark.parametrize("prompt_len", [1, 3, 8, 15, 16, 20])
@pytest.mark.parametrize("context_size", [16, 10])
def test_greedy_generation_equal_with_and_without_cache(prompt_len, context_size):
    ref, cached = make_pair(seed=prompt_len)
    torch.manual_seed(100 + prompt_len)
    idx = torch.randint(0, CFG["vocab_size"], (2, prompt_len))
    new = 30  # runs up to the context length and well past it (the window slides)
    want = chapter.generate_text_simple(ref, idx, max_new_tokens=new, context_size=context_size)
    got = kv.generate_text_simple(cached, idx, max_new_tokens=new, context_size=context_size, use_cache=True)
    assert got.shape == (2, prompt_len + new)
    assert torch.equal(got, want)
    # the cached model without the cache is the chapter's generator too
    plain = kv.generate_text_simple(cached, idx, max_new_tokens=new, context_size=context_size, use_cache=False)
    assert torch.equal(plain, want)


def test_generation_is_not_a_degenerate_repetition():
    # guards the equality test above against a trivial pass (e.g. the same token every step)
    ref, _ = make_pair(seed=3)
    out = chapter.generate_text_simple(ref, torch.tensor([[1, 2, 3]]), 30, 16)
    assert len(set(out[0, 3:].tolist())) >= 4


def test_generation_can_be_repeated_and_leaves_no_cache():
    _, cached = make_pair()
    idx = torch.tensor([[5, 6, 7]])
    first = kv.generate_text_simple(cached, idx, 20, 16)
    second = kv.generate_text_simple(cached, idx, 20, 16)
    assert torch.equal(first, second)
    assert cached.current_pos == 0 and cached.kv_cache_bytes() == 0


def test_zero_new_tokens_returns_the_prompt():
    _, cached = make_pair()
    idx = torch.tensor([[5, 6, 7]])
    assert torch.equal(kv.generate_text_simple(cached, idx, 0, 16), idx)


def test_cache_past_context_length_raises_naming_both_lengths():
    _, cached = make_pair()
    with torch.no_grad():
        cached.reset_kv_cache()
        cached(torch.zeros(1, 14, dtype=torch.long), use_cache=True)
        cached(torch.zeros(1, 2, dtype=torch.long), use_cache=True)  # exactly full: allowed
        with pytest.raises(ValueError, match=r"holds 16 tokens.*17.*context_length 16"):
            cached(torch.zeros(1, 1, dtype=torch.long), use_cache=True)


def test_bad_inputs_give_clear_errors():
    _, cached = make_pair()
    with pytest.raises(ValueError, match=r"\[0, 101\).*101"):
        cached(torch.tensor([[1, 101]]))
    with pytest.raises(ValueError, match=r"17 tokens.*context_length is 16"):
        cached(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"context_size must lie in \[1, 16\].*got 17"):
        kv.generate_text_simple(cached, torch.tensor([[1]]), 5, context_size=17)
    with pytest.raises(ValueError, match="batch of 1 sequences but the input has 2"):
        with torch.no_grad():
            cached.reset_kv_cache()
            cached(torch.tensor([[1]]), use_cache=True)
            cached(torch.tensor([[1], [2]]), use_cache=True)


def test_script_loads_a_chapter_state_dict_and_refuses_other_weights(tmp_path, monkeypatch, capsys):
    cfg = {**CFG, "vocab_size": 50257, "drop_rate": 0.0}  # the script's tokenizer needs GPT-2's vocabulary
    monkeypatch.setattr(kv, "GPT_CONFIG_124M", cfg)  # a small stand-in for the 124M configuration
    torch.manual_seed(1)
    ref = chapter.GPTModel(cfg).eval()
    path = tmp_path / "model.pth"
    torch.save(ref.state_dict(), path)
    args = ["--checkpoint", str(path), "--prompt", "Hello", "--max-new-tokens", "3", "--context-size", "8"]
    assert kv.main(args) == 0
    ids = torch.tensor([[15496]])  # "Hello"
    expected = chapter.generate_text_simple(ref, ids, 3, 8)
    import tiktoken
    assert capsys.readouterr().out.splitlines()[0] == tiktoken.get_encoding("gpt2").decode(expected[0].tolist())
    torch.save(chapter.GPTModel({**cfg, "n_layers": 1}).state_dict(), path)  # one block fewer
    with pytest.raises(ValueError, match=r"another configuration: missing from the file 14 \(trf_blocks.1.*"
                                         r"context_length 16, emb_dim 32, 2 layers\)$"):
        kv.main(args)

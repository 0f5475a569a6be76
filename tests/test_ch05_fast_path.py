"""The fast path of ch05/fast-path.ipynb against the chapter's model, and ch05/bench_vs_hf.py."""
import importlib.util
import subprocess
import sys
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, exports, import_path, one_thread_env

pc = exports("ch05")
BENCH = str(ROOT / "ch05" / "bench_vs_hf.py")
CFG = {"vocab_size": 300, "context_length": 24, "emb_dim": 32, "n_heads": 4, "n_layers": 2,
       "drop_rate": 0.1, "qkv_bias": True}
ATOL = 1e-4  # fp32: the fused kernels add in another order than the chapter's formulas


def chapter_and_fast(tie_weights=False, cfg=CFG):
    torch.manual_seed(123)
    chapter = pc.GPTModel(cfg).eval()
    if tie_weights:
        with torch.no_grad():
            chapter.out_head.weight.copy_(chapter.tok_emb.weight)
    return chapter, pc.fast_from_chapter(chapter, cfg, tie_weights=tie_weights)


def test_fast_logits_equal_the_chapter_models_in_fp32():
    chapter, fast = chapter_and_fast()
    ids = torch.randint(0, CFG["vocab_size"], (3, CFG["context_length"]))
    with torch.no_grad():
        torch.testing.assert_close(fast(ids), chapter(ids), atol=ATOL, rtol=0)
        torch.testing.assert_close(fast(ids[:, :1]), chapter(ids[:, :1]), atol=ATOL, rtol=0)
    assert not fast.training
    assert [n for n, _ in fast.named_parameters()] == [n for n, _ in chapter.named_parameters()]


def test_tied_head_shares_one_matrix_and_round_trips_to_the_chapter_model():
    chapter, tied = chapter_and_fast(tie_weights=True)
    assert tied.out_head.weight is tied.tok_emb.weight
    n_chapter = sum(p.numel() for p in chapter.parameters())
    n_tied = sum(p.numel() for p in tied.parameters())
    assert n_chapter - n_tied == CFG["vocab_size"] * CFG["emb_dim"]
    ids = torch.randint(0, CFG["vocab_size"], (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(tied(ids), chapter(ids), atol=ATOL, rtol=0)
    back = pc.GPTModel(CFG).eval()
    back.load_state_dict(tied.state_dict())  # a fast checkpoint loads into the chapter model
    with torch.no_grad():
        torch.testing.assert_close(back(ids), chapter(ids), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="tie_weights=False"):
        pc.load_chapter_weights(pc.FastGPTModel(CFG, tie_weights=True), pc.GPTModel(CFG).state_dict())


def train(model, make_optimizer=torch.optim.AdamW, steps=6):
    """Losses of a few AdamW steps on one fixed batch (so the loss must fall)."""
    torch.manual_seed(7)
    data = torch.randint(0, CFG["vocab_size"], (4, 17))
    opt = make_optimizer(model.parameters(), lr=1e-3, weight_decay=0.1)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(data[:, :-1]).flatten(0, 1), data[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_training_loss_tracks_the_chapter_model():
    cfg = {**CFG, "drop_rate": 0.0}
    chapter, fast = chapter_and_fast(cfg=cfg)
    _, fast_fused = chapter_and_fast(cfg=cfg)
    a = train(chapter.train())
    assert a[-1] < a[0] - 0.2  # it learns
    assert max(abs(x - y) for x, y in zip(a, train(fast.train()))) < 1e-3
    fused = train(fast_fused.train(), lambda params, **kw: pc.fast_adamw(fast_fused, **kw))
    assert max(abs(x - y) for x, y in zip(a, fused)) < 1e-3


def test_dropout_runs_in_training_and_not_in_eval():
    _, fast = chapter_and_fast()
    ids = torch.randint(0, CFG["vocab_size"], (2, 12))
    fast.train()
    assert not torch.equal(fast(ids), fast(ids))
    fast.eval()
    with torch.no_grad():
        assert torch.equal(fast(ids), fast(ids))


@pytest.mark.parametrize("context_size", [24, 6])  # 6: the window slides and the cache is rebuilt
def test_generate_fast_gives_the_chapter_generates_greedy_ids(context_size):
    chapter, fast = chapter_and_fast()
    prompt = torch.randint(0, CFG["vocab_size"], (2, 4))
    expected = pc.generate(chapter, prompt, 20, context_size)
    assert torch.equal(pc.generate_fast(fast, prompt, 20, context_size), expected)
    assert torch.equal(pc.generate_fast(fast, prompt, 20, context_size, temperature=1.5, top_k=1), expected)
    eos = int(expected[0, 7])
    assert torch.equal(pc.generate_fast(fast, prompt, 20, context_size, eos_id=eos),
                       pc.generate(chapter, prompt, 20, context_size, eos_id=eos))
    assert torch.equal(pc.generate_fast(fast, prompt, 0, context_size), prompt)
    with pytest.raises(ValueError, match="context_size"):
        pc.generate_fast(fast, prompt, 3, CFG["context_length"] + 1)


def test_the_cache_is_written_in_place_and_checks_its_length():
    _, fast = chapter_and_fast()
    cache = pc.KVCache(max_len=10)
    with torch.no_grad():
        fast(torch.randint(0, CFG["vocab_size"], (1, 4)), kv_cache=cache)
        pointers = [t.data_ptr() for t in list(cache.keys.values()) + list(cache.values.values())]
        for _ in range(6):
            fast(torch.randint(0, CFG["vocab_size"], (1, 1)), kv_cache=cache)
    assert cache.pos == 10
    assert pointers == [t.data_ptr() for t in list(cache.keys.values()) + list(cache.values.values())]
    with pytest.raises(ValueError, match="but context_length is|do not fit"):
        fast(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)


def test_forward_never_reads_tensor_values():
    """No host synchronisation: forward runs on meta tensors (no values) and without Tensor.item."""
    with torch.device("meta"):
        fast = pc.FastGPTModel(CFG, tie_weights=True)
        assert fast(torch.zeros(2, 8, dtype=torch.long)).shape == (2, 8, CFG["vocab_size"])
        with pytest.raises(RuntimeError):  # the check itself works: the chapter model reads values
            pc.GPTModel(CFG)(torch.zeros(2, 8, dtype=torch.long))
    _, fast = chapter_and_fast()
    with mock.patch.object(torch.Tensor, "item", side_effect=AssertionError("item() called")), \
            mock.patch.object(torch.Tensor, "__bool__", side_effect=AssertionError("bool() called")):
        fast.train()
        fast(torch.randint(0, CFG["vocab_size"], (2, 8))).sum().backward()


def test_autocast_chooses_bf16_only_where_supported():
    dtype, reason = pc.autocast_dtype("cpu")
    assert dtype in (torch.bfloat16, None) and reason
    _, fast = chapter_and_fast()
    ids = torch.randint(0, CFG["vocab_size"], (2, 8))
    with torch.no_grad(), pc.autocast("cpu"):
        logits = fast(ids)
    assert logits.dtype == (dtype or torch.float32)
    with torch.no_grad(), pc.autocast("cpu", enabled=False):
        assert fast(ids).dtype == torch.float32
    assert pc.maybe_compile(fast, enabled=False) is fast


def run_bench(*args, python=sys.executable):
    return subprocess.run([python, BENCH, *args], capture_output=True, text=True, timeout=300,
                          env=one_thread_env())


TINY = ["--model-size", "tiny", "--batch-size", "1", "--seq-len", "8", "--steps", "1", "--warmup", "0",
        "--new-tokens", "3", "--gen-repeats", "1", "--device", "cpu"]


def test_bench_runs_without_transformers(tmp_path):
    blocker = tmp_path / "transformers.py"  # shadows an installed transformers: import fails
    blocker.write_text("raise ImportError('hidden by the test')\n")
    run = subprocess.run([sys.executable, BENCH, *TINY], capture_output=True, text=True, timeout=300,
                         env=one_thread_env(PYTHONPATH=str(tmp_path)))
    assert run.returncode == 0, run.stderr[-2000:]
    assert "pip install transformers" in run.stdout
    assert "fast path (tied head)" in run.stdout and "greedy ids of every model agree: True" in run.stdout


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers is not installed")
def test_bench_against_hugging_face():
    run = run_bench(*TINY, "--dtype", "bf16")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "x HF" in run.stdout and "greedy ids of every model agree" in run.stdout


@pytest.mark.parametrize("args", [["--steps", "0"], ["--model-size", "huge"], ["--seq-len", "2000"],
                                  ["--drop-rate", "nan"], ["--dtype", "fp16"], ["--new-tokens", "-1"]])
def test_bench_rejects_bad_input_with_one_line(args, capsys):
    bench = import_path("ch05/bench_vs_hf.py")
    with pytest.raises(SystemExit) as exit_info:
        bench.main(args)
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: " in last and args[0] in last, last

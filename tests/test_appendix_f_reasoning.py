"""Appendix F: the addition task and its verifier, majority vote, GRPO's pieces, and
train_reasoner.py end to end on tiny settings."""
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, exports, import_path, one_thread_env

F = exports("appendix-F")  # the notebook's exported code
script = import_path("appendix-F/train_reasoner.py")
SCRIPT = ROOT / "appendix-F" / "train_reasoner.py"


def test_problems_are_seeded_and_train_test_disjoint():
    train, test = F.make_problems(3000, 500, digits=3, seed=7)
    assert len(train) == 3000 and len(test) == 500
    assert not set(train) & set(test) and len(set(train)) == 3000
    assert F.make_problems(3000, 500, digits=3, seed=7) == (train, test)
    assert F.make_problems(3000, 500, digits=3, seed=8) != (train, test)
    assert all(100 <= a <= 999 and 100 <= b <= 999 for a, b in train + test)
    with pytest.raises(ValueError, match="cannot draw"):
        F.make_problems(100, 10, digits=1)


def test_tokenizer_round_trip_and_targets():
    tok = F.tokenizer
    for p in [(12345, 67890), (99999, 99999), (10000, 10000)]:
        text = F.prompt_text(p) + F.chain_of_thought_text(p)
        assert tok.decode(tok.encode(text)) == text
        assert F.verify(p, F.chain_of_thought_text(p)) and F.verify(p, F.answer_only_text(p))
        assert F.is_well_formed(F.chain_of_thought_text(p))
    assert F.chain_of_thought_text((58, 67), digits=2) == "8+7+0=15 5+6+1=12>125."
    assert len(F.chain_of_thought_text((99999, 99999))) == F.completion_length("cot")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.encode("12a")


@pytest.mark.parametrize("completion, ok", [
    ("8+7+0=15 5+6+1=12>125.", True),
    (">125.", True),
    (">125. then 7", True),            # text after the end mark is never read
    (">126.", False),                  # wrong answer
    ("8+7+0=15 5+6+1=12", False),      # missing answer
    (">125", False),                   # no end mark
    (">125 or 126.", False),           # extra text in the answer
    ("125.", False),                   # no answer marker
    (">.", False),
    (">0125.", True),                  # the number, not the string, is compared
])
def test_verify_hand_cases(completion, ok):
    assert F.verify((58, 67), completion) is ok


def test_majority_vote_with_ties_and_malformed():
    mv = F.majority_vote
    assert mv([3, 5, 5]) == 5
    assert mv([3, 5, 5, 3]) == 3 and mv([5, 3, 3, 5]) == 5  # ties: the answer seen first
    assert mv([None, None, 4]) == 4 and mv([None, None]) is None and mv([]) is None


def test_group_advantages_hand_example():
    rewards = torch.tensor([[1.1, 0.1, 0.1, 1.1], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    adv = F.group_advantages(rewards, eps=0.0 + 1e-12)
    assert torch.allclose(adv[0], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-5)
    assert torch.equal(F.group_advantages(rewards)[1], torch.zeros(4))  # no signal in a tie
    # mean 0.25, population std sqrt(3)/4
    expected = (torch.tensor([1.0, 0.0, 0.0, 0.0]) - 0.25) / (3 ** 0.5 / 4)
    assert torch.allclose(adv[2], expected, atol=1e-5)


def test_completion_mask_stops_after_first_end_mark():
    ids = torch.tensor([F.tokenizer.encode(">12.>3."), F.tokenizer.encode("1234567")])
    assert F.completion_mask(ids).tolist() == [[1, 1, 1, 1, 0, 0, 0], [1] * 7]


def test_cached_forward_matches_model_and_greedy_sampling():
    torch.manual_seed(0)
    model = F.GPTModel(F.reasoner_config(digits=2, emb_dim=16, n_heads=2)).eval()
    x = torch.randint(1, len(F.tokenizer), (3, 12))
    cache = [None] * 2
    with torch.no_grad():
        parts = [F.forward_with_cache(model, x[:, :6], cache), F.forward_with_cache(model, x[:, 6:9], cache),
                 F.forward_with_cache(model, x[:, 9:], cache)]
        assert torch.allclose(torch.cat(parts, 1), model(x), atol=1e-5)
        out, logps = F.sample_completions(model, x[:, :6], 6)
        ref = x[:, :6]
        for _ in range(6):  # greedy by full recomputation, as chapter 5's generate does
            ref = torch.cat([ref, model(ref)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ref[:, 6:])
    assert torch.allclose(logps, F.token_logprobs(model, x[:, :6], out), atol=1e-5)


def test_grpo_step_raises_logprob_of_rewarded_sample():
    torch.manual_seed(0)
    model = F.GPTModel(F.reasoner_config(digits=2, emb_dim=16, n_heads=2))
    problem = (58, 67)
    prompts = F.encode_prompts([problem, problem], digits=2)
    completions = torch.tensor([F.tokenizer.encode(F.chain_of_thought_text(problem, 2)),
                                F.tokenizer.encode(F.chain_of_thought_text((58, 68), 2))])
    rewards = F.rewards_for([problem, problem], [F.tokenizer.decode(c.tolist()) for c in completions])
    assert rewards.tolist() == pytest.approx([1.1, 0.1])
    with torch.no_grad():
        before = F.token_logprobs(model, prompts, completions).sum(1)
    reference = F.GPTModel(F.reasoner_config(digits=2, emb_dim=16, n_heads=2))
    reference.load_state_dict(model.state_dict())
    F.grpo_step(model, torch.optim.AdamW(model.parameters(), lr=1e-3), prompts, completions, rewards, group_size=2,
                reference=reference, kl_coef=0.04)
    with torch.no_grad():
        after = F.token_logprobs(model, prompts, completions).sum(1)
    assert after[0] > before[0] and after[1] < before[1]


def test_grpo_loss_clips_ratio():
    mask = torch.ones(1, 1)
    old = torch.zeros(1, 1)
    adv = torch.tensor([1.0])
    far = torch.tensor([[1.0]], requires_grad=True)  # ratio e > 1.2: clipped, no gradient
    F.grpo_loss(far, old, adv, mask).backward()
    assert F.grpo_loss(far, old, adv, mask).item() == pytest.approx(-1.2) and far.grad.abs().item() == 0
    near = torch.tensor([[0.1]], requires_grad=True)
    F.grpo_loss(near, old, adv, mask).backward()
    assert near.grad.item() == pytest.approx(-torch.exp(torch.tensor(0.1)).item(), rel=1e-5)


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          env=one_thread_env())


TINY = ["--digits", "2", "--n-train", "1500", "--n-test", "100", "--emb-dim", "32", "--device", "cpu",
        "--eval-every", "1000"]


def test_script_sft_grpo_distill_end_to_end(tmp_path):
    ckpt = tmp_path / "cot.pth"
    sft = run("--method", "cot", "--steps", "200", "--output", str(ckpt), *TINY)
    assert sft.returncode == 0, sft.stderr
    last = sft.stdout.strip().splitlines()[-1]
    assert last.startswith("held-out greedy accuracy: ") and last.endswith("(100 problems)")
    accuracy = last.split()[3]
    assert float(accuracy) > 0.02  # learning has started (an untrained model scores 0)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["digits"] == 2 and saved["config"]["emb_dim"] == 32 and saved["method"] == "cot"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic save left nothing behind

    grpo = run("--grpo-from", str(ckpt), "--steps", "2", "--problems-per-step", "4", "--group-size", "4",
               "--kl-coef", "0.04", *TINY)
    assert grpo.returncode == 0, grpo.stderr
    assert grpo.stdout.strip().splitlines()[-1].startswith("held-out greedy accuracy: ")
    # the checkpoint round trip: GRPO starts from exactly the accuracy SFT ended with
    assert f"GRPO from cot.pth: greedy accuracy {accuracy}" in grpo.stdout

    distill = run("--distill-from", str(ckpt), "--steps", "5", "--n-traces", "200", *TINY[:-4], "--emb-dim", "16",
                  "--n-heads", "2", "--device", "cpu")
    assert distill.returncode == 0, distill.stderr
    assert "sampled traces well formed and verified" in distill.stdout


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps must be at least 1, got 0"),
    (["--lr", "nan"], "--lr must be a positive finite number, got nan"),
    (["--digits", "12"], "--digits must be between 1 and 9, got 12"),
    (["--grpo-from", "/nonexistent/ckpt.pth"], "--grpo-from /nonexistent/ckpt.pth: checkpoint not found"),
    (["--output", "/proc/no-such-dir/out.pth"], "--output /proc/no-such-dir/out.pth cannot be created or written"),
    (["--emb-dim", "30", "--n-heads", "4"], "--emb-dim (30) must be divisible by --n-heads (4)"),
    (["--digits", "1", "--n-train", "100"], "too many distinct 1-digit problems"),
])
def test_script_bad_input_one_line_error(args, message):
    result = run(*args, "--device", "cpu")
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(("error:", "train_reasoner.py: error:"))


def test_script_rejects_foreign_checkpoint(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"weights": torch.zeros(2)}, bad)
    result = run("--grpo-from", str(bad), "--device", "cpu")
    assert result.returncode == 2 and "is a state dict (model weights only) where a full checkpoint" in result.stderr
    assert "--grpo-from needs a checkpoint that train_reasoner.py --output saved" in result.stderr
    assert "Traceback" not in result.stderr

"""Appendix D: the warmup + cosine schedule (formula, torch scheduler, bad input), gradient
clipping, train_model (lowers the loss, clips from the end of the warmup on, reduces to chapter
5's loop) and the headless gpt_train_schedule.py. Tiny configurations only; no downloads."""
import json
import math
import subprocess
import sys

import pytest
import tiktoken
import torch
from conftest import ROOT, TEXT, exports, import_path

script = import_path("appendix-D/gpt_train_schedule.py")
SCRIPT = ROOT / "appendix-D" / "gpt_train_schedule.py"
chapter5 = exports("appendix-D")
pc = vars(chapter5)  # chapters 1-5 and appendix D's exported cells
check_schedule, lr_at_step, lr_schedule = pc["check_schedule"], pc["lr_at_step"], pc["lr_schedule"]
train_model, GPTModel = pc["train_model"], pc["GPTModel"]

T, W, INITIAL, PEAK, MIN = 135, 27, 1e-4, 1e-3, 1e-5


def cosine(progress):
    return MIN + (PEAK - MIN) * (1 + math.cos(math.pi * progress)) / 2


def test_lr_at_the_pinned_steps_equals_the_formula():
    total, warmup = 101, 20  # a decay over steps 20..100: its middle is step 60
    lrs = lr_schedule(total, warmup, INITIAL, PEAK, MIN)
    assert len(lrs) == total
    assert lrs[0] == pytest.approx(INITIAL, rel=1e-12)                         # step 0
    assert lrs[5] == pytest.approx(INITIAL + (PEAK - INITIAL) * 5 / warmup, rel=1e-12)
    assert lrs[warmup] == pytest.approx(PEAK, rel=1e-12)                       # end of warmup
    assert lrs[60] == pytest.approx((PEAK + MIN) / 2, rel=1e-12)               # middle of the decay
    assert lrs[-1] == pytest.approx(MIN, rel=1e-12)                            # last step
    assert lrs[30] == pytest.approx(cosine(10 / 80), rel=1e-12)
    assert all(a < b for a, b in zip(lrs[:warmup], lrs[1:warmup + 1]))         # rises during the warmup
    assert all(a > b for a, b in zip(lrs[warmup:-1], lrs[warmup + 1:]))        # falls during the decay
    assert lr_at_step(60, total, warmup, INITIAL, PEAK, MIN) == lrs[60]


def test_no_warmup_and_no_decay_give_chapter_5s_constant_rate():
    assert lr_schedule(10, 0, 0.0, PEAK, PEAK) == [PEAK] * 10
    lrs = lr_schedule(10, 0, 0.0, PEAK, MIN)
    assert lrs[0] == PEAK and lrs[-1] == pytest.approx(MIN, rel=1e-12)


@pytest.mark.parametrize("total, warmup", [(135, 27), (135, 1), (50, 0), (10, 8), (2, 0)])
def test_hand_written_and_torch_schedulers_agree_at_every_step(total, warmup):
    lrs = lr_schedule(total, warmup, INITIAL, PEAK, MIN)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=PEAK)
    scheduler = pc["warmup_cosine_scheduler"](optimizer, total, warmup, INITIAL, MIN)
    torch_lrs = []
    for _ in range(total):
        torch_lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert torch_lrs == pytest.approx(lrs, rel=1e-9, abs=0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(warmup_steps=T), "warmup_steps must lie between 0 and total_steps - 2"),     # longer than the run
    (dict(warmup_steps=T - 1), "warmup_steps must lie between 0 and total_steps - 2"),  # no decay left
    (dict(warmup_steps=-1), "warmup_steps must lie between"),
    (dict(warmup_steps=2.5), "warmup_steps must be an integer"),
    (dict(min_lr=2 * PEAK), r"min_lr \(0.002\) must not exceed peak_lr"),
    (dict(initial_lr=2 * PEAK), "initial_lr .* must not exceed peak_lr"),
    (dict(peak_lr=0.0, initial_lr=0.0, min_lr=0.0), "peak_lr must be positive"),
    (dict(initial_lr=float("nan")), "initial_lr must be a finite number"),
    (dict(min_lr=-1e-6), "min_lr must be a finite number >= 0"),
    (dict(total_steps=1, warmup_steps=0), "total_steps must be at least 2"),
])
def test_bad_schedules_raise_clear_errors(kwargs, message):
    args = dict(total_steps=T, warmup_steps=W, initial_lr=INITIAL, peak_lr=PEAK, min_lr=MIN) | kwargs
    with pytest.raises(ValueError, match=message):
        check_schedule(**args)
    with pytest.raises(ValueError, match=message):
        lr_at_step(0, **args)


def test_step_outside_the_run_is_an_error():
    with pytest.raises(ValueError, match=r"step must lie in \[0, 135\)"):
        lr_at_step(T, T, W, INITIAL, PEAK, MIN)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_non_positive_clip_norm_is_an_error(bad):
    with pytest.raises(ValueError, match="grad_clip must be a positive, finite max_norm"):
        pc["check_grad_clip"](bad)
    pc["check_grad_clip"](None)  # None: no clipping


def test_clip_grad_norm_caps_large_and_keeps_small_gradients():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(50)), torch.nn.Parameter(torch.zeros(7, 3))]
    params[0].grad, params[1].grad = 3 * torch.randn(50), 3 * torch.randn(7, 3)
    before = [p.grad.clone() for p in params]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm=1.0)
    assert norm.item() > 1.0  # the total norm was large
    assert torch.nn.utils.get_total_norm([p.grad for p in params]).item() <= 1.0 + 1e-6
    for b, p in zip(before, params):  # one factor for all: the direction is kept
        assert torch.allclose(p.grad, b / norm, rtol=1e-5)
    small = [p.grad.clone() * 0.5 for p in params]  # total norm about 0.5
    for s, p in zip(small, params):
        p.grad = s.clone()
    torch.nn.utils.clip_grad_norm_(params, max_norm=1.0)
    assert all(torch.equal(s, p.grad) for s, p in zip(small, params))


def test_clipping_starts_at_the_end_of_the_warmup():
    active = [pc["clipping_active"](s, W) for s in range(T)]
    assert active.index(True) == W and not any(active[:W]) and all(active[W:])


# ---- train_model on a tiny configuration ----

TINY = {"vocab_size": 50257, "context_length": 16, "emb_dim": 32, "n_heads": 2, "n_layers": 2,
        "drop_rate": 0.0, "qkv_bias": False}


def loaders():
    torch.manual_seed(123)
    train = chapter5.create_dataloader_v1(TEXT, batch_size=4, max_length=16, stride=16, shuffle=True, drop_last=True)
    val = chapter5.create_dataloader_v1(TEXT[-300:], batch_size=4, max_length=16, stride=16, shuffle=False,
                                        drop_last=False)
    return train, val


def fresh(lr):
    torch.manual_seed(123)
    model = GPTModel(TINY)
    return model, torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)


def run(epochs=2, **kwargs):
    train, val = loaders()
    model, optimizer = fresh(kwargs.pop("lr", 3e-3))
    torch.manual_seed(123)
    return train_model(model, train, val, optimizer, "cpu", epochs, 2, 2, None, None, progress=False, **kwargs)


def test_train_model_lowers_the_loss_and_follows_the_schedule(capsys):
    train, _ = loaders()
    steps = 3 * len(train)
    warmup = steps // 5
    train_losses, val_losses, tokens, lrs, norms = run(3, warmup_steps=warmup, initial_lr=3e-4, min_lr=1e-5,
                                                       grad_clip=1.0)
    assert train_losses[-1] < train_losses[0] - 1.0 and val_losses[-1] < val_losses[0] - 1.0
    assert lrs == lr_schedule(steps, warmup, 3e-4, 3e-3, 1e-5)  # the optimizer's lr is the peak
    assert len(norms) == steps and all(n > 0 for n in norms)
    assert "train loss" in capsys.readouterr().out


def test_train_model_clips_exactly_from_the_end_of_the_warmup(monkeypatch):
    calls = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        result = real(parameters, max_norm, *args, **kwargs)
        calls.append(torch.nn.utils.get_total_norm([p.grad for p in parameters]).item())
        return result

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    train, _ = loaders()
    steps, warmup = 2 * len(train), 3
    *_, norms = run(2, warmup_steps=warmup, initial_lr=3e-4, min_lr=1e-5, grad_clip=0.05)
    assert len(calls) == steps - warmup           # steps warmup .. steps - 1, the end of the warmup included
    assert all(c <= 0.05 * (1 + 1e-5) for c in calls)  # after clipping: at most max_norm
    assert all(n > 0.05 for n in norms[warmup:])  # recorded before clipping: the clip really acted


def test_train_model_without_schedule_or_clipping_is_chapter_5s_loop(capsys):
    train, val = loaders()
    model, optimizer = fresh(3e-3)
    torch.manual_seed(123)
    simple = chapter5.train_model_simple(model, train, val, optimizer, "cpu", 2, 2, 2, "Every effort",
                                         tiktoken.get_encoding("gpt2"))
    simple_text = capsys.readouterr().out
    ours = run(2, warmup_steps=0, initial_lr=0.0, min_lr=3e-3, grad_clip=None)
    assert ours[0] == simple[0] and ours[1] == simple[1] and ours[2] == simple[2]
    assert ours[3] == [3e-3] * len(ours[3])
    assert simple_text.count("train loss") == len(ours[0])


def test_train_model_rejects_bad_settings():
    with pytest.raises(ValueError, match="grad_clip must be a positive"):
        run(1, warmup_steps=1, grad_clip=0.0)
    with pytest.raises(ValueError, match="warmup_steps must lie between"):
        run(1, warmup_steps=1000)
    with pytest.raises(ValueError, match="min_lr .* must not exceed peak_lr"):
        run(1, warmup_steps=1, min_lr=1.0)


# ---- the headless script (the text_file fixture is in conftest.py) ----

SCRIPT_TINY = ["--model-size", "tiny", "--context-length", "16", "--batch-size", "2", "--eval-freq", "4",
               "--eval-iter", "2", "--drop-rate", "0.0", "--device", "cpu", "--no-progress"]


def test_script_trains_with_the_schedule_and_saves(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--text-files", str(text_file), "--epochs", "2", "--output-dir", str(out), "--lr", "3e-3",
            "--initial-lr", "3e-4", "--warmup-ratio", "0.2", "--min-lr", "1e-5", "--grad-clip", "1.0"]
    assert script.main(args + SCRIPT_TINY) == 0
    assert {p.name for p in out.iterdir()} == {"model.pth", "history.json", "loss.png", "lr.png"}
    history = json.loads((out / "history.json").read_text())
    steps, warmup = len(history["lrs"]), history["warmup_steps"]
    assert warmup == int(0.2 * steps) and history["lrs"] == lr_schedule(steps, warmup, 3e-4, 3e-3, 1e-5)
    assert history["train_losses"][-1] < history["train_losses"][0] - 1.0
    ckpt = torch.load(out / "model.pth", weights_only=True)
    assert ckpt["config"]["emb_dim"] == 32 and ckpt["lrs"] == history["lrs"]
    assert "saved" in capsys.readouterr().out


def test_script_defaults_keep_chapter_5s_constant_rate(text_file, tmp_path):
    out = tmp_path / "run"
    assert script.main(["--text-files", str(text_file), "--epochs", "1", "--output-dir", str(out), "--lr", "3e-3"]
                       + SCRIPT_TINY) == 0
    history = json.loads((out / "history.json").read_text())
    assert history["warmup_steps"] == 0 and set(history["lrs"]) == {3e-3}
    assert history["settings"]["grad_clip"] is None


@pytest.mark.parametrize("extra, message", [
    (["--warmup-ratio", "1.5"], "--warmup-ratio must lie in [0, 1), got 1.5"),
    (["--min-lr", "0.01", "--lr", "0.001"], "--min-lr 0.01 is above the peak --lr 0.001"),
    (["--grad-clip", "0"], "--grad-clip must be positive"),
    (["--grad-clip", "-2"], "--grad-clip must be positive"),
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--initial-lr", "0.01", "--lr", "0.001"], "--initial-lr must lie between 0 and --lr"),
])
def test_script_rejects_bad_arguments(extra, message, capsys):
    with pytest.raises(SystemExit) as exc:
        script.parse_args(SCRIPT_TINY + extra)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_script_rejects_a_warmup_longer_than_the_run_before_training(text_file, tmp_path):
    with pytest.raises(ValueError, match=r"--warmup-ratio 0.99 gives 1[0-9] warmup steps in a run of 1[0-9] steps"):
        script.main(["--text-files", str(text_file), "--output-dir", str(tmp_path), "--epochs", "1",
                     "--warmup-ratio", "0.99"] + SCRIPT_TINY)


@pytest.mark.parametrize("extra, message", [
    (["--grad-clip", "0"], "error: --grad-clip must be positive"),          # an argument check
    (["--text-files", "/nonexistent/story.txt"],
     "error: --text-files: text file not found: /nonexistent/story.txt"),  # in main
])
def test_script_bad_input_is_one_line_and_exit_2(tmp_path, extra, message):
    args = [sys.executable, str(SCRIPT), "--output-dir", str(tmp_path / "o")] + SCRIPT_TINY + extra
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr.strip().splitlines()[-1] and "Traceback" not in result.stderr

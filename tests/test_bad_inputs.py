"""Issue 19's table of bad inputs: each script, run as a learner would, must stop before any work
with one line `error: ...` naming the argument, exit code 2 and no traceback, and must leave a
file already in its output location unchanged. Plus: --resume with a new --lr applies it, and a
checkpoint save that fails halfway leaves the previous checkpoint loadable."""
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, import_path

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "A journey of a thousand miles begins with one step.",
             "Every effort moves you closer to the goal.", "She sells sea shells by the sea shore."]
TEXT = " ".join(SENTENCES * 12)
TINY = ["--model-size", "tiny", "--context-length", "16", "--batch-size", "2", "--eval-freq", "2",
        "--eval-iter", "2", "--drop-rate", "0.0", "--lr", "3e-3", "--device", "cpu", "--no-progress"]

# (script, arguments, the argument the error must name); {tmp} is a fresh folder, {text} a tiny text
CASES = [
    ("ch05/gpt_generate.py", ["--temperature", "nan"], "--temperature"),
    ("ch05/gpt_generate.py", ["--temperature", "inf"], "--temperature"),
    ("ch05/gpt_generate.py", ["--temperature", "-0.5"], "--temperature"),
    ("ch05/gpt_generate.py", ["--max-new-tokens", "1000000000"], "--max-new-tokens"),
    ("ch05/gpt_generate.py", ["--max-new-tokens", "-1"], "--max-new-tokens"),
    ("ch05/gpt_generate.py", ["--weights-dir", "{tmp}/mistyped"], "--weights-dir"),
    ("ch05/gpt_generate.py", ["--weights-dir", "{tmp}/existing.txt"], "--weights-dir"),
    # gpt_train.py: each must fail before reading the text or building a model
    ("ch05/gpt_train.py", ["--start-context", ""], "--start-context"),
    ("ch05/gpt_train.py", ["--start-context", "  \n "], "--start-context"),
    ("ch05/gpt_train.py", ["--output-dir", "{tmp}/existing.txt"], "--output-dir"),
    ("ch05/gpt_train.py", ["--output-dir", "{tmp}/existing.txt/run"], "--output-dir"),
    ("ch05/gpt_train.py", ["--output-dir", "/proc/no-such-run"], "--output-dir"),
    ("ch05/gpt_train.py", ["--lr", "inf"], "--lr"),
    ("ch05/gpt_train.py", ["--lr", "nan"], "--lr"),
    ("ch05/gpt_train.py", ["--lr", "-1e-3"], "--lr"),
    ("ch05/gpt_train.py", ["--lr", "1e30"], "--lr"),  # trains one step, then the loss is NaN
    ("appendix-A/DDP-script.py", ["--lr", "1e30", "--device", "cpu"], "--lr"),  # one process, no torchrun
    ("appendix-A/DDP-script.py", ["--lr", "inf", "--device", "cpu"], "--lr"),
    ("appendix-A/DDP-script.py", ["--lr", "1e300", "--device", "cpu"], "--lr"),  # beyond float32
    ("ch03/bench_attention.py", ["--threads", "0"], "--threads"),
    ("ch03/bench_attention.py", ["--threads", "-2"], "--threads"),
]
TRAIN_BASE = ["--text-files", "{text}", "--output-dir", "{tmp}/run"] + TINY + ["--epochs", "1"]  # bad ones win


def run_case(script, args, tmp_path):
    text = tmp_path / "story.txt"
    text.write_text(TEXT, encoding="utf-8")
    existing = tmp_path / "existing.txt"
    existing.write_text("keep me", encoding="utf-8")
    if script.endswith("gpt_train.py"):
        args = TRAIN_BASE + args  # the last of a repeated option counts
    args = [a.format(tmp=tmp_path, text=text) for a in args]
    result = subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    return result, existing


# --resume given files that are not a checkpoint of gpt_train.py: (file made by make_bad_checkpoint, phrase)
BAD_CHECKPOINTS = [
    ("missing.pth", "not found"),
    ("empty.pth", "empty file, not a checkpoint"),
    ("notes.txt", "not a checkpoint"),
    ("random.bin", "not a checkpoint (not a file written by torch.save)"),
    ("truncated.pth", "truncated or corrupt"),
    ("state_dict.pth", "a state dict (model weights only) where a full checkpoint was expected"),
    ("tensor.pth", "not a checkpoint of this script (a Tensor)"),
    ("plain_dict.pth", "not a checkpoint of this script (a dict without model"),
]


def make_bad_checkpoint(name, folder):
    path = folder / name
    model = torch.nn.Linear(3, 2)
    if name == "empty.pth":
        path.write_bytes(b"")
    elif name == "notes.txt":
        path.write_text("my training notes\n", encoding="utf-8")
    elif name == "random.bin":
        path.write_bytes(bytes(range(256)) * 8)
    elif name == "truncated.pth":
        torch.save({"model": model.state_dict(), "optimizer": {}, "epoch": 1}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif name == "state_dict.pth":
        torch.save(model.state_dict(), path)
    elif name == "tensor.pth":
        torch.save(torch.ones(3), path)
    elif name == "plain_dict.pth":
        torch.save({"epoch": 3, "note": "hello"}, path)
    return path


@pytest.mark.parametrize("name,phrase", BAD_CHECKPOINTS, ids=[n for n, _ in BAD_CHECKPOINTS])
def test_resume_from_a_file_that_is_not_a_checkpoint_is_a_clear_error(name, phrase, tmp_path):
    path = make_bad_checkpoint(name, tmp_path)
    before = path.read_bytes() if path.exists() else None
    result, existing = run_case("ch05/gpt_train.py", ["--resume", str(path)], tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "weights_only" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1 and "--resume" in errors[0] and phrase in errors[0], result.stderr
    assert "model " not in result.stdout  # stopped before building the model
    assert (path.read_bytes() if path.exists() else None) == before
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("script,args,flag", CASES, ids=[f"{s.split('/')[-1]} {' '.join(a)}" for s, a, _ in CASES])
def test_bad_input_is_a_clear_error(script, args, flag, tmp_path):
    result, existing = run_case(script, args, tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1 and flag in errors[0], result.stderr
    assert existing.read_text(encoding="utf-8") == "keep me"
    assert not (tmp_path / "mistyped").exists()  # nothing created for a mistyped folder
    assert not (tmp_path / "run").exists()  # failed before any work: no output folder


@pytest.fixture
def trained(tmp_path):
    """gpt_train imported, and a 1-epoch tiny run in tmp_path/run: (module, args, checkpoint path)."""
    train = import_path("ch05/gpt_train.py")
    text = tmp_path / "story.txt"
    text.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "run"
    args = ["--text-files", str(text), "--output-dir", str(out)] + TINY
    assert train.main(args + ["--epochs", "1"]) == 0
    return train, args, out / train.CHECKPOINT_NAME


def test_resume_applies_a_new_learning_rate(trained, capsys):
    train, args, ckpt_path = trained
    assert torch.load(ckpt_path, weights_only=True)["optimizer"]["param_groups"][0]["lr"] == 3e-3
    capsys.readouterr()
    assert train.main(args + ["--epochs", "2", "--resume", str(ckpt_path), "--lr", "1e-4"]) == 0
    assert "optimizer lr 0.003 -> 0.0001" in capsys.readouterr().out
    resumed = torch.load(ckpt_path, weights_only=True)
    assert resumed["epoch"] == 2
    assert {g["lr"] for g in resumed["optimizer"]["param_groups"]} == {1e-4}


def test_a_save_failing_halfway_leaves_the_previous_checkpoint(trained, monkeypatch):
    train, args, ckpt_path = trained
    before = ckpt_path.read_bytes()
    real_save = torch.save

    def save_half_then_fail(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        with open(f, "r+b") as fh:  # a truncated file, as a second Ctrl+C mid-write would leave
            fh.truncate(len(before) // 2)
        raise KeyboardInterrupt("interrupted while saving")

    monkeypatch.setattr(train.torch, "save", save_half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        train.main(args + ["--epochs", "2", "--resume", str(ckpt_path)])
    monkeypatch.undo()
    assert ckpt_path.read_bytes() == before
    assert torch.load(ckpt_path, weights_only=True)["epoch"] == 1
    assert [p.name for p in ckpt_path.parent.iterdir() if p.name.startswith(".")] == []  # no temp left over


def test_a_non_finite_loss_stops_training_and_keeps_the_checkpoint(trained):
    train, args, ckpt_path = trained
    before = ckpt_path.read_bytes()
    result = subprocess.run([sys.executable, str(ROOT / "ch05/gpt_train.py"), *args, "--epochs", "2",
                             "--resume", str(ckpt_path), "--lr", "1e30"], capture_output=True, text=True,
                            timeout=120, cwd=ckpt_path.parent.parent)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    first_step = torch.load(ckpt_path, weights_only=True)["global_step"] + 1
    assert len(error) == 1 and ("nan" in error[0] or "inf" in error[0]) and "1e+30" in error[0], result.stderr
    assert f"at step {first_step + 1} " in error[0]  # the first step ran on a finite loss, the next did not
    assert ckpt_path.read_bytes() == before
    assert sorted(p.name for p in ckpt_path.parent.iterdir()) == sorted(["loss.png", "samples.txt", ckpt_path.name])


def run_train(args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "ch05/gpt_train.py"), *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def test_a_second_run_into_a_used_output_dir_is_refused_unless_resume_or_overwrite(trained, tmp_path):
    train, args, ckpt_path = trained
    out = ckpt_path.parent
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == set(train.OUTPUT_NAMES)
    for extra in ([], ["--resume", str(tmp_path / "elsewhere" / train.CHECKPOINT_NAME)]):
        result = run_train(args + ["--epochs", "1"] + extra, tmp_path)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        error = [line for line in result.stderr.splitlines() if "error: " in line]
        assert len(error) == 1 and "--output-dir" in error[0] and "--overwrite" in error[0], result.stderr
        assert "training" not in result.stdout  # refused before any work
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # a single output file is enough to refuse
    other = tmp_path / "other"
    other.mkdir()
    (other / "samples.txt").write_text("keep me", encoding="utf-8")
    result = run_train(args[:3] + [str(other)] + args[4:] + ["--epochs", "1"], tmp_path)
    assert result.returncode == 2 and "samples.txt" in result.stderr, result.stderr
    assert (other / "samples.txt").read_text(encoding="utf-8") == "keep me"


def test_resume_into_the_folder_keeps_the_samples_and_overwrite_replaces_them(trained, tmp_path):
    train, args, ckpt_path = trained
    samples = ckpt_path.parent / "samples.txt"
    assert samples.read_text(encoding="utf-8").count("epoch ") == 1
    assert run_train(args + ["--epochs", "2", "--resume", str(ckpt_path)], tmp_path).returncode == 0
    lines = samples.read_text(encoding="utf-8").splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1", "epoch 2"]  # old + new, in order
    result = run_train(args + ["--epochs", "1", "--overwrite"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert [line.split(":")[0] for line in samples.read_text(encoding="utf-8").splitlines()] == ["epoch 1"]
    assert torch.load(ckpt_path, weights_only=True)["epoch"] == 1
    assert [p.name for p in ckpt_path.parent.iterdir() if p.name.startswith(".")] == []  # no temp left over


# ---- Launching several processes (issue 19, item 14), agreeing on a non-finite loss, and
# --resume keeping the checkpoint's optimizer settings unless typed. The scripts start their own
# processes (--nproc-per-node, ch01/script-helpers.ipynb's launch): bad arguments stop in the parent
# before any process starts; an error in the processes ends as one `error:` line and exit code 2.
import os  # noqa: E402
import socket  # noqa: E402

CASES_LAUNCH = [
    ("appendix-A/DDP-script.py", ["--epochs", "0"], "--epochs"),  # two processes by default
    ("appendix-A/DDP-script.py", ["--nproc-per-node", "0"], "--nproc-per-node"),
    ("appendix-A/DDP-script.py", ["--nproc-per-node", "65"], "--nproc-per-node"),
    ("ch05/gpt_train.py", ["--nproc-per-node", "2", "--lr", "nan"], "--lr"),
    # found in the two processes (reading the text): each raises, the parent prints one line
    ("ch05/gpt_train.py", ["--nproc-per-node", "2", "--batch-size", "30"], "--batch-size"),
]


@pytest.mark.parametrize("script,args,flag", CASES_LAUNCH,
                         ids=[f"{s.split('/')[-1]} {' '.join(a)}" for s, a, _ in CASES_LAUNCH])
def test_launched_processes_fail_with_one_clear_error(script, args, flag, tmp_path):
    result, existing = run_case(script, args, tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "leaked" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1 and flag in errors[0], result.stderr
    assert existing.read_text(encoding="utf-8") == "keep me"
    assert not (tmp_path / "run").exists()


def test_under_torchrun_only_rank_0_reports_a_bad_argument(tmp_path):
    # torchrun still adds its own ChildFailedError report; the script's own error appears once
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             f"--master_port={port}", str(ROOT / "appendix-A/DDP-script.py"),
                             "--epochs", "0"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert len([line for line in output.splitlines() if "error: --epochs must be at least 1" in line]) == 1, output


# A wrapper that launches two processes of a script and makes only rank 1's training loss NaN
# (at its second training batch): every rank must stop with the same error, none may hang.
NAN_ON_RANK_1 = '''import importlib.util, os, sys, types
from previous_chapters import launch

def load(path):
    spec = importlib.util.spec_from_file_location("script_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

def poisoned(loss_fn, is_training):
    calls = []
    def patched(*args):
        loss = loss_fn(*args)
        if is_training(args):
            calls.append(1)
            if os.environ["RANK"] == "1" and len(calls) == 2:
                return loss * float("nan")
        return loss
    return patched

def main(argv):
    script = load({script!r})
    if {patch!r} == "F.cross_entropy":  # DDP-script.py's loss
        script.F = types.SimpleNamespace(cross_entropy=poisoned(script.F.cross_entropy, lambda a: True))
    else:  # train_model_simple's loss, in previous_chapters (the training steps, not the evaluation)
        import previous_chapters
        previous_chapters.calc_loss_batch = poisoned(previous_chapters.calc_loss_batch, lambda a: a[2].training)
    return script.main(argv)

if __name__ == "__main__":
    launch(main, sys.argv[1:], nproc=2, expected=(ValueError,), skip_teardown=True)
'''


def run_nan_on_rank_1(script, patch, args, tmp_path):
    wrapper = tmp_path / "nan_on_rank_1.py"
    wrapper.write_text(NAN_ON_RANK_1.format(script=str(ROOT / script), patch=patch), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT / script.split("/")[0]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(wrapper), *args], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env=env)


def test_a_nan_loss_on_one_rank_stops_every_rank_ddp_script(tmp_path):
    result = run_nan_on_rank_1("appendix-A/DDP-script.py", "F.cross_entropy", ["--device", "cpu"], tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error: " in line]
    assert errors == ["error: the training loss became nan in epoch 1, batch 2 (--lr 0.5, mean over 2 "
                      "processes); lower --lr"], result.stderr
    assert "train accuracy" not in result.stdout


def test_a_nan_loss_on_one_rank_stops_every_rank_train_model_simple(tmp_path):
    text = tmp_path / "story.txt"
    text.write_text(TEXT, encoding="utf-8")
    args = ["--text-files", str(text), "--output-dir", str(tmp_path / "run")] + TINY + ["--epochs", "1"]
    result = run_nan_on_rank_1("ch05/gpt_train.py", "calc_loss_batch", args, tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1 and "the training loss became nan at step 1 (learning rate 0.003, mean over 2 " \
                                "processes)" in errors[0], result.stderr
    assert not (tmp_path / "run").exists()  # nothing saved


def test_resume_keeps_the_checkpoints_optimizer_settings_unless_given(trained, capsys):
    train, args, ckpt_path = trained
    without_lr = [a for i, a in enumerate(args) if "--lr" not in args[max(i - 1, 0):i + 1]]
    assert "--lr" not in without_lr and "3e-3" not in without_lr
    capsys.readouterr()
    assert train.main(without_lr + ["--epochs", "2", "--resume", str(ckpt_path), "--weight-decay", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "optimizer weight_decay 0.1 -> 0.05" in out and "optimizer lr 0.003 kept from the checkpoint" in out
    assert train.main(without_lr + ["--epochs", "3", "--resume", str(ckpt_path)]) == 0
    assert "optimizer lr 0.003, weight_decay 0.05 kept from the checkpoint" in capsys.readouterr().out
    groups = torch.load(ckpt_path, weights_only=True)["optimizer"]["param_groups"]
    assert {(g["lr"], g["weight_decay"]) for g in groups} == {(3e-3, 0.05)}  # not the defaults 4e-4, 0.1
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    assert "with --resume the checkpoint's" in " ".join(capsys.readouterr().out.split())  # said in --help

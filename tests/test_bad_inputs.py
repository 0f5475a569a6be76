"""A table of bad inputs: each script, run as a learner would, must stop before any work
with one line `error: ...` naming the argument, exit code 2 and no traceback, and must leave a
file already in its output location unchanged. Plus: --resume with a new --lr applies it, and a
checkpoint save that fails halfway leaves the previous checkpoint loadable."""
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TEXT, exports, free_port, import_path, one_thread_env
from conftest import GPT_TRAIN_TINY as TINY  # gpt_train.py's options for a tiny run

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
    ("ch05/bench_vs_hf.py", ["--batch-size", "100000"], "--batch-size 100000"),  # was an allocator traceback
    ("ch05/bench_vs_hf.py", ["--drop-rate", "nan"], "--drop-rate"),
    ("appendix-F/train_reasoner.py", ["--group-size", "1"], "--group-size"),
    ("ch04/gpt_with_kv_cache.py", ["--max-new-tokens", "1000000000"], "--max-new-tokens"),  # one sample has no group to beat
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


# ---- output folders and files: outputs are checked first, never silently overwritten, and
# written atomically. Each script is refused, before any work, an output folder that already
# holds one of its outputs (an output file that exists, for train_reasoner.py --output), an output
# path that is (or lies under) a file, and one that cannot be created (/proc); the files already
# there are unchanged and nothing is created. Then: every kind of save (torch.save, JSON, PNG)
# failing halfway leaves the previous file intact and no temporary file.

import io  # noqa: E402 (this block's own imports, kept here for easy merges)
from pathlib import Path  # noqa: E402

# script: (the output flag, one output file it writes there, or None: the flag names a file; for
# such a script the kind "a file" gives it a folder where the file is wanted)
OUTPUT_SCRIPTS = {
    "ch05/gpt_train.py": ("--output-dir", "samples.txt"),
    "appendix-D/gpt_train_schedule.py": ("--output-dir", "history.json"),
    "ch06/gpt_class_finetune.py": ("--output-dir", "accuracy.png"),
    "ch07/gpt_instruction_finetune.py": ("--output-dir", "metrics.json"),
    "appendix-F/train_reasoner.py": ("--output", None),
}
OUTPUT_KINDS = ("used", "a file", "under a file", "unwritable")
CASES_OUTPUTS = [(script, kind) for script in OUTPUT_SCRIPTS for kind in OUTPUT_KINDS
                 if not (script.endswith("gpt_train.py") and kind != "used")]  # those are in CASES above


@pytest.mark.parametrize("script,kind", CASES_OUTPUTS, ids=[f"{s.split('/')[-1]} {k}" for s, k in CASES_OUTPUTS])
def test_an_output_location_in_use_or_unwritable_is_refused_before_any_work(script, kind, tmp_path):
    flag, output_name = OUTPUT_SCRIPTS[script]
    used = tmp_path / "used"
    used.mkdir()
    earlier = used / (output_name or "model.pth")  # an earlier run's output
    earlier.write_bytes(b"an earlier run's output \x00\xff")
    existing = tmp_path / "existing.txt"
    existing.write_text("keep me", encoding="utf-8")
    target = {"used": used, "a file": existing, "under a file": existing / "run",
              "unwritable": Path("/proc/no-such-run")}[kind]
    if output_name is None:  # the flag names the output file itself
        target = earlier if kind == "used" else target / "model.pth" if kind != "a file" else used
    args = TRAIN_BASE if script.endswith("gpt_train.py") else []
    args = [a.format(tmp=tmp_path, text=tmp_path / "story.txt") for a in args] + [flag, str(target)]
    (tmp_path / "story.txt").write_text(TEXT, encoding="utf-8")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1 and f"{flag} {target}" in errors[0], result.stderr
    if kind == "used":
        assert "--overwrite" in errors[0], result.stderr
    assert result.stdout == ""  # refused before any work
    assert earlier.read_bytes() == b"an earlier run's output \x00\xff"
    assert existing.read_text(encoding="utf-8") == "keep me"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing created


def fail_halfway(kind, monkeypatch):
    """Make the next `kind` of write ("torch.save", "json" or "png") write half a file, then fail."""
    import pathlib

    import matplotlib.figure

    def truncate_then_interrupt(path):
        path = Path(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]) if path.exists() else None
        raise KeyboardInterrupt(f"interrupted while writing {path.name}")  # a Ctrl+C mid-write

    if kind == "torch.save":
        real = torch.save
        monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: (real(obj, f, *a, **k), truncate_then_interrupt(f)))
    elif kind == "json":
        real = pathlib.Path.write_text
        monkeypatch.setattr(pathlib.Path, "write_text",
                            lambda self, *a, **k: (real(self, *a, **k), truncate_then_interrupt(self)))
    else:
        real = matplotlib.figure.Figure.savefig
        monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                            lambda self, f, *a, **k: (real(self, f, *a, **k), truncate_then_interrupt(f)))


def saver(script, out):
    """A function that writes `script`'s outputs into the folder `out` (the same bytes each time)."""
    if script == "appendix-F/train_reasoner.py":
        tr = import_path(script)
        config = tr.reasoner_config(2, 16, 1, 2)
        torch.manual_seed(0)
        model = tr.GPTModel(config)
        return lambda: tr.save_checkpoint(out / "model.pth", model, config, 2, "cot")
    if script == "appendix-D/gpt_train_schedule.py":
        sched = import_path(script)
        args = sched.parse_args(["--model-size", "tiny", "--epochs", "1", "--output-dir", str(out)])
        config = sched.pretraining_config(args, sched.MODEL_SIZES)
        torch.manual_seed(0)
        model = sched.GPTModel(config)
        history = {"train_losses": [3.0, 2.0], "val_losses": [3.5, 2.5], "tokens_seen": [16, 32],
                   "lrs": [1e-3, 1e-3], "grad_norms": [1.0, 0.5]}
        return lambda: sched.save_outputs(args, config, model, history, 0)
    if script == "ch06/gpt_class_finetune.py":
        ft = import_path(script)
        args = ft.parse_args(["--model-size", "tiny", "--epochs", "1", "--output-dir", str(out)])
        torch.manual_seed(0)
        model = ft.GPTModel(ft.TINY)
        history = ([0.7, 0.5], [0.8, 0.6], [0.5, 0.75], [0.5, 0.7], 16)
        return lambda: ft.save_outputs(out, model, ft.TINY, args, 12, False, {"test_accuracy": 0.5}, history)
    ft = import_path("ch07/gpt_instruction_finetune.py")
    torch.manual_seed(0)
    model = ft.GPTModel(dict(ft.TINY, drop_rate=0.0))

    def save():
        ft.save_json([{"instruction": "Say hi.", "output": "hi", "model_response": "hi"}], out / "test-responses.json")
        ft.save_finetuned(model, ft.TINY, out / "model.pth", model_size="tiny")
        ft.save_loss_plot(out / "loss.png", 1, [3.0, 2.0], [3.5, 2.5], [16, 32])
    return save


CASES_SAVES = [("appendix-F/train_reasoner.py", "torch.save")] + [
    (script, kind) for script in ("appendix-D/gpt_train_schedule.py", "ch06/gpt_class_finetune.py",
                                  "ch07/gpt_instruction_finetune.py") for kind in ("torch.save", "json", "png")]


@pytest.mark.parametrize("script,kind", CASES_SAVES, ids=[f"{s.split('/')[-1]} {k}" for s, k in CASES_SAVES])
def test_a_save_failing_halfway_leaves_the_previous_file_and_no_temp_file(script, kind, tmp_path, monkeypatch):
    out = tmp_path / "run"
    save = saver(script, out)
    save()  # an earlier run's outputs
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert before and not any(name.startswith(".") for name in before)
    fail_halfway(kind, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        save()  # the same outputs again, interrupted in the middle of one of its writes
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(after) == sorted(before)  # no temporary file left over
    for name in before:
        if name.endswith(".pth"):  # torch.save's bytes name the (temporary) file: compare the contents
            old, new = (torch.load(out / name, weights_only=True), torch.load(io.BytesIO(before[name]), weights_only=True))
            assert old.keys() == new.keys() and all(torch.equal(a, b) for a, b in zip(
                old["model" if "model" in old else "model_state_dict"].values(),
                new["model" if "model" in new else "model_state_dict"].values()))
        else:
            assert after[name] == before[name], name  # the earlier file whole (or the same bytes again)


# ---- one loader for checkpoints: every script that reads a checkpoint, given a file that is not the one it
# needs, stops with one error line (chapter 1's read_checkpoint / load_weights) naming the flag and what is
# wrong, and leaves the file as it was. (script, flag, file, phrase the error line must hold)
CASES_LOADER = [
    ("ch04/gpt_with_kv_cache.py", "--checkpoint", "missing.pth", "checkpoint not found"),
    ("ch04/gpt_with_kv_cache.py", "--checkpoint", "folder", "checkpoint not found (it is a folder)"),
    ("ch04/gpt_with_kv_cache.py", "--checkpoint", "empty.pth", "empty file, not a checkpoint"),
    ("ch04/gpt_with_kv_cache.py", "--checkpoint", "notes.txt", "not a checkpoint (not a file written by torch.save)"),
    ("ch04/gpt_with_kv_cache.py", "--checkpoint", "truncated.pth", "truncated or corrupt"),
    ("ch04/gpt_with_kv_cache.py", "--checkpoint", "gpt_train.pth", "is a full checkpoint (model, optimizer, config"),
    ("ch04/gpt_with_kv_cache.py", "--checkpoint", "other_config.pth", "holds weights of another configuration"),
    ("ch06/classify.py", "--checkpoint", "empty.pth", "empty file, not a checkpoint"),
    ("ch06/classify.py", "--checkpoint", "objects.pth", "holds Python objects that a safe (weights-only) load refuses"),
    ("ch06/classify.py", "--checkpoint", "gpt_train.pth", "not a checkpoint of this script (a dict without kind"),
    ("ch06/classify.py", "--checkpoint", "other_config.pth", "holds weights of another configuration"),
    ("ch07/chat.py", "--checkpoint", "random.bin", "not a checkpoint (not a file written by torch.save)"),
    ("ch07/chat.py", "--checkpoint", "state_dict.pth", "a state dict (model weights only) where a full checkpoint"),
    ("ch07/chat.py", "--checkpoint", "other_config.pth", "holds weights of another configuration"),
    ("ch07/evaluate.py", "--checkpoint", "truncated.pth", "truncated or corrupt"),
    ("ch07/chat.py", "--checkpoint", "bad_config.pth", "its config cannot build a GPTModel (ValueError: the "
                                                        "configuration lacks n_heads"),
    ("appendix-F/train_reasoner.py", "--grpo-from", "tensor.pth", "not a checkpoint of this script (a Tensor)"),
    ("appendix-F/train_reasoner.py", "--grpo-from", "gpt_train.pth", "not a checkpoint of this script (a dict without digits"),
    ("appendix-F/train_reasoner.py", "--grpo-from", "other_config.pth", "holds weights of another configuration"),
    ("appendix-F/train_reasoner.py", "--distill-from", "plain_dict.pth", "(a dict without model, config, digits"),
    ("ch05/gpt_train.py", "--resume", "gpt_train.pth", "trained with another configuration (checkpoint vs this run: "
                                                        "vocab_size 64 vs 50257; context_length 32 vs 16"),
    ("ch05/gpt_train.py", "--resume", "other_config.pth", "not a checkpoint of this script (a dict without optimizer"),
]
LOADER_CFG = {"vocab_size": 64, "context_length": 32, "emb_dim": 32, "n_heads": 2, "n_layers": 2, "drop_rate": 0.0,
              "qkv_bias": False}


def make_loader_file(name, folder, script):
    """make_bad_checkpoint's files, plus: objects.pth (an optimizer object, refused by a weights-only load), folder,
    gpt_train.pth (gpt_train.py's layout, a tiny model of LOADER_CFG) and other_config.pth (the layout `script`
    reads, with weights that do not fit: a tiny state dict for gpt_with_kv_cache.py; elsewhere a config entry of
    width 64 beside weights of width 32; for gpt_train.py a classifier, another script's checkpoint)."""
    path = folder / name
    if name == "folder":
        path.mkdir()
        return path
    if name not in ("objects.pth", "gpt_train.pth", "other_config.pth", "bad_config.pth"):
        return make_bad_checkpoint(name, folder)
    pc = exports("ch05")
    torch.manual_seed(0)
    model = pc.GPTModel(LOADER_CFG)
    if name == "objects.pth":
        torch.save({"model": model.state_dict(), "optimizer": torch.optim.SGD(model.parameters(), lr=0.1)}, path)
    elif name == "gpt_train.pth":
        optimizer = torch.optim.AdamW(model.parameters())
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "config": LOADER_CFG,
                    "model_size": "tiny", "world_size": 1, "tie_weights": False, "epoch": 1, "global_step": 3,
                    "tokens_seen": 96, "train_losses": [], "val_losses": [], "track_tokens_seen": []}, path)
    elif name == "bad_config.pth":  # an edited config entry: a key missing
        torch.save({"model": model.state_dict(), "config": {k: v for k, v in LOADER_CFG.items() if k != "n_heads"}},
                   path)
    elif script.endswith("gpt_with_kv_cache.py"):
        torch.save(model.state_dict(), path)
    else:
        wider = {**LOADER_CFG, "emb_dim": 64}
        torch.save({"kind": "gpt-spam-classifier", "model_state_dict": model.state_dict(), "num_classes": 2,
                    "model": model.state_dict(), "config": wider, "digits": 2}, path)
    return path


def loader_command(script, flag, path, tmp_path):
    if script.endswith("gpt_train.py"):
        text = tmp_path / "story.txt"
        text.write_text(TEXT, encoding="utf-8")
        args = [a.format(tmp=tmp_path, text=text) for a in TRAIN_BASE]
        return args + [flag, str(path)]
    if script.endswith("classify.py"):
        return [flag, str(path), "--device", "cpu", "a message"]
    if script.endswith("evaluate.py"):
        responses = tmp_path / "responses.json"
        responses.write_text('[{"instruction": "Name a color.", "input": "", "output": "Red.", '
                             '"model_response": "Blue."}]', encoding="utf-8")
        return [str(responses), flag, str(path), "--device", "cpu"]
    if script.endswith("gpt_with_kv_cache.py"):
        return [flag, str(path), "--max-new-tokens", "1"]
    return [flag, str(path), "--device", "cpu"]


@pytest.mark.parametrize("script,flag,name,phrase", CASES_LOADER,
                         ids=[f"{s.split('/')[-1]} {f} {n}" for s, f, n, _ in CASES_LOADER])
def test_a_file_that_is_not_the_checkpoint_a_script_needs_is_a_clear_error(script, flag, name, phrase, tmp_path):
    path = make_loader_file(name, tmp_path, script)
    before = path.read_bytes() if path.is_file() else None
    result = subprocess.run([sys.executable, str(ROOT / script), *loader_command(script, flag, path, tmp_path)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "weights_only" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1 and f"{flag} " in errors[0] and phrase in errors[0], result.stderr
    assert (path.read_bytes() if path.is_file() else None) == before
    assert not (tmp_path / "run").exists()  # gpt_train.py: stopped before any work


# ---- text files, the BPE script, the benches, devices, downloads, memory: a bad file, device or size
# stops with one error line naming the argument, and changes no file (the download helper may repair a
# known file). (script, arguments, the argument the error must name).
# Placeholders: {tmp} the test's folder (cwd),
# {text} a UTF-8 story, {latin1} a text saved as Latin-1, {nul} UTF-8 with a NUL byte, {binary} a PNG
# header, {folder} an empty folder, {existing} a file that must stay, {json} JSON that is no tokenizer,
# {malformed} a tokenizer file with the format tag but a number for its vocabulary, {gpt2} a models
# folder whose 124M subfolder holds OpenAI's seven file names with garbage in them.
NO_CUDA = not torch.cuda.is_available()
NO_MPS = not torch.backends.mps.is_available()
BPE = "ch02/bpe_from_scratch.py"
CASES_MISC = [
    # read_text: a text file that is not UTF-8 text, binary, or a folder (gpt_train.py, gpt_train_schedule.py)
    ("ch05/gpt_train.py", TRAIN_BASE + ["--text-files", "{latin1}"], "--text-files"),
    ("ch05/gpt_train.py", TRAIN_BASE + ["--text-files", "{text}", "{nul}"], "--text-files"),
    ("ch05/gpt_train.py", TRAIN_BASE + ["--text-files", "{folder}"], "--text-files"),
    ("appendix-D/gpt_train_schedule.py", ["--text-files", "{binary}", "--output-dir", "{folder}", "--model-size",
                                          "tiny", "--device", "cpu"], "--text-files"),
    # bpe_from_scratch.py train: input, vocab_size and output checked before training
    (BPE, ["train", "{folder}", "300", "{tmp}/tok.json"], "input"),
    (BPE, ["train", "{latin1}", "300", "{tmp}/tok.json"], "input"),
    (BPE, ["train", "{text}", "0", "{tmp}/tok.json"], "vocab_size"),
    (BPE, ["train", "{text}", "100000000000", "{tmp}/tok.json"], "vocab_size"),
    (BPE, ["train", "{text}", "300", "{existing}"], "output"),  # an existing file needs --overwrite
    (BPE, ["train", "{text}", "300", "{folder}"], "output"),
    (BPE, ["train", "{text}", "300", "/proc/no-such-tokenizer.json"], "output"),
    # bpe_from_scratch.py encode --tokenizer: missing, not a tokenizer, binary, malformed
    (BPE, ["encode", "hi", "--tokenizer", "{tmp}/missing.json"], "--tokenizer"),
    (BPE, ["encode", "hi", "--tokenizer", "{json}"], "--tokenizer"),
    (BPE, ["encode", "hi", "--tokenizer", "{binary}"], "--tokenizer"),
    (BPE, ["encode", "hi", "--tokenizer", "{malformed}"], "--tokenizer"),
    # bench_kv_cache.py: prompt + new tokens beyond the context (crashed after its results), empty prompt
    ("ch04/bench_kv_cache.py", ["--max-new-tokens", "1100"], "--max-new-tokens"),
    ("ch04/bench_kv_cache.py", ["--threads", "100000"], "--threads"),  # segfaulted
    # devices that are not there
    ("ch03/bench_attention.py", ["--device", "tpu"], "--device"),
    ("ch05/gpt_generate.py", ["--device", "cuda:7"], "--device"),
    *([("ch03/bench_attention.py", ["--device", "cuda"], "--device"),
       ("ch05/gpt_generate.py", ["--device", "cuda"], "--device")] if NO_CUDA else []),
    *([("ch05/gpt_generate.py", ["--device", "mps"], "--device")] if NO_MPS else []),
    # gpt_download.py: a models folder that cannot be written, an unknown size
    ("ch05/gpt_download.py", ["--models-dir", "/proc/no-such-models"], "--models-dir"),
    ("ch05/gpt_download.py", ["--models-dir", "{existing}"], "--models-dir"),
    ("ch05/gpt_download.py", ["--model-size", "125M", "--models-dir", "{folder}"], "--model-size"),
    ("ch05/gpt_download.py", ["--models-dir", "{gpt2}"], "--models-dir"),  # garbage in {gpt2}/124M
    ("ch05/gpt_generate.py", ["--weights-dir", "{gpt2}/124M"], "--weights-dir"),
    # allocations far beyond any machine's memory, and non-finite sizes
    ("ch03/bench_attention.py", ["--batch", "1000000"], "--batch"),
    ("ch04/perf_analysis.py", ["--batch-size", "100000"], "--batch-size"),
    ("ch04/perf_analysis.py", ["--matmul-size", "1000000"], "--matmul-size"),
    ("ch02/bench_bpe.py", ["--mb", "inf"], "--mb"),  # was an OverflowError
    ("ch02/bench_bpe.py", ["--mb", "1e6"], "--mb"),
]


def make_misc_files(tmp_path):
    """The files the placeholders of CASES_MISC name: {name: path}."""
    files = {"tmp": tmp_path, "text": tmp_path / "story.txt", "latin1": tmp_path / "latin1.txt",
             "nul": tmp_path / "nul.txt", "binary": tmp_path / "image.png", "folder": tmp_path / "folder",
             "existing": tmp_path / "existing.txt", "json": tmp_path / "settings.json",
             "malformed": tmp_path / "malformed.json", "gpt2": tmp_path / "gpt2"}
    files["text"].write_text(TEXT, encoding="utf-8")
    files["latin1"].write_bytes("Un café au lait, s'il vous plaît.".encode("latin-1"))
    files["nul"].write_bytes(b"some text\x00more text")
    files["binary"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    files["folder"].mkdir()
    files["existing"].write_text("keep me", encoding="utf-8")
    files["json"].write_text('{"learning_rate": 0.001}', encoding="utf-8")
    files["malformed"].write_text('{"format": "bpe-from-scratch", "version": 1, "vocab": 5}', encoding="utf-8")
    (files["gpt2"] / "124M").mkdir(parents=True)
    for name in ("checkpoint", "encoder.json", "hparams.json", "model.ckpt.data-00000-of-00001", "model.ckpt.index",
                 "model.ckpt.meta", "vocab.bpe"):
        (files["gpt2"] / "124M" / name).write_text("garbage", encoding="utf-8")
    return files


def snapshot(folder):
    """{relative path: bytes, or None for a folder} of everything under `folder`."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in folder.rglob("*")}


@pytest.mark.parametrize("script,args,flag", CASES_MISC,
                         ids=[f"{s.split('/')[-1]} {' '.join(a[-3:] if s.endswith('gpt_train.py') else a)}"
                              for s, a, _ in CASES_MISC])
def test_bad_file_device_or_size_is_a_clear_error(script, args, flag, tmp_path):
    files = make_misc_files(tmp_path)
    before = snapshot(tmp_path)
    args = [a.format(**files) for a in args]
    result = subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1 and flag in errors[0], result.stderr
    repaired = ("gpt2/124M/encoder.json", "gpt2/124M/vocab.bpe")  # the download helper fixes files of known checksum
    after = {k: v for k, v in snapshot(tmp_path).items() if k not in repaired}
    assert after == {k: v for k, v in before.items() if k not in repaired}  # nothing changed or created


# ---- Launching several processes, agreeing on a non-finite loss, and
# --resume keeping the checkpoint's optimizer settings unless typed. The scripts start their own
# processes (--nproc-per-node, ch01/how-the-scripts-are-built.ipynb's launch): bad arguments stop in the parent
# before any process starts; an error in the processes ends as one `error:` line and exit code 2.
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
    port = free_port()
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
    env = one_thread_env(PYTHONPATH=str(ROOT / script.split("/")[0]))
    return subprocess.run([sys.executable, str(wrapper), *args], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env=env)


def test_a_nan_loss_on_one_rank_stops_every_rank_ddp_script(tmp_path):
    result = run_nan_on_rank_1("appendix-A/DDP-script.py", "F.cross_entropy", ["--device", "cpu"], tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error: " in line]
    assert errors == ["error: the training loss became nan in epoch 1, batch 2 (learning rate 0.5, mean over 2 "
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

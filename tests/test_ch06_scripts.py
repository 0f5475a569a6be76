"""Chapter 6 scripts end to end on a tiny configuration: gpt_class_finetune.py trains on synthetic
CSV files and writes its outputs, classify.py reads the checkpoint (arguments and standard input),
and bad input gives one clear error line without a traceback. No downloads."""
import json
import re
import subprocess
import sys

import pandas as pd
import pytest
import torch
from conftest import ROOT, import_path, one_thread_env

finetune = import_path("ch06/gpt_class_finetune.py")
classify = import_path("ch06/classify.py")
FINETUNE, CLASSIFY = str(ROOT / "ch06" / "gpt_class_finetune.py"), str(ROOT / "ch06" / "classify.py")
TINY = ["--model-size", "tiny", "--trainable", "all", "--lr", "2e-3", "--epochs", "3", "--eval-freq", "4",
        "--eval-iter", "2", "--device", "cpu", "--no-progress"]
ENV = one_thread_env()  # the scripts' subprocesses: one thread too
LINE = re.compile(r"^(spam|ham) (0\.\d{3}|1\.000)  (.+)$")


pytestmark = pytest.mark.usefixtures("one_thread")  # the fixture is in conftest.py


def write_splits(folder, n_train=48, n_val=16, n_test=16):
    spam = ["WIN cash now", "FREE prize call now", "URGENT claim your cash prize"]
    ham = ["see you at lunch", "ok I will be home late", "thanks for dinner mum"]
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("validation", n_val), ("test", n_test)):
        rows = [(spam[i % 3] + f" {i}", 1) if i % 2 else (ham[i % 3] + f" {i}", 0) for i in range(n)]
        pd.DataFrame(rows, columns=["Text", "Label"]).to_csv(folder / f"{name}.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run through the real command line; returns its output folder."""
    base = tmp_path_factory.mktemp("ch06")
    data, out = write_splits(base / "data"), base / "run"
    result = subprocess.run([sys.executable, FINETUNE, "--data-dir", str(data), "--output-dir", str(out)] + TINY,
                            capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "training took" in result.stdout
    return out


def test_finetune_writes_checkpoint_metrics_and_plots(trained):
    assert {p.name for p in trained.iterdir()} == {"classifier.pth", "metrics.json", "loss.png", "accuracy.png"}
    metrics = json.loads((trained / "metrics.json").read_text())
    assert {"train_accuracy", "val_accuracy", "test_accuracy", "seconds"} <= set(metrics)
    assert metrics["train_accuracy"] >= 0.8 and metrics["test_accuracy"] >= 0.8   # an easy task, chance is 0.5
    ckpt = torch.load(trained / "classifier.pth", weights_only=True)
    assert ckpt["config"]["emb_dim"] == 32 and ckpt["num_classes"] == 2 and ckpt["trainable"] == "all"
    assert ckpt["model_state_dict"]["out_head.weight"].shape == (2, 32)
    assert (trained / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_classify_arguments_and_stdin_agree(trained):
    ckpt = str(trained / "classifier.pth")
    messages = ["WIN cash now 99", "see you at lunch 42", "FREE prize call now and more words here"]
    by_args = subprocess.run([sys.executable, CLASSIFY, "--checkpoint", ckpt, "--device", "cpu",
                              "--batch-size", "2"] + messages, capture_output=True, text=True, env=ENV, timeout=120)
    assert by_args.returncode == 0, by_args.stderr
    lines = by_args.stdout.splitlines()
    assert len(lines) == 3 and all(LINE.match(line) for line in lines), lines
    assert [LINE.match(line).group(3) for line in lines] == messages
    assert [LINE.match(line).group(1) for line in lines][:2] == ["spam", "ham"]
    by_stdin = subprocess.run([sys.executable, CLASSIFY, "--checkpoint", ckpt, "--device", "cpu"],
                              input="\n".join(messages) + "\n", capture_output=True, text=True, env=ENV, timeout=120)
    assert by_stdin.returncode == 0 and by_stdin.stdout == by_args.stdout   # batches of 8 vs 2: same


def test_bad_input_to_classify(trained, tmp_path, capsys):
    ckpt = trained / "classifier.pth"
    assert classify.main(["--checkpoint", str(ckpt), "--device", "cpu", "fine", " "]) == 2
    assert capsys.readouterr().err.strip() == "error: message 2 (the argument number 2) is empty"
    assert classify.main(["--checkpoint", str(tmp_path / "missing.pth"), "--device", "cpu", "hello"]) == 2
    assert "missing.pth: checkpoint not found" in capsys.readouterr().err
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a checkpoint")
    assert classify.main(["--checkpoint", str(text_file), "--device", "cpu", "hello"]) == 2
    assert "is not a checkpoint (not a file written by torch.save)" in capsys.readouterr().err
    other = tmp_path / "other.pth"
    torch.save({"model": {}, "config": {"emb_dim": 32}}, other)  # e.g. chapter 5's checkpoint
    assert classify.main(["--checkpoint", str(other), "--device", "cpu", "hello"]) == 2
    assert ("is not a checkpoint of this script (a dict without kind, model_state_dict, num_classes; it holds "
            "model, config); --checkpoint needs the classifier.pth that gpt_class_finetune.py saves"
            in capsys.readouterr().err)
    other_kind = {**torch.load(ckpt, weights_only=True), "kind": "something-else"}
    torch.save(other_kind, other)
    assert classify.main(["--checkpoint", str(other), "--device", "cpu", "hello"]) == 2
    assert "is not a spam classifier saved by gpt_class_finetune.py (its kind is 'something-else')" in \
        capsys.readouterr().err
    saved = torch.load(ckpt, weights_only=True)
    saved["config"] = {**saved["config"], "emb_dim": 64}   # a configuration its weights do not fit
    wrong = tmp_path / "wrong.pth"
    torch.save(saved, wrong)
    assert classify.main(["--checkpoint", str(wrong), "--device", "cpu", "hello"]) == 2
    assert "its weights do not fit its configuration (emb_dim 64" in capsys.readouterr().err


def test_bad_input_to_finetune(tmp_path, capsys):
    small = write_splits(tmp_path / "small", n_train=5)
    assert finetune.main(["--data-dir", str(small), "--output-dir", str(tmp_path / "o")] + TINY) == 2
    assert "training split has 5 messages, fewer than one batch of --batch-size 8" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        finetune.main(["--data-dir", str(tmp_path / "nowhere")] + TINY)
    assert "missing train.csv" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        finetune.main(["--trainable", "everything"])
    assert "invalid choice: 'everything'" in capsys.readouterr().err
    for flag, value in (("--lr", "nan"), ("--epochs", "0"), ("--max-length", "-3")):
        with pytest.raises(SystemExit):
            finetune.main([flag, value])
        assert f"error: {flag}" in capsys.readouterr().err
    data = write_splits(tmp_path / "data")
    with_empty = write_splits(tmp_path / "with-empty")
    train = pd.read_csv(with_empty / "train.csv")
    train.loc[3, "Text"] = ""
    train.to_csv(with_empty / "train.csv", index=False)
    assert finetune.main(["--data-dir", str(with_empty), "--output-dir", str(tmp_path / "o")] + TINY) == 2
    assert capsys.readouterr().err.strip() == "error: the train split: row 3 holds an empty message"
    assert finetune.main(["--data-dir", str(data), "--output-dir", str(tmp_path / "o"), "--max-length", "999"]
                         + TINY) == 2
    assert "--max-length 999 exceeds the model's context length 256" in capsys.readouterr().err


def test_finetune_refuses_to_overwrite_and_picks_fresh_run_folders(trained, tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        finetune.main(["--output-dir", str(trained)] + TINY)
    assert ("already holds an earlier run's outputs (classifier.pth, metrics.json, loss.png, accuracy.png); "
            "use --overwrite or another folder") in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    first = finetune.parse_args(TINY).output_dir
    assert first == finetune.DEFAULT_RUNS / "run-001" and not first.exists()  # named, not yet created
    first.mkdir(parents=True)
    second = finetune.parse_args(TINY).output_dir
    assert second.name == "run-002" and first.parent == second.parent


def test_scripts_fail_without_traceback(tmp_path):
    empty_ckpt = tmp_path / "empty.pth"
    empty_ckpt.write_bytes(b"")
    result = subprocess.run([sys.executable, CLASSIFY, "--checkpoint", str(empty_ckpt), "hi"],
                            capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: --checkpoint") and len(result.stderr.strip().splitlines()) == 1

"""Chapter 5 scripts: gpt_train.py (single process, resume, bad input, 2-process DDP on the CPU)
and gpt_generate.py (a Hugging Face safetensors file). Tiny configurations only; no downloads."""
import re
import subprocess
import sys

import numpy as np
import pytest
import tiktoken
import torch
from conftest import GPT_TRAIN_TINY, ROOT, SENTENCES, import_path, one_thread_env

train = import_path("ch05/gpt_train.py")
gen = import_path("ch05/gpt_generate.py")
# the text_file fixture is in conftest.py


def train_losses(output):
    return [float(x) for x in re.findall(r"train loss (\d+\.\d+)", output)]


def test_train_tiny_writes_checkpoint_plot_samples_and_resumes(text_file, tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert train.main(["--text-files", str(text_file), "--epochs", "2", "--output-dir", str(out_dir)]
                      + GPT_TRAIN_TINY) == 0
    output = capsys.readouterr().out
    losses = train_losses(output)
    assert len(losses) >= 4 and losses[-1] < losses[0] - 1.0  # the loss falls
    assert {p.name for p in out_dir.iterdir()} == {"model_and_optimizer.pth", "loss.png", "samples.txt"}
    ckpt = torch.load(out_dir / "model_and_optimizer.pth", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["config"]["emb_dim"] == 32 and ckpt["config"]["context_length"] == 16
    assert len(ckpt["train_losses"]) == len(losses)
    assert (out_dir / "samples.txt").read_text().count("Every effort moves you") == 2

    # --resume continues from epoch 2 up to --epochs 3 with the restored model and optimizer
    assert train.main(["--text-files", str(text_file), "--epochs", "3", "--output-dir", str(out_dir),
                       "--resume", str(out_dir / "model_and_optimizer.pth")] + GPT_TRAIN_TINY) == 0
    output = capsys.readouterr().out
    assert "resumed from model_and_optimizer.pth after epoch 2" in output and "epoch 3:" in output
    resumed = torch.load(out_dir / "model_and_optimizer.pth", weights_only=True)
    assert resumed["epoch"] == 3 and resumed["train_losses"][:len(losses)] == ckpt["train_losses"]
    assert resumed["train_losses"][-1] < losses[0]

    # --resume with another configuration: a clear error naming what differs
    other = [a if a != "16" else "32" for a in GPT_TRAIN_TINY]
    with pytest.raises(ValueError, match=r"another configuration.*context_length 16 vs 32"):
        train.main(["--text-files", str(text_file), "--epochs", "4", "--output-dir", str(out_dir),
                    "--resume", str(out_dir / "model_and_optimizer.pth")] + other)


def test_train_bad_input_gives_clear_errors(text_file, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text(" ".join(SENTENCES), encoding="utf-8")  # ~45 tokens: 2 training windows of 17
    with pytest.raises(ValueError, match=r"fewer than one batch of 4 per process"):
        train.main(["--text-files", str(short), "--output-dir", str(tmp_path)] + GPT_TRAIN_TINY + ["--batch-size", "4"])
    with pytest.raises(ValueError, match=r"validation split has \d+ tokens, but one window needs"):
        train.main(["--text-files", str(short), "--output-dir", str(tmp_path)] + GPT_TRAIN_TINY)
    with pytest.raises(ValueError, match="text file not found"):
        train.main(["--text-files", str(tmp_path / "missing.txt")] + GPT_TRAIN_TINY)
    with pytest.raises(SystemExit):
        train.main(["--model-size", "huge"])
    assert "valid sizes: tiny, 124M, 355M, 774M, 1558M" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gen.main(["--model-size", "125M"])
    assert "valid sizes: 124M, 355M, 774M, 1558M" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gen.main(["--temperature", "-1"])
    assert "--temperature must be >= 0" in capsys.readouterr().err


def test_generate_with_safetensors_file(tmp_path):
    """A file whose final norm pins the output: logits = wte @ ln_f.bias, largest for " world"."""
    from safetensors.numpy import save_file

    vocab, ctx, d = 50257, 32, 8
    rng = np.random.default_rng(1)
    world = tiktoken.get_encoding("gpt2").encode(" world")[0]
    wte = (0.02 * rng.standard_normal((vocab, d))).astype(np.float32)
    wte[world] = 10.0 / np.sqrt(d)
    t = {"wte.weight": wte, "wpe.weight": (0.02 * rng.standard_normal((ctx, d))).astype(np.float32),
         "ln_f.weight": np.zeros(d, np.float32), "ln_f.bias": wte[world].copy()}
    for name, shape in [("attn.c_attn.weight", (d, 3 * d)), ("attn.c_attn.bias", (3 * d,)),
                        ("attn.c_proj.weight", (d, d)), ("attn.c_proj.bias", (d,)),
                        ("mlp.c_fc.weight", (d, 4 * d)), ("mlp.c_fc.bias", (4 * d,)),
                        ("mlp.c_proj.weight", (4 * d, d)), ("mlp.c_proj.bias", (d,)),
                        ("ln_1.weight", (d,)), ("ln_1.bias", (d,)), ("ln_2.weight", (d,)), ("ln_2.bias", (d,))]:
        t["h.0." + name] = rng.standard_normal(shape).astype(np.float32)
    path = tmp_path / "model.safetensors"
    save_file(t, str(path))
    (tmp_path / "config.json").write_text('{"vocab_size": 50257, "n_positions": 32, "n_embd": 8, '
                                          '"n_head": 2, "n_layer": 1}')
    cmd = [sys.executable, str(ROOT / "ch05/gpt_generate.py"), "--safetensors", str(path),
           "--prompt", "Hello", "--max-new-tokens", "4"]
    for extra in ([], ["--temperature", "1.0", "--top-k", "1"]):
        res = subprocess.run(cmd + extra, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == "Hello world world world world"
        assert "Hugging Face weights from model.safetensors" in res.stderr

    path.write_bytes(path.read_bytes()[:1000])  # truncated file: clear error, no traceback
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "cannot read the safetensors file model.safetensors" in res.stderr
    assert "Traceback" not in res.stderr


def test_ddp_two_cpu_processes(text_file, tmp_path):
    out_dir = tmp_path / "ddp"
    env = one_thread_env()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "ch05/gpt_train.py"), "--text-files", str(text_file), "--epochs", "3",
           "--output-dir", str(out_dir)] + GPT_TRAIN_TINY
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "processes 2" in res.stdout
    losses = train_losses(res.stdout)
    assert len(losses) >= 3 and losses[-1] < losses[0] - 1.0
    assert res.stdout.count("saved checkpoint:") == 1  # only the first process writes
    ckpt = torch.load(out_dir / "model_and_optimizer.pth", weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == 3
    # each process saw half of the windows: tokens seen = all windows x 3 epochs
    assert ckpt["tokens_seen"] == 2 * (ckpt["global_step"] + 1) * 2 * 16

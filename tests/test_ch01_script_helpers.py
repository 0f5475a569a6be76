"""The helpers the scripts share instead of retyping them: chapter 1's pick_device(name),
ch01/how-the-scripts-are-built.ipynb's exports (torchrun's environment, the error convention, range checks,
the training text, atomic saves, the pretraining options, output folders), chapter 3's check_context_length,
chapter 4's attention_cls/block_cls and chapter 5's train_model_simple hooks used by --resume."""
import argparse
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, exports, import_path
from torch.utils.data import DataLoader, TensorDataset

pc = exports("ch05")
kv = import_path("ch04/gpt_with_kv_cache.py")

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"vocab_size": 50, "context_length": 8, "emb_dim": 16, "n_heads": 2, "n_layers": 2, "drop_rate": 0.0,
        "qkv_bias": False}


# ---- pick_device(name, local_rank)

def test_pick_device_names(monkeypatch):
    monkeypatch.setenv("LLMS_DEVICE", "cpu")
    assert pc.pick_device() == pc.pick_device("auto") == pc.pick_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("LLMS_DEVICE", "gpu")
    with pytest.raises(ValueError, match="LLMS_DEVICE must be cpu, cuda or mps, got 'gpu'"):
        pc.pick_device("auto")
    assert pc.pick_device("cpu") == torch.device("cpu")  # an explicit name does not read LLMS_DEVICE
    for bad in ("tpu", "cuda:x", ""):
        with pytest.raises(ValueError, match="device"):
            pc.pick_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where CUDA is missing")
def test_pick_device_refuses_cuda_where_there_is_none(monkeypatch):
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match=f"device '{name}' was requested .* CUDA is not available"):
            pc.pick_device(name)
    monkeypatch.setenv("LLMS_DEVICE", "cuda")  # the override is checked the same way
    with pytest.raises(ValueError, match="CUDA is not available"):
        pc.pick_device()


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="checks the message where MPS is missing")
def test_pick_device_refuses_mps_where_there_is_none():
    with pytest.raises(ValueError, match="MPS is not available"):
        pc.pick_device("mps")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pick_device_cuda_follows_the_local_rank():
    n = torch.cuda.device_count()
    assert pc.pick_device("cuda") == torch.device("cuda")
    assert pc.pick_device("cuda", local_rank=n - 1).index == n - 1
    assert pc.pick_device(f"cuda:{n - 1}", local_rank=0).index == n - 1
    with pytest.raises(ValueError, match=f"only {n} CUDA GPU"):
        pc.pick_device("cuda", local_rank=n)


# ---- torchrun's environment

def test_distributed_env():
    assert pc.distributed_env({}) == (0, 0, 1, False)
    assert pc.distributed_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}) == (3, 1, 4, True)
    with pytest.raises(ValueError, match="found RANK, WORLD_SIZE but not LOCAL_RANK"):
        pc.distributed_env({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match=r"RANK=-1 is outside 0..1"):
        pc.distributed_env({"RANK": "-1", "LOCAL_RANK": "0", "WORLD_SIZE": "2"})


# ---- the error convention: run_script

def run_child(body, env_extra=None):
    """Run `body` (after `from previous_chapters import run_script`) in ch05's folder."""
    env = {k: v for k, v in os.environ.items() if k != "WORLD_SIZE"}
    env.update(env_extra or {})
    code = "from previous_chapters import run_script\n" + body
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT / "ch05",
                          env=env, timeout=120)


@pytest.mark.parametrize("body, code, stdout, stderr", [
    ("def main():\n    raise ValueError('--epochs 0: must be at least 1')\nrun_script(main)", 2, "",
     "error: --epochs 0: must be at least 1\n"),
    ("def main():\n    print('ok')\n    return 3\nrun_script(main)", 3, "ok\n", ""),
    ("def main():\n    return {'a result': 1}\nrun_script(main)", 0, "", ""),  # not an int: success
    ("def main():\n    raise OSError('disk full')\nrun_script(main, expected=(ValueError, OSError))", 2, "",
     "error: disk full\n"),
])
def test_run_script_exit_codes_and_messages(body, code, stdout, stderr):
    res = run_child(body)
    assert (res.returncode, res.stdout, res.stderr) == (code, stdout, stderr)


def test_run_script_keeps_the_traceback_of_a_bug():
    res = run_child("def main():\n    return {}['missing']\nrun_script(main)")
    assert res.returncode == 1 and "Traceback" in res.stderr and "KeyError" in res.stderr


def test_run_script_under_torchrun_leaves_without_teardown():
    # an atexit handler runs at a normal exit but not after os._exit: proof of the skipped teardown
    body = ("import atexit\natexit.register(lambda: print('teardown'))\n"
            "def main():\n    print('trained', end='')\n    return 0\nrun_script(main)")
    assert run_child(body).stdout == "trainedteardown\n"
    res = run_child(body, {"WORLD_SIZE": "2"})
    assert (res.returncode, res.stdout) == (0, "trained")  # flushed, and no teardown
    res = run_child(body.replace("run_script(main)", "run_script(main, skip_teardown=True)"))
    assert res.stdout == "trained"


# ---- range checks

@pytest.mark.parametrize("args, kwargs, message", [
    (("--epochs", 0, 1), {}, "--epochs must be at least 1, got 0"),
    (("--epochs", 1, 1), {}, None),
    (("--lr", 0.0, 0), {"low_open": True}, "--lr must be positive, got 0.0"),
    (("--lr", 1e-9, 0), {"low_open": True}, None),
    (("--t", 0.5, 0.5), {"low_open": True}, "--t must be above 0.5, got 0.5"),
    (("--p", 1.0, None, 1.0), {"high_open": True}, "--p must be below 1.0, got 1.0"),
    (("--p", 2, None, 1), {}, "--p must be at most 1, got 2"),
    (("--r", 1.0, 0, 1), {"high_open": True}, "--r must lie in [0, 1), got 1.0"),
    (("--r", 0.0, 0, 1), {"low_open": True, "high_open": True}, "--r must lie in (0, 1), got 0.0"),
    (("--r", 1, 0, 1), {}, None),
    (("--lr", float("nan"), 0), {"low_open": True}, "--lr must be a finite number, got nan"),
    (("--wd", float("inf")), {}, "--wd must be a finite number, got inf"),
    (("--wd", None, 0), {}, None),  # an option left out
])
def test_range_error(args, kwargs, message):
    assert pc.range_error(*args, **kwargs) == message


def test_check_range_stops_the_parser(capsys):
    parser = argparse.ArgumentParser(prog="demo.py")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    pc.check_range(parser, parser.parse_args([]), ("batch_size", "threads"), 1)  # fine; None is skipped
    with pytest.raises(SystemExit) as exc:
        pc.check_range(parser, parser.parse_args(["--threads", "0"]), ("batch_size", "threads"), 1)
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == "demo.py: error: --threads must be at least 1, got 0"


# ---- the training text, atomic saves, the pretraining options

def test_read_text(tmp_path):
    (tmp_path / "a.txt").write_text("one", encoding="utf-8")
    (tmp_path / "b.txt").write_text("two", encoding="utf-8")
    assert pc.read_text([tmp_path / "a.txt", tmp_path / "b.txt"]) == "one <|endoftext|> two"
    with pytest.raises(ValueError, match="text file not found: .*c.txt"):
        pc.read_text([tmp_path / "a.txt", tmp_path / "c.txt"])


def test_save_atomic(tmp_path):
    target = tmp_path / "model.pth"
    pc.save_atomic(target, lambda tmp: torch.save({"w": torch.ones(2)}, tmp))
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(2))

    def fails(tmp):
        open(tmp, "wb").write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        pc.save_atomic(target, fails)
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth"]


def test_pretraining_arguments(capsys):
    sizes = {"tiny": {"emb_dim": 32, "n_layers": 2, "n_heads": 2}}
    parser = argparse.ArgumentParser()
    pc.add_pretraining_arguments(parser, sizes, output_dir="runs/x")
    args = parser.parse_args(["--model-size", "tiny", "--context-length", "16"])
    pc.check_pretraining_arguments(parser, args, sizes)
    assert (args.epochs, args.lr, args.device, str(args.output_dir)) == (10, 4e-4, "auto", "runs/x")
    assert pc.pretraining_config(args, sizes) == {"vocab_size": 50257, "context_length": 16, "emb_dim": 32,
                                                  "n_layers": 2, "n_heads": 2, "drop_rate": 0.1,
                                                  "qkv_bias": False}
    for bad, message in [(["--model-size", "huge"], "unknown --model-size 'huge'; valid sizes: tiny"),
                         (["--model-size", "tiny", "--drop-rate", "1"], "--drop-rate must lie in [0, 1), got 1.0")]:
        with pytest.raises(SystemExit):
            pc.check_pretraining_arguments(parser, parser.parse_args(bad), sizes)
        assert message in capsys.readouterr().err


# ---- chapter 3's context check, chapter 4's pluggable attention and block

def test_check_context_length_everywhere():
    pc.check_context_length(8, 8)  # a full context is fine
    with pytest.raises(ValueError, match=r"^input has 9 tokens but context_length is 8; crop it$"):
        pc.check_context_length(9, 8, hint="; crop it")
    too_long = torch.randn(1, 9, 16)
    for att in (pc.CausalAttention(16, 16, 8, 0.0), pc.MultiHeadAttention(16, 16, 8, 0.0, 2),
                pc.SDPAMultiHeadAttention(16, 16, 8, 0.0, 2), kv.MultiHeadAttentionWithCache(16, 16, 8, 0.0, 2)):
        with pytest.raises(ValueError, match="input has 9 tokens but context_length is 8"):
            att(too_long)
    for model in (pc.GPTModel(TINY), kv.GPTModel(TINY)):
        with pytest.raises(ValueError, match="input has 9 tokens but context_length is 8; keep only the last 8"):
            model(torch.zeros(1, 9, dtype=torch.long))


def test_attention_and_block_classes_are_parameters():
    torch.manual_seed(0)
    block = pc.TransformerBlock(TINY, attention_cls=pc.SDPAMultiHeadAttention)
    assert type(block.att) is pc.SDPAMultiHeadAttention
    assert type(pc.TransformerBlock(TINY).att) is pc.MultiHeadAttention
    assert type(pc.TransformerBlock({**TINY, "use_sdpa": True}).att) is pc.SDPAMultiHeadAttention

    class Marked(pc.TransformerBlock):
        pass

    assert all(type(b) is Marked for b in pc.GPTModel(TINY, block_cls=Marked).trf_blocks)
    # the KV-cache model is the chapter's model with another block: same weights, same logits
    chapter, cached = pc.GPTModel(TINY).eval(), kv.GPTModel(TINY).eval()
    assert issubclass(kv.GPTModel, kv.ChapterGPTModel) and issubclass(kv.TransformerBlock, kv.ChapterTransformerBlock)
    cached.load_state_dict(chapter.state_dict())
    idx = torch.randint(0, 50, (2, 8))
    with torch.no_grad():
        assert torch.allclose(chapter(idx), cached(idx), atol=1e-6)
        assert torch.allclose(chapter(idx)[:, -1], cached(idx, use_cache=True)[:, -1], atol=1e-6)


# ---- chapter 5's training loop hooks

def tiny_run():
    """A deterministic run (fixed batch order) of train_model_simple on random tokens."""
    torch.manual_seed(1)
    data = torch.randint(0, 50, (8, 9))
    loader = DataLoader(TensorDataset(data[:, :-1], data[:, 1:]), batch_size=2, shuffle=False)
    model = pc.GPTModel(TINY)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return model, optimizer, loader


def test_train_hooks_resume_exactly_where_the_run_stopped():
    quiet = {"log": lambda *a: None, "progress": False, "on_epoch_end": lambda n: None}
    model, optimizer, loader = tiny_run()
    straight = pc.train_model_simple(model, loader, loader, optimizer, "cpu", 2, 1, 1, "a", None, **quiet)
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    model, optimizer, loader = tiny_run()
    state = {}
    pc.train_model_simple(model, loader, loader, optimizer, "cpu", 1, 1, 1, "a", None, state=state, **quiet)
    assert state["epoch"] == 1 and state["global_step"] == 3 and state["tokens_seen"] == 4 * 2 * 8
    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), **state}
    model, optimizer, loader = tiny_run()  # a fresh process: restore model, optimizer and progress
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    resumed = pc.train_model_simple(model, loader, loader, optimizer, "cpu", 2, 1, 1, "a", None,
                                    state={k: checkpoint[k] for k in state}, **quiet)
    assert resumed == straight  # the same losses and token counts as one uninterrupted run
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_train_hooks_are_called():
    model, optimizer, loader = tiny_run()
    epochs_done, logged, estimates = [], [], []

    class EpochSampler(torch.utils.data.SequentialSampler):
        def set_epoch(self, epoch):
            epochs_done.append(("set_epoch", epoch))

    loader = DataLoader(loader.dataset, batch_size=2, sampler=EpochSampler(loader.dataset))

    def evaluate(*args):
        estimates.append(len(args))
        return 1.0, 2.0

    _, _, tokens = pc.train_model_simple(model, loader, loader, optimizer, "cpu", 2, 2, 1, "a", None,
                                         evaluate=evaluate, on_epoch_end=lambda n: epochs_done.append(n),
                                         world_size=3, log=logged.append, progress=False)
    assert epochs_done == [("set_epoch", 0), 1, ("set_epoch", 1), 2]
    assert estimates == [5] * 4 and logged[0] == "Ep 1 (step 000000): train loss 1.000, val loss 2.000"
    assert tokens == [3 * 16 * k for k in (1, 3, 5, 7)]  # world_size x tokens per batch x batches so far


def test_train_default_prints_a_sample_per_epoch(capsys):
    import tiktoken
    _, _, loader = tiny_run()
    model = pc.GPTModel({**TINY, "vocab_size": 50257})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    pc.train_model_simple(model, loader, loader, optimizer, "cpu", 1, 10, 1, "Hello", tiktoken.get_encoding("gpt2"))
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Ep 1 (step 000000): train loss") and out[-1].startswith("Hello")


# ---- output folders: output_problem / check_output / fresh_run_dir / add_overwrite_argument

def test_output_problem_allows_a_new_or_empty_folder_and_creates_nothing(tmp_path):
    assert pc.output_problem("--output-dir", tmp_path / "a" / "b", ["model.pth"]) is None
    assert pc.output_problem("--output-dir", tmp_path, ["model.pth"]) is None
    assert pc.output_problem("--output", tmp_path / "new" / "model.pth") is None
    assert list(tmp_path.iterdir()) == []  # no folder, no probe file left behind


def test_output_problem_refuses_earlier_outputs_unless_overwrite(tmp_path):
    (tmp_path / "loss.png").write_bytes(b"png")
    message = pc.output_problem("--output-dir", tmp_path, ["model.pth", "loss.png"])
    assert message == (f"--output-dir {tmp_path} already holds an earlier run's outputs (loss.png); "
                       "use --overwrite or another folder")
    assert pc.output_problem("--output-dir", tmp_path, ["model.pth", "loss.png"], overwrite=True) is None
    assert pc.output_problem("--output-dir", tmp_path, ["model.pth"]) is None  # other files do not count
    resume = tmp_path / "model.pth"
    message = pc.output_problem("--output-dir", tmp_path, ["loss.png"], resume=resume)
    assert f"continue it with --resume {resume}, or use --overwrite or another folder" in message
    message = pc.output_problem("--output", tmp_path / "loss.png")
    assert message == f"--output {tmp_path / 'loss.png'} already exists; use --overwrite or another file name"
    assert pc.output_problem("--output", tmp_path / "loss.png", overwrite=True) is None
    assert (tmp_path / "loss.png").read_bytes() == b"png"


def test_output_problem_files_folders_and_unwritable_places(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me", encoding="utf-8")
    assert pc.output_problem("--output-dir", a_file, ["m.pth"]) == f"--output-dir {a_file} is a file, not a folder"
    assert (pc.output_problem("--output-dir", a_file / "run", ["m.pth"])
            == f"--output-dir {a_file / 'run'}: {a_file} is a file, not a folder")
    assert (pc.output_problem("--output", a_file / "m.pth")
            == f"--output {a_file / 'm.pth'}: {a_file} is a file, not a folder")
    assert pc.output_problem("--output", tmp_path) == f"--output {tmp_path} is a folder, not a file"
    message = pc.output_problem("--output-dir", "/proc/no-such-run", ["m.pth"])
    assert message.startswith("--output-dir /proc/no-such-run cannot be created or written: ")
    assert a_file.read_text(encoding="utf-8") == "keep me" and sorted(tmp_path.iterdir()) == [a_file]


def test_check_output_stops_with_a_parser_error(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="demo.py")
    pc.add_overwrite_argument(parser, "--output-dir")
    (tmp_path / "model.pth").write_bytes(b"weights")
    with pytest.raises(SystemExit) as exc:
        pc.check_output(parser, "--output-dir", tmp_path, ["model.pth"], overwrite=parser.parse_args([]).overwrite)
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"demo.py: error: --output-dir {tmp_path} already")
    pc.check_output(parser, "--output-dir", tmp_path, ["model.pth"], overwrite=parser.parse_args(["--overwrite"]).overwrite)
    assert "--overwrite" in parser.format_help() and "refused" in parser.format_help()


def test_fresh_run_dir_is_one_above_the_highest_run(tmp_path):
    root = tmp_path / "runs"
    assert pc.fresh_run_dir(root) == root / "run-001" and not root.exists()  # names, creates nothing
    for name in ("run-002", "run-010", "run-x", "run-7b", "notes"):
        (root / name).mkdir(parents=True)
    assert pc.fresh_run_dir(root) == root / "run-011"
    (root / "run-999").mkdir()
    assert pc.fresh_run_dir(root).name == "run-1000"  # never wraps onto an earlier run


def test_check_fast_path_arguments_and_report_bf16(capsys):
    parser = argparse.ArgumentParser(prog="demo.py")
    pc.add_fast_path_arguments(parser)
    pc.check_fast_path_arguments(parser, parser.parse_args(["--fast", "--tie-weights"]))
    with pytest.raises(SystemExit):
        pc.check_fast_path_arguments(parser, parser.parse_args(["--tie-weights"]))
    assert "error: --tie-weights needs --fast" in capsys.readouterr().err
    no_tie = argparse.ArgumentParser(prog="demo.py")
    pc.add_fast_path_arguments(no_tie, tie_weights=False)
    pc.check_fast_path_arguments(no_tie, no_tie.parse_args([]))  # no --tie-weights option at all: fine
    lines = []
    pc.report_bf16(parser.parse_args([]), "cpu", lines.append)
    pc.report_bf16(parser.parse_args(["--bf16"]), "cpu", lines.append)
    assert lines == [f"--bf16: {pc.autocast_dtype('cpu')[1]}"]


# ---- read_checkpoint / load_torch_file / load_weights: one loader for every checkpoint

def make_checkpoint_files(folder):
    """{name: path} for a good full checkpoint and each kind of wrong file."""
    layer = torch.nn.Linear(3, 2)
    full = {"model": layer.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "epoch": 1}
    paths = {name: folder / name for name in ["missing.pth", "folder.pth", "empty.pth", "notes.txt", "random.bin",
                                              "objects.pth", "truncated.pth", "state_dict.pth", "tensor.pth",
                                              "plain_dict.pth", "empty_dict.pth", "good.pth"]}
    paths["folder.pth"].mkdir()
    paths["empty.pth"].write_bytes(b"")
    paths["notes.txt"].write_text("my training notes\n", encoding="utf-8")
    paths["random.bin"].write_bytes(bytes(range(256)) * 8)
    torch.save({"model": layer.state_dict(), "optimizer": torch.optim.SGD(layer.parameters(), lr=0.1)},
               paths["objects.pth"])
    torch.save(full, paths["good.pth"])
    data = paths["good.pth"].read_bytes()
    paths["truncated.pth"].write_bytes(data[: len(data) // 2])
    torch.save(layer.state_dict(), paths["state_dict.pth"])
    torch.save(torch.ones(3), paths["tensor.pth"])
    torch.save({"epoch": 3, "note": "hello"}, paths["plain_dict.pth"])
    torch.save({}, paths["empty_dict.pth"])
    return paths


FULL_CHECKPOINT_ERRORS = {
    "missing.pth": "missing.pth: checkpoint not found",
    "folder.pth": "checkpoint not found (it is a folder)",
    "empty.pth": "empty.pth is an empty file, not a checkpoint",
    "notes.txt": "notes.txt is not a checkpoint (not a file written by torch.save)",
    "random.bin": "random.bin is not a checkpoint (not a file written by torch.save)",
    "objects.pth": "objects.pth is not a checkpoint of this script: it holds Python objects",
    "truncated.pth": "truncated.pth is truncated or corrupt",
    "state_dict.pth": "state_dict.pth is a state dict (model weights only) where a full checkpoint was expected: "
                      "--resume needs a run's checkpoint",
    "tensor.pth": "tensor.pth is not a checkpoint of this script (a Tensor); --resume needs a run's checkpoint",
    "plain_dict.pth": "(a dict without model, optimizer; it holds epoch, note)",
    "empty_dict.pth": "(a dict without model, optimizer); --resume needs",
}


@pytest.mark.parametrize("name", sorted(FULL_CHECKPOINT_ERRORS))
def test_read_checkpoint_names_each_kind_of_wrong_file(name, tmp_path):
    paths = make_checkpoint_files(tmp_path)
    before = paths[name].read_bytes() if paths[name].is_file() else None
    with pytest.raises(ValueError) as err:
        pc.read_checkpoint(paths[name], "--resume", keys=("model", "optimizer"), expected="a run's checkpoint")
    message = str(err.value)
    assert message.startswith(f"--resume {paths[name]}") and FULL_CHECKPOINT_ERRORS[name] in message
    assert "weights_only" not in message and "\n" not in message
    assert err.value.__cause__ is None and (err.value.__context__ is None or err.value.__suppress_context__)
    assert (paths[name].read_bytes() if paths[name].is_file() else None) == before


def test_read_checkpoint_loads_weights_only_and_maps_the_device(tmp_path, monkeypatch):
    paths = make_checkpoint_files(tmp_path)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    ckpt = pc.read_checkpoint(paths["good.pth"], "--resume", keys=("model", "optimizer"), map_location="cpu")
    assert ckpt["epoch"] == 1 and set(ckpt["model"]) == {"weight", "bias"}
    for name in ("objects.pth", "truncated.pth", "notes.txt"):
        with pytest.raises(ValueError):
            pc.read_checkpoint(paths[name], "--resume", keys=("model",))
    assert calls and all(k.get("weights_only") is True and k.get("map_location") == "cpu" for k in calls)


def test_read_checkpoint_for_a_bare_state_dict(tmp_path):
    paths = make_checkpoint_files(tmp_path)
    state = pc.read_checkpoint(paths["state_dict.pth"], "--checkpoint", expected="a state dict")
    assert set(state) == {"weight", "bias"}
    with pytest.raises(ValueError, match=r"good.pth is a full checkpoint \(model, optimizer, epoch\) where a state "
                                         r"dict \(model weights only\) was expected; --checkpoint needs a state dict"):
        pc.read_checkpoint(paths["good.pth"], "--checkpoint", expected="a state dict")
    for name, what in [("tensor.pth", "(a Tensor)"), ("empty_dict.pth", "(an empty dict)"),
                       ("plain_dict.pth", "(a dict whose entries are not all tensors: epoch, note)")]:
        with pytest.raises(ValueError) as err:
            pc.read_checkpoint(paths[name], "--checkpoint")
        assert f"{name} is not a state dict {what}; --checkpoint needs" in str(err.value)


def net(width=4, layers=2):
    torch.manual_seed(0)
    return torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])


def test_load_weights_names_what_differs_before_loading():
    model = net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cases = [(net(width=8), r"another configuration: of another shape \(file vs model\) 4 \(0.weight \(8, 8\) "
                            r"vs \(4, 4\), 0.bias \(8,\) vs \(4,\), 1.weight \(8, 8\) vs \(4, 4\), ...\); use tiny$"),
             (net(layers=3), r"another configuration: unexpected 2 \(2.weight, 2.bias\); use tiny$"),
             (net(layers=1), r"another configuration: missing from the file 2 \(1.weight, 1.bias\); use tiny$")]
    for other, pattern in cases:
        with pytest.raises(ValueError, match=r"^--checkpoint run/m.pth holds weights of " + pattern):
            pc.load_weights(model, other.state_dict(), "--checkpoint", "run/m.pth", hint="use tiny")
    with pytest.raises(ValueError, match="its weights are not a state dict \\(a list\\)"):
        pc.load_weights(model, [1, 2], "--checkpoint", "run/m.pth")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing loaded
    source = net()
    with torch.no_grad():
        source[0].weight.fill_(0.5)
    assert pc.load_weights(model, source.state_dict(), "--checkpoint", "run/m.pth") is model
    assert torch.equal(model[0].weight, torch.full((4, 4), 0.5))
    seen = []
    pc.load_weights(model, source.state_dict(), "--x", "p", load=seen.append)  # a model's own way to load
    assert len(seen) == 1 and seen[0] is not None


def test_read_text_names_the_option_and_the_file_for_files_that_are_not_text(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9".encode("latin-1"))
    (tmp_path / "nul.txt").write_bytes(b"ab\x00cd")
    (tmp_path / "folder").mkdir()
    cases = [("latin1.txt", r"--data: .*latin1.txt is not UTF-8 text: byte 0xe9 at offset 3"),
             ("nul.txt", r"--data: .*nul.txt looks binary, not text: a NUL byte at offset 2"),
             ("folder", r"--data: .*folder is a folder, not a text file"),
             ("missing.txt", r"--data: text file not found: .*missing.txt")]
    for name, message in cases:
        with pytest.raises(ValueError, match=message):
            pc.read_text([tmp_path / name], flag="--data")


def test_save_figure_writes_a_png_atomically_and_closes_the_figure(tmp_path, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([1, 2, 3])
    target = pc.save_figure(fig, tmp_path / "loss.png")
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert fig.number not in plt.get_fignums()  # closed: a script drawing many figures leaks none
    before = target.read_bytes()
    fig, ax = plt.subplots()

    def fail(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", fail)
    with pytest.raises(OSError):
        pc.save_figure(fig, target)
    assert target.read_bytes() == before and fig.number not in plt.get_fignums()
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]

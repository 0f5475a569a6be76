"""Chapter 7 scripts on tiny settings: gpt_instruction_finetune.py lowers the reference-answer NLL and
writes its outputs; bad input gives one clear line; chat.py through a scripted conversation."""
import json
import subprocess
import sys

import pytest
import tiktoken
import torch
from conftest import ROOT, exports, import_path

ft = import_path("ch07/gpt_instruction_finetune.py")
chat = import_path("ch07/chat.py")
pc = exports("ch07")

CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"), ("Egypt", "Cairo")]
TINY = ["--model-size", "tiny", "--epochs", "1", "--batch-size", "4", "--lr", "5e-3", "--eval-freq", "4",
        "--eval-iter", "1", "--max-new-tokens", "6", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    entries = [{"instruction": "What is the capital of the country?", "input": country,
                "output": f"The capital of {country} is {city}."} for country, city in CAPITALS * 8]
    path = tmp_path_factory.mktemp("data") / "capitals.json"
    path.write_text(json.dumps(entries))
    return path  # 40 entries: 34 training, 4 test, 2 validation


@pytest.fixture(scope="module")
def run_dir(data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    assert ft.main(["--data-file", str(data_file), "--output-dir", str(out)] + TINY) == 0
    return out


def test_finetune_lowers_reference_nll_and_writes_outputs(run_dir):
    assert {p.name for p in run_dir.iterdir()} == {"model.pth", "test-responses.json", "loss.png", "metrics.json"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train_entries"] == 34 and metrics["test_entries"] == 4
    assert metrics["nll_after"] < metrics["nll_before"] - 1.0  # 8 steps on very repetitive data
    assert metrics["train_losses"][-1] < metrics["train_losses"][0]
    responses = json.loads((run_dir / "test-responses.json").read_text())
    assert len(responses) == 4 and all(isinstance(r["model_response"], str) for r in responses)
    model, config, extra = pc.load_finetuned(run_dir / "model.pth")
    assert config["emb_dim"] == 32 and extra["model_size"] == "tiny" and extra["is_standin"] is False
    tok = tiktoken.get_encoding("gpt2")
    assert abs(pc.response_nll(model, responses, tok, "cpu") - metrics["nll_after"]) < 1e-4


def test_masked_instructions_run_and_fresh_run_folders(data_file, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "instruction-finetune" / "run-007").mkdir(parents=True)
    args = ["--data-file", str(data_file), "--max-examples", "4", "--max-test", "1", "--mask-instructions"]
    assert ft.main(args + TINY) == 0
    assert "instruction masking on" in capsys.readouterr().out
    assert (tmp_path / "runs" / "instruction-finetune" / "run-008" / "model.pth").is_file()
    assert ft.parse_args(args + TINY).output_dir.name == "run-009"


def test_bad_input(data_file, run_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):  # an earlier run's folder is never overwritten
        ft.main(["--data-file", str(data_file), "--output-dir", str(run_dir)] + TINY)
    assert ("already holds an earlier run's outputs (model.pth, test-responses.json, loss.png, metrics.json); "
            "use --overwrite or another folder") in capsys.readouterr().err
    for bad, message in [(["--lr", "nan"], "--lr must be a positive number"),
                         (["--model-size", "42M"], "valid sizes: tiny, 124M, 355M, 774M, 1558M"),
                         (["--max-test", "0"], "--max-test must be at least 1")]:
        with pytest.raises(SystemExit):
            ft.main(TINY + bad)
        assert message in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps([{"instruction": "a", "output": "b"}] * 3 + [{"output": "c"}]))
    res = subprocess.run([sys.executable, str(ROOT / "ch07/gpt_instruction_finetune.py"), "--data-file",
                          str(broken), "--output-dir", str(tmp_path / "out")] + TINY,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.strip() == "error: broken.json: entry 3 lacks the key(s) instruction"


def test_stream_tokens_match_generate(run_dir):
    model, _, _ = pc.load_finetuned(run_dir / "model.pth")
    idx = torch.tensor([[464, 3139, 286, 4881]])
    streamed = list(chat.stream_tokens(model, idx, 12, 256))
    reference = pc.generate(model, idx, 12, 256, eos_id=50256)[0, 4:].tolist()
    assert streamed == reference


def test_chat_scripted_conversation(run_dir):
    model, _, _ = pc.load_finetuned(run_dir / "model.pth")
    tok = tiktoken.get_encoding("gpt2")
    expected = []
    for question in ("What is the capital of Italy?", "Say something."):
        prompt = tok.encode(pc.format_input({"instruction": question, "input": ""}))
        out = pc.generate(model, torch.tensor([prompt]), 6, 256, eos_id=50256)
        expected.append(tok.decode(out[0, len(prompt):].tolist()))
    script = "What is the capital of Italy?\n\nSay something.\n/quit\nnever answered\n"
    res = subprocess.run([sys.executable, str(ROOT / "ch07/chat.py"), "--checkpoint", str(run_dir / "model.pth"),
                          "--max-new-tokens", "6", "--device", "cpu"], input=script, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Type an instruction; /quit to leave." in res.stderr
    for answer in expected:  # the streamed text is exactly what generate() produces
        assert f"model> {answer}\n" in res.stdout
    assert res.stdout.count("model> ") == 2  # the empty line is skipped, nothing after /quit

    res = subprocess.run([sys.executable, str(ROOT / "ch07/chat.py"), "--checkpoint", str(run_dir / "none.pth")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--checkpoint not found" in res.stderr and "Traceback" not in res.stderr


def test_evaluate_with_checkpoint_reports_the_reference_nll(run_dir):
    res = subprocess.run([sys.executable, str(ROOT / "ch07/evaluate.py"), str(run_dir / "test-responses.json"),
                          "--checkpoint", str(run_dir / "model.pth"), "--device", "cpu"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    nll_after = json.loads((run_dir / "metrics.json").read_text())["nll_after"]
    assert f"reference-answer NLL: {nll_after:.3f} nats/token" in res.stdout
    assert "responses: 4" in res.stdout and "judge" not in res.stdout  # no judge without --judge-url

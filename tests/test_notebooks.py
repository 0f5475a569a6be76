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
    counts = [c["execution_count"] for c in code]
    assert counts == list(range(1, len(code) + 1)), "cells were not run top to bottom in one go"

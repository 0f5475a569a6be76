"""Shared test helpers. The test command runs from the repository root:

    python -m pytest -c tests/pytest.ini --rootdir=.
"""
import functools
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

# tests/hermetic.py (loaded by the test command through tests/pytest.ini) pins the stand-in
# weights and the CPU. Check it ran, so a differently started pytest fails loudly, not subtly.
assert os.environ.get("LLMS_STANDIN_WEIGHTS") == "force" and os.environ.get("LLMS_DEVICE") == "cpu", (
    "run the tests with: python -m pytest -c tests/pytest.ini --rootdir=.")

# A tiny training text: ~560 tokens of very repetitive sentences, easy to learn in a few steps.
SENTENCES = ["The quick brown fox jumps over the lazy dog.", "A journey of a thousand miles begins with one step.",
             "Every effort moves you closer to the goal.", "She sells sea shells by the sea shore."]
TEXT = " ".join(SENTENCES * 12)

# ch05/gpt_train.py's options for a tiny, quick run on the CPU (add --text-files, --output-dir, --epochs).
GPT_TRAIN_TINY = ["--model-size", "tiny", "--context-length", "16", "--batch-size", "2", "--eval-freq", "2",
                  "--eval-iter", "2", "--drop-rate", "0.0", "--lr", "3e-3", "--device", "cpu", "--no-progress"]

# A tiny GPT with GPT-2's vocabulary and its qkv_bias (the shape of OpenAI's checkpoints), no dropout.
TINY_GPT2_CONFIG = {"vocab_size": 50257, "context_length": 32, "emb_dim": 16, "n_heads": 2, "n_layers": 2,
                    "drop_rate": 0.0, "qkv_bias": True}


def _load_module(path, name):
    """Execute the Python file at `path` as the module `name` (registered in sys.modules)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def import_path(relpath, name=None):
    """Import a script of a chapter folder (e.g. "ch02/bpe_from_scratch.py") as a module.

    The folder's own generated previous_chapters.py is the one the script sees, even when
    several folders' scripts are imported in one test session.
    """
    path = ROOT / relpath
    folder = str(path.parent)
    name = name or f"{path.parent.name}_{path.stem}".replace("-", "_")
    saved = sys.modules.pop("previous_chapters", None)
    sys.path.insert(0, folder)
    try:
        module = _load_module(path, name)
    finally:
        sys.path.remove(folder)
        sys.modules.pop("previous_chapters", None)
        if saved is not None:
            sys.modules["previous_chapters"] = saved
    return module


@functools.lru_cache(maxsize=None)
def exports(folder):
    """Every exported definition of the notebooks `folder`'s previous_chapters.py is built from, as
    one module: the generated file itself holds only what the folder's notebooks and scripts use,
    while the tests check the notebooks' code whichever folder uses it."""
    import generate_previous_chapters as gen

    path = Path(tempfile.mkdtemp(prefix="exports-")) / f"{folder.replace('-', '_')}_exports.py"
    path.write_text(gen.build(ROOT, folder, report=lambda message: None, prune=False), encoding="utf-8")
    return _load_module(path, path.stem)


def free_port():
    """A local TCP port that nothing listens on now (for a launcher's --master_port, or a refused URL):
    the tooling notebook's own free_port, which launch uses."""
    return exports("ch01").free_port()


def one_thread_env(**extra):
    """The environment for a script run as a subprocess: one thread (tiny models gain nothing from
    more, and a busy machine is spared), plus the given variables."""
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """TEXT saved as story.txt in a folder of its own, once per test module."""
    path = tmp_path_factory.mktemp("text") / "story.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture
def one_thread():
    """One thread for the test (tiny models: more threads only add overhead and stall a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

"""Pins what the test command depends on, for every test and every notebook kernel.

Loaded first by `python -m pytest -c tests/pytest.ini --rootdir=.` (the `-p tests.hermetic` in
tests/pytest.ini), whether the command runs the whole suite or one path, so both mean the same:

- LLMS_STANDIN_WEIGHTS=force: chapters 5-7 use the labelled stand-in for GPT-2's weights and never
  download them, so the stored outputs (computed with the stand-in) match on a machine with
  internet access too, and the suite downloads no weights;
- LLMS_DEVICE=cpu and no visible CUDA device: everything runs on the CPU, so a learner with a GPU
  gets the same numbers as the stored outputs;
- OLLAMA_HOST at a local port where nothing listens: chapter 7's judge cell never reaches a
  learner's running Ollama server, so its stored output holds everywhere.
"""
import os

PINNED = {"LLMS_STANDIN_WEIGHTS": "force", "LLMS_DEVICE": "cpu", "CUDA_VISIBLE_DEVICES": "",
          "OLLAMA_HOST": "http://127.0.0.1:9"}
os.environ.update(PINNED)

"""Remove per-cell execution timestamps (metadata "execution") from the stored notebooks.

Jupyter records when each cell started and finished; the times change on every run and make
every diff noisy, so the notebooks are stored without them (tests/test_notebooks.py checks).

It also merges a cell's interleaved stdout and stderr pieces into one stream each, with
carriage returns applied, when the cell shows nothing but text: a training loop's progress bar
is then stored as its last state, below the loss lines, instead of dozens of bar fragments
between them. nbval merges streams the same way before comparing, so tests are unaffected.

    python tests/clean_notebooks.py            # clean every notebook in place
    python tests/clean_notebooks.py ch05/*.ipynb
"""
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def notebooks():
    return sorted(p for p in ROOT.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def timestamped_cells(nb):
    return [i for i, c in enumerate(nb["cells"]) if "execution" in c.get("metadata", {})]


def _text(output):
    return "".join(output["text"]) if isinstance(output["text"], list) else output["text"]


def merged_streams(outputs):
    """`outputs` with one stdout and one stderr stream, or None if there is nothing to merge."""
    names = [o.get("name") for o in outputs if o.get("output_type") == "stream"]
    if len(names) != len(outputs) or len(names) == len(set(names)):
        return None  # something besides text, or already one stream per name
    merged = {}
    for output in outputs:
        merged[output["name"]] = merged.get(output["name"], "") + _text(output)
    for name, text in merged.items():
        merged[name] = re.sub(r"[^\n]*\r(?=[^\n])", "", text)  # keep what follows the last \r
    return [{"name": name, "output_type": "stream", "text": text.splitlines(keepends=True)}
            for name, text in merged.items()]


def clean(path):
    """Strip timestamps and merge text streams in the notebook at `path`; return True if it changed."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    cells = timestamped_cells(nb)
    for i in cells:
        del nb["cells"][i]["metadata"]["execution"]
    for i, cell in enumerate(nb["cells"]):
        merged = merged_streams(cell.get("outputs", []))
        if merged is not None:
            cell["outputs"] = merged
            cells.append(i)
    if cells:
        Path(path).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return bool(cells)


def main(argv):
    paths = [Path(a) for a in argv] or notebooks()
    for path in paths:
        if clean(path):
            print(f"cleaned {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Remove per-cell execution timestamps (metadata "execution") from the stored notebooks.

Jupyter records when each cell started and finished; the times change on every run and make
every diff noisy, so the notebooks are stored without them (tests/test_notebooks.py checks).

    python tests/clean_notebooks.py            # clean every notebook in place
    python tests/clean_notebooks.py ch05/*.ipynb
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def notebooks():
    return sorted(p for p in ROOT.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def timestamped_cells(nb):
    return [i for i, c in enumerate(nb["cells"]) if "execution" in c.get("metadata", {})]


def clean(path):
    """Strip the timestamps from the notebook at `path`; return True if it changed."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    cells = timestamped_cells(nb)
    for i in cells:
        del nb["cells"][i]["metadata"]["execution"]
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

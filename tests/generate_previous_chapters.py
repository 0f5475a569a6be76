"""Write each folder's previous_chapters.py from the cells tagged "export" in the notebooks.

The notebooks are the single source of the curriculum's reusable code. A cell whose
metadata tags include "export" is carried forward: every folder whose notebooks or
scripts import `previous_chapters` gets a generated file holding the exported cells of
the chapters before it and of its own main notebook (for its bonus notebooks and
scripts), in chapter order. Imports are gathered at the top. When a later chapter
redefines a name, the later definition wins, the earlier one is dropped, and the
generator reports it.

    python tests/generate_previous_chapters.py          # rewrite the files
    python tests/generate_previous_chapters.py --check  # exit 1 if any file is stale
"""
import argparse
import ast
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TAG = "export"
CHAPTERS = [f"ch0{i}" for i in range(1, 8)]
APPENDICES = ["appendix-A", "appendix-D", "appendix-E", "appendix-F"]
GENERATED = "previous_chapters.py"
IMPORTS_IT = re.compile(r"^\s*(from\s+previous_chapters\s+import|import\s+previous_chapters)\b", re.M)


def sources_for(folder):
    """The folders whose main notebooks feed `folder`'s previous_chapters.py, in order."""
    if folder in CHAPTERS:
        return CHAPTERS[: CHAPTERS.index(folder) + 1]
    if folder == "appendix-A":  # PyTorch basics: stands on its own
        return [folder]
    return CHAPTERS + [folder]


def main_notebook(root, folder):
    return Path(root) / folder / f"{folder}.ipynb"


def exported_cells(path):
    """The source of each cell tagged "export" in the notebook at `path`."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    cells = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code" and TAG in cell.get("metadata", {}).get("tags", []):
            src = "".join(cell["source"])
            if any(line.lstrip().startswith(("%", "!")) for line in src.splitlines()):
                raise ValueError(f"{path} cell {i}: an exported cell must be plain Python (no % or ! lines)")
            cells.append(src)
    return cells


def defined_names(stmt):
    """Top-level names a statement binds (functions, classes, plain assignments)."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {stmt.name}
    targets = []
    if isinstance(stmt, ast.Assign):
        targets = stmt.targets
    elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign)):
        targets = [stmt.target]
    names = set()
    for t in targets:
        for node in ast.walk(t):
            if isinstance(node, ast.Name):
                names.add(node.id)
    return names


def _first_line(stmt):
    decorators = getattr(stmt, "decorator_list", [])
    return min([stmt.lineno] + [d.lineno for d in decorators])


def build(root, folder, report=print):
    """Return the text of `folder`'s previous_chapters.py."""
    imports, blocks, owner = [], [], {}  # owner: name -> (block index, stmt)
    for src_folder in sources_for(folder):
        nb_path = main_notebook(root, src_folder)
        if not nb_path.exists():
            continue
        rel = nb_path.relative_to(root).as_posix()
        for src in exported_cells(nb_path):
            tree = ast.parse(src)
            lines = src.splitlines()
            keep = [True] * len(lines)
            stmts = []
            for stmt in tree.body:
                if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                    text = ast.get_source_segment(src, stmt)
                    if not (isinstance(stmt, ast.ImportFrom) and stmt.module == "previous_chapters"):
                        if text not in imports:
                            imports.append(text)
                    for j in range(_first_line(stmt) - 1, stmt.end_lineno):
                        keep[j] = False
                    continue
                stmts.append(stmt)
            block = {"source": rel, "lines": lines, "keep": keep}
            blocks.append(block)
            for stmt in stmts:
                for name in defined_names(stmt):
                    if name in owner:
                        old_block, old_stmt = owner[name]
                        if old_block is not block:
                            report(f"{folder}/{GENERATED}: {name} from {rel} replaces the one from {old_block['source']}")
                            for j in range(_first_line(old_stmt) - 1, old_stmt.end_lineno):
                                old_block["keep"][j] = False
                    owner[name] = (block, stmt)

    out = [
        f"# Generated from the cells tagged \"{TAG}\" in "
        + ", ".join(f"{s}/{s}.ipynb" for s in sources_for(folder) if main_notebook(root, s).exists())
        + ".",
        "# Edit the notebooks, not this file. Regenerate with: python tests/generate_previous_chapters.py",
        "",
    ]
    out += imports
    last_source = None
    for block in blocks:
        body = "\n".join(l for l, k in zip(block["lines"], block["keep"]) if k).strip("\n")
        if not body.strip():
            continue
        out += ["", ""]
        if block["source"] != last_source:
            out += [f"# ---- from {block['source']} ----", ""]
            last_source = block["source"]
        out.append(body)
    return "\n".join(out).rstrip("\n") + "\n"


def _code_of(path):
    """The Python source of a script, or of a notebook's code cells."""
    if path.suffix == ".py":
        return path.read_text(encoding="utf-8")
    nb = json.loads(path.read_text(encoding="utf-8"))
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


def folders_needing(root):
    """Folders where a notebook or script imports previous_chapters."""
    needing = []
    for folder in CHAPTERS + APPENDICES:
        d = Path(root) / folder
        files = [p for p in d.glob("*") if p.suffix in (".py", ".ipynb") and p.name != GENERATED]
        if any(IMPORTS_IT.search(_code_of(p)) for p in files):
            needing.append(folder)
    return needing


def generate_all(root=ROOT, report=print):
    """Map each generated file's path to the text it should hold."""
    return {Path(root) / f / GENERATED: build(root, f, report) for f in folders_needing(root)}


def stale_files(root=ROOT):
    """Generated files that differ from what the generator writes now, or are missing or orphaned."""
    want = generate_all(root, report=lambda msg: None)
    stale = [p for p, text in want.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
    orphans = [p for p in Path(root).glob(f"*/{GENERATED}") if p not in want]
    return sorted(stale + orphans)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files; exit 1 if any")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for p in stale:
            print(f"stale: {p.relative_to(ROOT)}")
        return 1 if stale else 0
    for path, text in generate_all().items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    for p in Path(ROOT).glob(f"*/{GENERATED}"):
        if p.parent.name not in folders_needing(ROOT):
            p.unlink()
            print(f"removed {p.relative_to(ROOT)} (nothing in its folder imports it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

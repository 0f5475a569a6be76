"""Write each folder's previous_chapters.py from the cells tagged "export" in the notebooks.

The notebooks are the single source of the curriculum's reusable code. A cell whose
metadata tags include "export" is carried forward: every folder whose notebooks or
scripts import `previous_chapters` gets a generated file holding the exported cells of
the notebooks it builds on (SOURCES below) and of its own main notebook (for its bonus
notebooks and scripts), in that order. Imports are gathered at the top.

The generator refuses, naming the notebook and cell, what it cannot carry forward safely:
- a name (defined, assigned or imported) that an earlier exported cell already binds,
  unless the later cell is also tagged "replace" (it then replaces the earlier one on purpose);
- `from __future__` imports, and assignments that bind several names at once;
- IPython magics (% or ! lines) in an exported cell;
- "export" tags in a notebook that no folder's SOURCES reads (they would be silently ignored).

    python tests/generate_previous_chapters.py          # rewrite the files
    python tests/generate_previous_chapters.py --check  # exit 1 if any file is stale or fails to import
"""
import argparse
import ast
import json
import re
import subprocess
import symtable
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TAG = "export"
REPLACE_TAG = "replace"
CHAPTERS = [f"ch0{i}" for i in range(1, 8)]
APPENDICES = ["appendix-A", "appendix-D", "appendix-E", "appendix-F"]
GENERATED = "previous_chapters.py"
IMPORTS_IT = re.compile(r"^\s*(from\s+previous_chapters\s+import|import\s+previous_chapters)\b", re.M)

# The notebooks whose exported cells each folder builds on, in order (the folder's own main
# notebook comes last, added by sources_for). Chapter 7 and appendices D and F do not build on
# chapter 6 (which replaces chapter 5's loss functions with last-token classification ones).
_UP_TO_5 = ["ch01", "ch02", "ch03", "ch04", "ch05"]
BUILDS_ON = {
    "ch01": [], "ch02": ["ch01"], "ch03": ["ch01", "ch02"], "ch04": ["ch01", "ch02", "ch03"],
    "ch05": ["ch01", "ch02", "ch03", "ch04"], "ch06": _UP_TO_5, "ch07": _UP_TO_5,
    "appendix-A": ["ch01"], "appendix-D": _UP_TO_5, "appendix-E": _UP_TO_5 + ["ch06"],
    "appendix-F": _UP_TO_5,
}
# Notebooks that export, per folder (the main notebook unless listed here).
TOOLING = "ch01/how-the-scripts-are-built.ipynb"  # the scripts' shared tooling, a bonus notebook
EXPORTING_NOTEBOOKS = {"ch01": ["ch01/ch01.ipynb", "ch01/download-helper.ipynb", "ch01/how-the-scripts-are-built.ipynb"],
                       "ch05": ["ch05/ch05.ipynb", "ch05/fast-path.ipynb"]}


class GeneratorError(ValueError):
    """An exported cell that cannot be carried forward safely."""


def exporting_notebooks(folder):
    return EXPORTING_NOTEBOOKS.get(folder, [f"{folder}/{folder}.ipynb"])


def sources_for(folder):
    """The notebooks (relative paths) whose exported cells feed `folder`'s previous_chapters.py."""
    return [nb for f in BUILDS_ON[folder] + [folder] for nb in exporting_notebooks(f)]


def _tags(cell):
    return cell.get("metadata", {}).get("tags", [])


def exported_cells(path):
    """(cell index, source, replaces) for each cell tagged "export" in the notebook at `path`."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    cells = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code" and TAG in _tags(cell):
            src = "".join(cell["source"])
            if any(line.lstrip().startswith(("%", "!")) for line in src.splitlines()):
                raise GeneratorError(f"{path} cell {i}: an exported cell must be plain Python (no % or ! lines)")
            cells.append((i, src, REPLACE_TAG in _tags(cell)))
    return cells


def imported_names(stmt):
    """{name: what it refers to} for the names an import statement binds."""
    bound = {}
    for a in stmt.names:
        if isinstance(stmt, ast.ImportFrom):
            bound[a.asname or a.name] = f"{'.' * stmt.level}{stmt.module or ''}:{a.name}"
        else:
            bound[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
    return bound


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


def _check_statement(stmt, where):
    if isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__":
        raise GeneratorError(f"{where}: `from __future__` imports cannot be gathered into a generated "
                             "file; remove it from the exported cell")
    if isinstance(stmt, ast.Assign) and (len(stmt.targets) > 1 or not isinstance(stmt.targets[0], ast.Name)):
        raise GeneratorError(f"{where}: an exported cell may bind only one name per assignment "
                             f"(line {stmt.lineno}: {ast.unparse(stmt)[:60]!r}); split it into one "
                             "assignment per name")


def build(root, folder, report=print, prune=True):
    """Return the text of `folder`'s previous_chapters.py.

    With `prune` (the default) it holds only the exported definitions that the folder's notebooks
    and scripts import, and what those reach in turn; `prune=False` keeps every exported
    definition of the folder's sources (for tests of the notebooks' code).
    """
    imports, blocks = [], []
    owner = {}  # name -> (block, stmt or None, import text or None, where)
    used_sources = []
    for rel in sources_for(folder):
        nb_path = Path(root) / rel
        if not nb_path.exists():
            continue
        used_sources.append(rel)
        for cell_index, src, replaces in exported_cells(nb_path):
            where = f"{rel} cell {cell_index}"
            try:
                tree = ast.parse(src)
            except SyntaxError as exc:
                raise GeneratorError(f"{where}: not valid Python ({exc.msg}, line {exc.lineno})") from None
            lines = src.splitlines()
            block = {"source": rel, "lines": lines, "keep": [True] * len(lines), "stmts": []}
            blocks.append(block)
            for stmt in tree.body:
                _check_statement(stmt, where)
                if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                    for j in range(_first_line(stmt) - 1, stmt.end_lineno):
                        block["keep"][j] = False
                    if isinstance(stmt, ast.ImportFrom) and stmt.module == "previous_chapters":
                        continue
                    text = ast.get_source_segment(src, stmt)
                    for name, origin in sorted(imported_names(stmt).items()):
                        _bind(owner, name, (block, None, (text, origin), where), replaces, folder, report)
                    if text not in imports:
                        imports.append(text)
                    continue
                block["stmts"].append(stmt)
                for name in sorted(defined_names(stmt)):
                    _bind(owner, name, (block, stmt, None, where), replaces, folder, report)
    live = {id(e[1]) for e in owner.values() if e[1] is not None}
    for block in blocks:  # statements a later cell replaced are gone already
        block["stmts"] = [s for s in block["stmts"] if id(s) in live or not defined_names(s)]
    if prune:
        reached = reached_names(owner, names_used_by(root, folder))
        for block in blocks:
            for stmt in block["stmts"]:
                if not (defined_names(stmt) & reached):
                    _drop(block, stmt)
            block["stmts"] = [s for s in block["stmts"] if defined_names(s) & reached]
        imports = [t for t in (_only(t, reached) for t in imports) if t]
    # Teaching code first, in chapter order; the scripts' tooling after it.
    blocks.sort(key=lambda b: b["source"] == TOOLING)
    parts = []  # (source, body)
    for block in blocks:
        body = _squeeze("\n".join(l for l, k in zip(block["lines"], block["keep"]) if k).strip("\n"))
        if body.strip():
            parts.append((block["source"], body, [n for s in block["stmts"] for n in sorted(defined_names(s))]))
    sources = list(dict.fromkeys(src for src, _, _ in parts))
    out = [f"# Generated from the cells tagged \"{TAG}\" in the notebooks below: only what this folder's",
           "# notebooks and scripts use. Edit the notebooks, not this file; regenerate with:",
           "#     python tests/generate_previous_chapters.py",
           "#"]
    for src in sources:
        label = " (the scripts' tooling, not a lesson)" if src == TOOLING else ""
        names = [n for s, _, ns in parts if s == src for n in ns if not n.startswith("_")]
        out += _wrap(f"# {src}{label}: " + ", ".join(names))
    out.append("")
    out += [text for text in imports if not _all_names_replaced(text, owner)]
    last_source = None
    for src, body, _ in parts:
        out += ["", ""]
        if src != last_source:
            out += [f"# ---- from {src} ----", ""]
            last_source = src
        out.append(body)
    return "\n".join(out).rstrip("\n") + "\n"


def _only(text, names):
    """An import statement cut down to the names in `names` ('' if none is left)."""
    stmt = ast.parse(text).body[0]
    bound = imported_names(stmt)
    if all(name in names for name in bound):
        return text
    stmt.names = [a for a in stmt.names if (a.asname or a.name.split(".")[0]) in names]
    return ast.unparse(stmt) if stmt.names else ""


def _wrap(line, width=100):
    """A long comment line folded at commas, continuation lines indented."""
    out = []
    while len(line) > width:
        cut = line.rfind(", ", 0, width) + 1
        if cut <= 0:
            break
        out.append(line[:cut])
        line = "#     " + line[cut:].lstrip()
    return out + [line]


def _squeeze(text):
    """At most two blank lines in a row (where dropped definitions left gaps)."""
    return re.sub(r"\n{4,}", "\n\n\n", text)


def _drop(block, stmt):
    """Remove a statement's lines from its block, with the comment lines directly above it."""
    first = _first_line(stmt) - 1
    while first > 0 and block["lines"][first - 1].lstrip().startswith("#"):
        first -= 1
    for j in range(first, stmt.end_lineno):
        block["keep"][j] = False


def references(stmt):
    """The global names a statement reads, in any of its scopes (function locals left out)."""
    names, tables = set(), [symtable.symtable(ast.unparse(stmt), "<cell>", "exec")]
    while tables:
        table = tables.pop()
        tables += table.get_children()
        module_level = table.get_type() == "module"
        names |= {sym.get_name() for sym in table.get_symbols()
                  if sym.is_referenced() and (module_level or sym.is_global())}
    return names


def reached_names(owner, roots):
    """The exported names that `roots` need, directly or through what they call."""
    reached, todo = set(), [r for r in roots if r in owner]
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        stmt = owner[name][1]
        if stmt is not None:
            todo += [n for n in references(stmt) if n in owner and n not in reached]
    return reached


IMPORT_LINE = re.compile(r"from\s+previous_chapters\s+import\s+(\([^)]*\)|[^\n;\"'#]*)")


def names_used_by(root, folder):
    """Names that `folder`'s notebooks and scripts import from previous_chapters (also inside
    strings: a notebook may write a small script that imports them)."""
    names = set()
    for path in sorted((Path(root) / folder).glob("*")):
        if path.suffix not in (".py", ".ipynb") or path.name == GENERATED:
            continue
        for group in IMPORT_LINE.findall(_code_of(path)):
            for piece in group.strip("()").replace("\\n", ",").split(","):
                words = re.findall(r"[A-Za-z_]\w*", piece)
                if words:
                    names.add(words[0])
    return names


def _bind(owner, name, new, replaces, folder, report):
    """Record that `new` binds `name`; refuse a silent rebinding of an earlier exported name."""
    block, stmt, import_text, where = new
    if name in owner:
        old_block, old_stmt, old_import, old_where = owner[name]
        if import_text is not None and old_import is not None and old_import[1] == import_text[1]:
            return  # the same object imported again: harmless
        if not replaces:
            raise GeneratorError(
                f"{where}: `{name}` is already bound by {old_where}; rename it, or tag this cell "
                f"\"{REPLACE_TAG}\" (as well as \"{TAG}\") to replace the earlier one on purpose")
        report(f"{folder}/{GENERATED}: {name} from {where} replaces the one from {old_where}")
        if old_stmt is not None:
            for j in range(_first_line(old_stmt) - 1, old_stmt.end_lineno):
                old_block["keep"][j] = False
    owner[name] = new


def _all_names_replaced(text, owner):
    """True for an import all of whose names a later exported cell replaced (so it is dropped)."""
    names = imported_names(ast.parse(text).body[0])
    return all(owner[name][2] is None or owner[name][2][1] != origin for name, origin in names.items())


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


def unread_export_tags(root):
    """'notebook cell i' for "export"-tagged cells in notebooks that no folder's sources read."""
    read = {nb for f in CHAPTERS + APPENDICES for nb in exporting_notebooks(f)}
    found = []
    for path in sorted(Path(root).glob("*/*.ipynb")):
        rel = path.relative_to(root).as_posix()
        if rel in read:
            continue
        nb = json.loads(path.read_text(encoding="utf-8"))
        found += [f"{rel} cell {i}" for i, c in enumerate(nb["cells"]) if TAG in _tags(c)]
    return found


def generate_all(root=ROOT, report=print):
    """Map each generated file's path to the text it should hold."""
    unread = unread_export_tags(root)
    if unread:
        raise GeneratorError(f"cells tagged \"{TAG}\" in notebooks the generator does not read: "
                             + ", ".join(unread) + "; remove the tag or add the notebook to "
                             "EXPORTING_NOTEBOOKS in tests/generate_previous_chapters.py")
    return {Path(root) / f / GENERATED: build(root, f, report) for f in folders_needing(root)}


def stale_files(root=ROOT):
    """Generated files that differ from what the generator writes now, or are missing or orphaned."""
    want = generate_all(root, report=lambda msg: None)
    stale = [p for p, text in want.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
    orphans = [p for p in Path(root).glob(f"*/{GENERATED}") if p not in want]
    return sorted(stale + orphans)


IMPORT_CHECK = """
import importlib.util, sys, traceback
failed = 0
for path in sys.argv[1:]:
    spec = importlib.util.spec_from_file_location("generated_" + str(abs(hash(path))), path)
    try:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    except BaseException:
        failed += 1
        print(f"{path} fails to import:\\n" + traceback.format_exc(limit=3))
sys.exit(1 if failed else 0)
"""


def import_failures(paths):
    """Import each generated file in a fresh interpreter; return the error text ('' if all import)."""
    if not paths:
        return ""
    run = subprocess.run([sys.executable, "-c", IMPORT_CHECK, *map(str, paths)],
                         capture_output=True, text=True, timeout=600)
    return "" if run.returncode == 0 else (run.stdout + run.stderr).strip()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="only report stale files and files that fail to import; exit 1 if any")
    args = parser.parse_args(argv)
    try:
        if args.check:
            stale = stale_files()
            for p in stale:
                print(f"stale: {p.relative_to(ROOT)}")
            failures = import_failures(sorted(ROOT.glob(f"*/{GENERATED}")))
            if failures:
                print(failures)
            return 1 if stale or failures else 0
        for path, text in generate_all().items():
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                path.write_text(text, encoding="utf-8")
                print(f"wrote {path.relative_to(ROOT)}")
    except GeneratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for p in Path(ROOT).glob(f"*/{GENERATED}"):
        if p.parent.name not in folders_needing(ROOT):
            p.unlink()
            print(f"removed {p.relative_to(ROOT)} (nothing in its folder imports it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Generated previous_chapters.py files: up to date, complete, and built the way the README says."""
import ast
import json
import re
import shutil

import pytest

import generate_previous_chapters as gen
from generate_previous_chapters import GENERATED, ROOT


def test_generated_files_are_up_to_date():
    stale = gen.stale_files(ROOT)
    assert not stale, (
        "out of date: " + ", ".join(str(p.relative_to(ROOT)) for p in stale)
        + "; run: python tests/generate_previous_chapters.py")


def notebook(*cells):
    """A minimal notebook; each cell is (source, tags)."""
    return {"cells": [{"cell_type": "code", "metadata": {"tags": tags}, "source": src,
                       "outputs": [], "execution_count": None} for src, tags in cells],
            "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


@pytest.fixture
def toy_repo(tmp_path):
    """ch01 exports a helper and a class; ch02 replaces the class on purpose; ch03's script imports both."""
    for folder in ("ch01", "ch02", "ch03"):
        (tmp_path / folder).mkdir()
    (tmp_path / "ch01" / "ch01.ipynb").write_text(json.dumps(notebook(
        ("import math\n\ndef helper(x):\n    return math.sqrt(x)\n", ["export"]),
        ("class Model:\n    version = 1\n", ["export"]),
        ("print('not exported')\n", []),
    )))
    (tmp_path / "ch02" / "ch02.ipynb").write_text(json.dumps(notebook(
        ("from previous_chapters import helper\nimport math\n\nclass Model:\n    version = 2\n", ["export", "replace"]),
    )))
    (tmp_path / "ch03" / "script.py").write_text("from previous_chapters import helper, Model\n")
    return tmp_path


def test_generator_output(toy_repo):
    messages = []
    files = gen.generate_all(toy_repo, report=messages.append)
    assert list(files) == [toy_repo / "ch02" / GENERATED, toy_repo / "ch03" / GENERATED]  # not ch01
    text = files[toy_repo / "ch03" / GENERATED]
    assert text.startswith("# Generated from")
    assert "Edit the notebooks, not this file" in text
    assert "# ---- from ch01/ch01.ipynb ----" in text and "# ---- from ch02/ch02.ipynb ----" in text
    assert text.count("import math") == 1           # imports gathered once, at the top
    assert "from previous_chapters" not in text      # no self-import
    assert "not exported" not in text
    assert "version = 1" not in text                 # the later chapter's Model wins...
    assert ("ch03/previous_chapters.py: Model from ch02/ch02.ipynb cell 0 replaces the one from "
            "ch01/ch01.ipynb cell 1") in messages
    namespace = {}
    exec(text, namespace)                            # ...and the file runs
    assert namespace["Model"].version == 2 and namespace["helper"](9) == 3


def write_notebook(repo, rel, *cells):
    path = repo / rel
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(notebook(*cells)))


@pytest.mark.parametrize("cells,message", [
    ([("class Model:\n    version = 2\n", ["export"])],
     "ch02/ch02.ipynb cell 0: `Model` is already bound by ch01/ch01.ipynb cell 1"),
    ([("import cmath as math\n", ["export"])],
     "ch02/ch02.ipynb cell 0: `math` is already bound by ch01/ch01.ipynb cell 0"),
    ([("x = 1\n", []), ("from __future__ import annotations\n", ["export"])],
     "ch02/ch02.ipynb cell 1: `from __future__` imports"),
    ([("a, b = 1, 2\n", ["export"])], "ch02/ch02.ipynb cell 0: an exported cell may bind only one name"),
    ([("a = b = 1\n", ["export"])], "ch02/ch02.ipynb cell 0: an exported cell may bind only one name"),
    ([("%timeit 1\n", ["export"])], "ch02/ch02.ipynb cell 0: an exported cell must be plain Python"),
])
def test_generator_refuses_what_it_cannot_do_safely(toy_repo, cells, message):
    write_notebook(toy_repo, "ch02/ch02.ipynb", *cells)
    with pytest.raises(gen.GeneratorError, match=re.escape(message)):
        gen.generate_all(toy_repo, report=lambda m: None)


def test_same_import_twice_is_fine_and_a_replaced_import_is_dropped(toy_repo):
    write_notebook(toy_repo, "ch02/ch02.ipynb", ("import math\nfrom math import sqrt\n", ["export"]),
                   ("import cmath as sqrt\n", ["export", "replace"]))
    text = gen.build(toy_repo, "ch03", report=lambda m: None, prune=False)
    assert text.count("import math\n") == 1 and "import cmath as sqrt" in text
    assert "from math import sqrt" not in text


def test_export_tags_in_a_notebook_nobody_reads_are_reported(toy_repo):
    write_notebook(toy_repo, "ch02/bonus.ipynb", ("def extra():\n    pass\n", ["export"]))
    with pytest.raises(gen.GeneratorError, match=re.escape("ch02/bonus.ipynb cell 0")):
        gen.generate_all(toy_repo, report=lambda m: None)


def test_check_imports_each_generated_file(tmp_path):
    good, bad = tmp_path / "good.py", tmp_path / "bad.py"
    good.write_text("import math\nX = math.pi\n")
    bad.write_text("X = undefined_name\n")
    assert gen.import_failures([good]) == ""
    failures = gen.import_failures([good, bad])
    assert "bad.py fails to import" in failures and "NameError" in failures and "good.py" not in failures


def test_hand_edit_is_caught(toy_repo):
    for path, text in gen.generate_all(toy_repo, report=lambda m: None).items():
        path.write_text(text)
    assert gen.stale_files(toy_repo) == []
    target = toy_repo / "ch03" / GENERATED
    target.write_text(target.read_text().replace("version = 2", "version = 3"))
    assert gen.stale_files(toy_repo) == [target]


def test_missing_and_orphaned_files_are_caught(toy_repo):
    assert gen.stale_files(toy_repo) == [toy_repo / f / GENERATED for f in ("ch02", "ch03")]  # never generated
    orphan = toy_repo / "ch01" / GENERATED
    orphan.write_text("# left over\n")
    assert orphan in gen.stale_files(toy_repo)


def test_the_real_repository_hand_edit_is_caught(tmp_path):
    """Copy the real notebooks and generated files, edit one generated file, and check."""
    generated = sorted(ROOT.glob(f"*/{GENERATED}"))
    if not generated:
        pytest.skip("no folder imports previous_chapters yet")
    for path in ROOT.glob("*/*"):
        if path.suffix in (".ipynb", ".py") and path.parent.name in gen.CHAPTERS + gen.APPENDICES:
            dest = tmp_path / path.relative_to(ROOT)
            dest.parent.mkdir(exist_ok=True)
            shutil.copy(path, dest)
    assert gen.stale_files(tmp_path) == []
    victim = tmp_path / generated[0].relative_to(ROOT)
    victim.write_text(victim.read_text() + "\n# a hand edit\n")
    assert gen.stale_files(tmp_path) == [victim]


def imported_names(code):
    """Names imported from previous_chapters in a piece of Python source."""
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and node.module == "previous_chapters":
            names |= {alias.name for alias in node.names}
    return names


def top_level_names(path):
    names = set()
    for stmt in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in stmt.names}
        else:
            names |= gen.defined_names(stmt)
    return names


def users():
    """(file, code) for every notebook and script that imports previous_chapters."""
    for folder in gen.folders_needing(ROOT):
        for path in sorted((ROOT / folder).glob("*")):
            if path.suffix in (".py", ".ipynb") and path.name != GENERATED:
                code = gen._code_of(path)
                if path.suffix == ".ipynb":  # drop IPython magics before parsing
                    code = "\n".join(l for l in code.splitlines() if not l.lstrip().startswith(("%", "!")))
                if gen.IMPORTS_IT.search(code):
                    yield path, code


@pytest.mark.parametrize("path,code", list(users()) or [pytest.param(None, None, marks=pytest.mark.skip)],
                         ids=lambda v: str(v.relative_to(ROOT)) if hasattr(v, "relative_to") else "")
def test_every_imported_name_exists(path, code):
    available = top_level_names(path.parent / GENERATED)
    missing = imported_names(code) - available
    assert not missing, f"{path.relative_to(ROOT)} imports {sorted(missing)}, which its {GENERATED} lacks"


@pytest.mark.parametrize("folder", gen.folders_needing(ROOT))
def test_every_generated_definition_is_used_by_its_folder(folder):
    """A generated file carries only what its folder's notebooks and scripts reach: every top-level
    definition in it is imported by one of them, or needed by something that is."""
    tree = ast.parse((ROOT / folder / GENERATED).read_text(encoding="utf-8"))
    defs = {name: stmt for stmt in tree.body if not isinstance(stmt, (ast.Import, ast.ImportFrom))
            for name in gen.defined_names(stmt)}
    reached, todo = set(), sorted(gen.names_used_by(ROOT, folder) & set(defs))
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo += sorted(gen.references(defs[name]) & set(defs))
    assert sorted(set(defs) - reached) == [], f"{folder}/{GENERATED} holds definitions nothing in {folder} uses"
    imported = {n for stmt in tree.body if isinstance(stmt, (ast.Import, ast.ImportFrom))
                for n in gen.imported_names(stmt)}
    needed = set().union(gen.names_used_by(ROOT, folder), *(gen.references(defs[n]) for n in reached))
    assert sorted(imported - needed) == [], f"{folder}/{GENERATED} imports modules nothing in it uses"


def test_teaching_code_comes_before_the_script_tooling():
    for folder in gen.folders_needing(ROOT):
        text = (ROOT / folder / GENERATED).read_text(encoding="utf-8")
        sections = re.findall(r"^# ---- from (\S+) ----$", text, re.M)
        if gen.TOOLING in sections:
            assert sections[-1] == gen.TOOLING and sections.count(gen.TOOLING) == 1, (folder, sections)


def test_the_generator_keeps_only_what_a_folder_reaches(toy_repo):
    """ch03's script imports `helper` only: ch01's Model is left out, and so is an exported
    function nobody calls; what `helper` calls comes along, even from a later cell."""
    write_notebook(toy_repo, "ch02/ch02.ipynb",
                   ("import os\nimport math\n\ndef unused():\n    return os.sep\n\n"
                    "def uses_root(x):\n    root = 1  # a local, not the global below\n    return math.floor(x) + root\n", ["export"]),
                   ("def root():\n    pass\n", ["export"]))
    (toy_repo / "ch01" / "ch01.ipynb").write_text(json.dumps(notebook(
        ("import math\n\ndef helper(x):\n    return uses_root(math.sqrt(x))\n", ["export"]),
        ("class Model:\n    version = 1\n", ["export"]))))
    (toy_repo / "ch03" / "script.py").write_text("from previous_chapters import helper\n")
    text = gen.generate_all(toy_repo, report=lambda m: None)[toy_repo / "ch03" / GENERATED]
    assert "def helper" in text and "def uses_root" in text
    assert "class Model" not in text and "def unused" not in text and "def root" not in text
    assert "import os" not in text and text.count("import math") == 1
    namespace = {}
    exec(text, namespace)
    assert namespace["helper"](9) == 4
    full = gen.build(toy_repo, "ch03", report=lambda m: None, prune=False)
    assert "class Model" in full and "def unused" in full

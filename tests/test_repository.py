"""The README's commands are the ones CI runs, and requirements.txt names what the curriculum needs."""
import re
import subprocess

from generate_previous_chapters import ROOT


def code_block_after(heading, text):
    section = text.split(heading, 1)[1]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1).strip()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = code_block_after("## Test", readme)
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert command in ci, f"{command!r} is not a line of .ci/run"


def test_readme_setup_installs_requirements():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert code_block_after("## Set up", readme) == "pip install -r requirements.txt"


def test_requirements_name_the_curriculum_packages():
    names = {re.split(r"[<>=!~ ]", line.split("#")[0].strip())[0].lower()
             for line in (ROOT / "requirements.txt").read_text().splitlines() if line.split("#")[0].strip()}
    needed = {"torch", "tiktoken", "jupyterlab", "matplotlib", "pandas", "tensorflow", "tqdm", "nbval", "pytest"}
    assert needed <= names, f"missing: {sorted(needed - names)}"


def test_top_level_holds_only_the_fixed_shape():
    allowed = {"README.md", "requirements.txt", "tests", ".ci", ".git", ".gitignore"} | {
        f"ch0{i}" for i in range(1, 8)} | {"appendix-A", "appendix-D", "appendix-E", "appendix-F"}
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    top = {path.split("/")[0] for path in tracked}
    assert top <= allowed, f"unexpected top-level entries: {sorted(top - allowed)}"

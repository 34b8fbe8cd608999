"""The environment files agree with pyproject.toml, explain themselves, and Binder's files are valid."""
from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^\s*(?:-\s+)?([A-Za-z0-9_.\-]+)==([^\s#+]+)")


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        match = PIN.match(line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def _pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return _pins(project["dependencies"] + project["optional-dependencies"]["dev"])


def test_every_dependency_is_pinned_exactly():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"] + project["optional-dependencies"]["dev"]:
        assert "==" in requirement, requirement
    assert _pyproject_pins()["torch"] == "2.14.1" and _pyproject_pins()["torchvision"] == "0.29.1"


def test_environment_yml_matches_and_explains_each_dependency():
    lines = (ROOT / "environment.yml").read_text().splitlines()
    assert _pins(lines) == _pyproject_pins()
    for line in lines:
        if PIN.match(line):
            assert "#" in line and len(line.split("#", 1)[1].strip()) > 10, f"no comment on: {line}"


def test_binder_matches_with_cpu_torch():
    text = (ROOT / "binder" / "requirements.txt").read_text()
    assert _pins(text.splitlines()) == _pyproject_pins()
    assert "torch==2.14.1+cpu" in text and "/whl/cpu" in text
    assert (ROOT / "binder" / "runtime.txt").read_text().strip() == "python-3.11"


def test_binder_postbuild_is_valid_shell_and_installs_the_package():
    post_build = ROOT / "binder" / "postBuild"
    assert post_build.stat().st_mode & 0o111, "postBuild must be executable"
    subprocess.run(["bash", "-n", str(post_build)], check=True)
    assert "pip install" in post_build.read_text() and "-e ." in post_build.read_text()


def test_lock_file_agrees_with_the_pins():
    locked = _pins((ROOT / "requirements.lock").read_text().splitlines())
    for name, version in _pyproject_pins().items():
        assert locked.get(name) == version, f"{name}: pyproject {version}, lock {locked.get(name)}"


def test_readme_binder_badge_opens_a_notebook_that_exists():
    badge = re.search(r"\(https://mybinder\.org/v2/gh/[^/]+/[^/]+/HEAD\?urlpath=lab/tree/([^)]+)\)",
                      (ROOT / "README.md").read_text())
    assert badge, "README.md has no Binder badge"
    assert (ROOT / badge.group(1)).is_file(), f"the Binder badge opens {badge.group(1)}, which does not exist"


def test_the_reference_run_ships_with_the_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "reference_results.json" in project["tool"]["setuptools"]["package-data"]["tutorial_lib"]
    assert (ROOT / "tutorial_lib" / "reference_results.json").is_file()


def _package_sources() -> list[Path]:
    return sorted((ROOT / "tutorial_lib").rglob("*.py"))


def test_functions_and_modules_stay_short_enough_to_read():
    """A learner opening the library reads functions of a screen or less and modules of at most 600 lines."""
    import ast

    long_functions, long_modules = [], []
    for path in _package_sources():
        text = path.read_text()
        if text.count("\n") > 600:
            long_modules.append(f"{path.relative_to(ROOT)} ({text.count(chr(10))} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not long_functions, f"functions over 60 lines: {long_functions}"
    assert not long_modules, f"modules over 600 lines: {long_modules}"


def test_teaching_modules_do_not_import_the_tooling():
    """tutorial_lib/tools/ (runner, cli, bench, jobs, prepare) sits on top: nothing the notebooks use imports it."""
    import re

    for path in _package_sources():
        if "tools" in path.relative_to(ROOT / "tutorial_lib").parts or path.name == "__main__.py":
            continue
        assert not re.search(r"from \.+tools\b|import tutorial_lib\.tools|from tutorial_lib\.tools", path.read_text()), \
            f"{path.relative_to(ROOT)} imports the tooling"

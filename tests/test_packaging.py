"""Packaging rules: what is under test, and where this project's packages come from.

The package index's ``synaptoroute`` is another publisher's project, so no install
command or error hint may fetch the core (or an integration) from the index, and the
integrations' dependency on the core must exclude every release published there.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import synaptoroute
from synaptoroute.exceptions import SOURCE_URL, install_hint

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
INTEGRATIONS = (ROOT / "integrations" / "langchain", ROOT / "integrations" / "llama-index")
OUR_NAMES = ("synaptoroute", "langchain-synaptoroute", "llama-index-selectors-synaptoroute")
# The other project's releases of `synaptoroute` on the package index (checked by hand
# when this list was written; see docs on the name in the README's Install section).
FOREIGN_RELEASES = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "0.4.1")
# `pip install` followed by its arguments, up to the end of the command.
_PIP_INSTALL = re.compile(r"pip install ([^\n`#;&|)]*)")
_FROM_INDEX = re.compile(
    r"""^['"]?(?:synaptoroute|langchain-synaptoroute|llama-index-selectors-synaptoroute)(?:\[[^\]]*\])?(?:[<>=!~].*)?['"]?$"""
)


def _pyproject(folder: Path) -> dict[str, object]:
    project: dict[str, object] = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    return project


def _texts() -> list[Path]:
    """Every file a user reads install commands or hints from."""
    found = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found += [folder / "README.md" for folder in INTEGRATIONS]
    found += sorted((ROOT / "examples").glob("*.py"))
    found += sorted((ROOT / "synaptoroute").rglob("*.py"))
    for folder in INTEGRATIONS:
        found += sorted(p for p in folder.rglob("*.py") if "tests" not in p.parts)
    return [path for path in found if path.is_file()]


def index_installs(text: str) -> list[str]:
    """The ``pip install`` arguments in ``text`` that would fetch one of our names from the index."""
    bad: list[str] = []
    for match in _PIP_INSTALL.finditer(text):
        bad += [arg for arg in match.group(1).split() if _FROM_INDEX.match(arg)]
    return bad


def test_the_scanner_recognises_index_installs() -> None:
    assert index_installs("run `pip install synaptoroute`") == ["synaptoroute"]
    assert index_installs("pip install 'synaptoroute[server]'") == ["'synaptoroute[server]'"]
    assert index_installs("pip install -U langchain-synaptoroute>=0.1") == [
        "langchain-synaptoroute>=0.1"
    ]
    assert index_installs("pip install -e . -e 'integrations/langchain[test]'") == []
    assert index_installs("pip install '.[plot]' dist/synaptoroute-0.2.1-py3-none-any.whl") == []


def test_install_commands_and_hints_never_fetch_our_packages_from_the_index() -> None:
    offenders = {
        str(path.relative_to(ROOT)): bad
        for path in _texts()
        if (bad := index_installs(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}


def test_hints_name_a_checkout_of_this_repository() -> None:
    assert install_hint("plot") == f"pip install '.[plot]' in a checkout of {SOURCE_URL}"
    assert index_installs(install_hint("langgraph", "integrations/langchain")) == []
    urls = {_pyproject(folder)["urls"]["Repository"] for folder in (ROOT, *INTEGRATIONS)}  # type: ignore[index]
    assert urls == {SOURCE_URL}


@pytest.mark.parametrize("folder", INTEGRATIONS, ids=lambda p: p.name)
def test_integrations_never_resolve_the_core_from_the_index(folder: Path) -> None:
    dependencies = _pyproject(folder)["dependencies"]
    assert isinstance(dependencies, list)
    core = [Requirement(r) for r in dependencies if Requirement(r).name == "synaptoroute"]
    assert len(core) == 1
    assert not [v for v in FOREIGN_RELEASES if core[0].specifier.contains(v)]
    ours = _pyproject(ROOT)["version"]
    assert isinstance(ours, str)
    assert core[0].specifier.contains(Version(ours))


@pytest.mark.skipif(
    os.environ.get("SYNAPTOROUTE_EXPECT_INSTALLED") != "1",
    reason="only where scripts/wheels.sh runs the tests against installed wheels",
)
def test_the_installed_wheels_are_under_test() -> None:
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    modules = ["synaptoroute", "langchain_synaptoroute", "llama_index.selectors.synaptoroute"]
    checked = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue  # this environment does not install that package
        location = Path(str(module.__file__)).resolve()
        assert site in location.parents, f"{name} imported from {location}, not {site}"
        assert ROOT not in location.parents
        checked.append(name)
    assert checked[0] == "synaptoroute"
    assert Path(synaptoroute.__file__).parent.joinpath("_model", "tokenizer.json").is_file()


def _wheels_script(mode: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """scripts/wheels.sh MODE with tmp_path/bin first on the PATH, asked for Python 3.99."""
    bin_dir = tmp_path / "bin"
    # Without the script's own setting names: what the tools it runs see of them is its.
    inherited = {k: v for k, v in os.environ.items() if k not in {"LATEST", "PY"}}
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "wheels.sh"), mode],
        env={
            **inherited,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYENV_ROOT": str(tmp_path / "no-pyenv"),
            "SYNAPTOROUTE_OTHER_PYTHONS": "3.99",
            "WHEELS_WORK": str(tmp_path / "work"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_wheels_script_skips_a_python_that_cannot_make_a_venv(tmp_path: Path) -> None:
    # A distribution's Python without its venv package passed the version check, then
    # `-m venv` failed and ended the whole release run instead of skipping that Python.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python3.99"
    fake.write_text('#!/bin/sh\ncase "$*" in *ensurepip*) exit 1 ;; esac\nexit 0\n')
    fake.chmod(0o755)
    done = _wheels_script("pythons", tmp_path)
    assert done.returncode == 0, done.stderr
    assert "cannot make a virtual environment" in done.stderr
    assert "== Python 3.99: none usable on this machine, skipped" in done.stdout


def _fake_python(path: Path, log: Path, *, usable: bool) -> Path:
    """A python that logs its calls; a usable one makes environments of logging no-ops."""
    version = path.name.removeprefix("python")
    # The tools log the script's own settings too, which must not reach the tests.
    tool = f'#!/bin/sh\necho "$0 $* [${{LATEST-}}${{PY-}}]" >> "{log}"\nexit 0\n'
    path.write_text(
        "#!/bin/sh\n"
        f'echo "$0 $*" >> "{log}"\n'
        f'[ "$1" = -V ] && echo "Python {version}.0" && exit 0\n'
        f"[ {int(usable)} = 1 ] || exit 1\n"
        'if [ "$1 $2" = "-m venv" ]; then\n'
        '  mkdir -p "$3/bin"\n'
        "  for name in python pip pytest; do\n"
        f"    printf '%s' '{tool}' > \"$3/bin/$name\"\n"
        '    chmod +x "$3/bin/$name"\n'
        "  done\n"
        "fi\n"
        "exit 0\n"
    )
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("other_usable", [False, True])
def test_wheels_script_runs_the_latest_tier_under_the_default_python_only_alone(
    tmp_path: Path, other_usable: bool
) -> None:
    # scripts/test.sh already runs every test at the latest versions under the default
    # Python: the installed wheels' latest tier runs there only where no other Python can.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    default = _fake_python(bin_dir / "python3.98", log, usable=True)
    _fake_python(bin_dir / "python3.99", log, usable=other_usable)
    dist = tmp_path / "work" / "dist"
    dist.mkdir(parents=True)
    for prefix in (
        "synaptoroute",
        "langchain_synaptoroute",
        "llama_index_selectors_synaptoroute",
    ):
        (dist / f"{prefix}-0.0.0-py3-none-any.whl").write_text("")
    done = _wheels_script("tiers", tmp_path, PYTHON=str(default))
    assert done.returncode == 0, done.stderr
    made = [line.split()[-1] for line in log.read_text().splitlines() if " -m venv " in line]
    tested = [line for line in log.read_text().splitlines() if "/bin/pytest " in line]
    assert len(tested) == 1
    # `LATEST=... latest` in the script exported LATEST to the tests, and this test, run
    # by the script's Python 3.10 tier, then ran its own tiers in that tier's environment.
    assert tested[0].endswith(" []"), tested[0]
    if other_usable:
        assert made == [str(tmp_path / "work" / "latest-3.99")]
        assert "no other Python ran" not in done.stdout
    else:
        assert "== Python 3.99: none usable on this machine, skipped" in done.stdout
        assert "no other Python ran the installed wheels: latest versions under Python 3.98.0" in (
            done.stdout
        )
        assert made == [str(tmp_path / "work" / "latest")]

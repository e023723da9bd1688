"""Install footprint and cold start: synaptoroute's core beside semantic-router and fastembed.

Each package goes into its own fresh virtual environment in the same run (the core
from a wheel built from this tree; the peers at the versions pinned in
``benchmarks/requirements-peers.txt``), then, from fresh processes:

- footprint: distributions installed (the venv's own pip/setuptools left out) and the
  size of site-packages in MB (10^6 bytes);
- ``import`` time, measured inside the process (median of ``--repeats``);
- process start to first routed query (synaptoroute only): the wall time from spawning
  ``python`` to the line printed after ``AdaptiveRouter()``, two routes of three
  utterances and one ``query`` on the bundled model. The peers' local encoders fetch
  their models from the Hugging Face hub on first use, which this machine cannot reach,
  so only their imports and footprints are measured.

Usage (from the repository root)::

    python benchmarks/footprint.py --repeats 7 --write
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import REPO_ROOT, command_line, machine_info, replace_section

SECTION = "## Install footprint and cold start (issue 14)"
SEEDED = {"pip", "setuptools", "wheel"}  # what `python -m venv` or pip itself brings
FIRST_QUERY = """
import sys
from synaptoroute import AdaptiveRouter, Route
router = AdaptiveRouter()
router.add_route(Route(name="billing", utterances=["I need a refund", "Where is my receipt?", "charge my card"]))
router.add_route(Route(name="support", utterances=["The app crashes", "I can't log in", "reset my password"]))
print(router.query("How do I get my money back?").name, flush=True)
"""
IMPORT_TIME = (
    "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
)
COUNT = """
import importlib.metadata as m, json, sysconfig
from pathlib import Path
names = sorted({d.metadata["Name"].lower() for d in m.distributions()})
site = Path(sysconfig.get_paths()["purelib"])
size = sum(p.stat().st_size for p in site.rglob("*") if p.is_file() and not p.is_symlink())
print(json.dumps({"names": names, "bytes": size}))
"""


@dataclass
class Result:
    """One package's figures."""

    label: str
    version: str
    distributions: int
    megabytes: float
    import_s: float
    first_query_s: float | None


def _peer_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO_ROOT / "benchmarks" / "requirements-peers.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip()] = version.strip()
    return pins


def _venv(folder: Path, requirements: list[str]) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    python = folder / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, *requirements], check=True)
    return python


def _footprint(python: Path) -> tuple[int, float]:
    import json

    out = subprocess.run([str(python), "-c", COUNT], check=True, capture_output=True, text=True)
    data = json.loads(out.stdout)
    names = [n for n in data["names"] if n not in SEEDED]
    return len(names), data["bytes"] / 1e6


def _median_run(argv: list[str], repeats: int, measure_wall: bool) -> float:
    """Median over fresh processes: in-process seconds printed, or the wall time from
    spawning the process to its first line of output (its exit is not waited for)."""
    samples: list[float] = []
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    for _ in range(repeats):
        start = time.perf_counter()
        with subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd="/"
        ) as proc:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            wall = time.perf_counter() - start
            rest, err = proc.communicate()
        if proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, argv, first + rest, err)
        samples.append(wall if measure_wall else float((first + rest).strip().splitlines()[-1]))
    return statistics.median(samples)


def _wheel(work: Path, ref: str | None = None) -> Path:
    """The core wheel built from the working tree, or from the commit ``ref``.

    Both from a copy: built in the checkout, setuptools wrote ``build/`` and an
    ``egg-info`` into it, and a module deleted since an earlier build stayed in the
    wheel from ``build/lib``. The tree's copy holds what git sees (tracked files as
    they are now, and untracked ones it does not ignore).
    """
    out = work / (ref or "tree")
    source = work / f"src-{ref or 'tree'}"
    if ref is None:
        listed = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "ls-files", "-z", "-co", "--exclude-standard"],
            check=True,
            capture_output=True,
        ).stdout.decode()
        for name in filter(None, listed.split("\0")):
            path = REPO_ROOT / name
            if path.is_file():  # a tracked file deleted in the tree is left out
                (source / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, source / name)
    else:
        source.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "archive", ref], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
        check=True,
    )
    return next(out.glob("synaptoroute-*.whl"))


def measure(repeats: int, baseline: str | None) -> list[Result]:
    """Install each package in a fresh venv and measure it.

    Args:
        repeats: fresh processes per timing (the median is reported).
        baseline: a commit of an earlier release to measure the same way (or ``None``).

    Returns:
        One result per package, synaptoroute first.
    """
    pins = _peer_pins()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="footprint-") as tmp:
        work = Path(tmp)
        wheel = _wheel(work)
        cases = [
            ("synaptoroute (core)", "synaptoroute", [str(wheel)], "synaptoroute"),
            *(
                [
                    (
                        f"synaptoroute at {baseline}",
                        "synaptoroute",
                        [str(_wheel(work, baseline))],
                        "synaptoroute",
                    )
                ]
                if baseline
                else []
            ),
            (
                "semantic-router",
                "semantic-router",
                [f"semantic-router=={pins['semantic-router']}"],
                "semantic_router",
            ),
            ("fastembed", "fastembed", [f"fastembed=={pins['fastembed']}"], "fastembed"),
        ]
        for label, dist, requirements, module in cases:
            python = _venv(work / f"venv-{len(results)}", requirements)
            version = subprocess.run(
                [str(python), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
                check=True,
                capture_output=True,
                text=True,
                cwd="/",  # not the checkout, whose egg-info would answer for the tree
            ).stdout.strip()
            count, megabytes = _footprint(python)
            # One warm-up process: the first run compiles bytecode into the venv.
            _median_run([str(python), "-c", f"import {module}"], 1, True)
            import_s = _median_run(
                [str(python), "-c", IMPORT_TIME.format(module=module)], repeats, False
            )
            first = (
                _median_run([str(python), "-c", FIRST_QUERY], repeats, True)
                if module == "synaptoroute"
                else None
            )
            results.append(Result(label, version, count, megabytes, import_s, first))
    return results


def report(results: list[Result], command: str, machine: str) -> str:
    """The BENCHMARKS.md section."""
    lines = [
        SECTION,
        "",
        f"Command: `{command}`. Machine: {machine}.",
        "Each package in its own fresh virtual environment, installed in the same run;",
        "timings are medians over fresh processes (`import` measured inside the process;",
        "first routed query = wall time from spawning `python` to the printed route, with",
        "`AdaptiveRouter()`, two routes of three utterances and one `query` on the bundled",
        "model). The peers' local encoders download their models from the Hugging Face hub,",
        "which this machine cannot reach, so their first query is not measured (n/a).",
        "",
        "| package | version | distributions | site-packages MB | `import` s | start → first routed query s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        first = f"{r.first_query_s:.3f}" if r.first_query_s is not None else "n/a"
        lines.append(
            f"| {r.label} | {r.version} | {r.distributions} | {r.megabytes:.0f} | {r.import_s:.3f} | {first} |"
        )
    core = results[0]
    base = next((r for r in results[1:] if r.label.startswith("synaptoroute at")), None)
    against = (
        f"{base.label} in this run: {base.distributions} distributions, {base.megabytes:.0f} MB"
        if base is not None
        else "not measured in this run: pass --baseline"
    )
    lines += [
        "",
        f"Targets (issue 14): no growth over 0.2.0 ({against}); first routed query under "
        f"0.5 s on 2 cores. This tree: {core.distributions} distributions, "
        f"{core.megabytes:.0f} MB, {core.first_query_s or float('nan'):.3f} s.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, measure, print (and with ``--write`` store) the section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--baseline",
        default="5aa9755",
        help="commit of the earlier release measured beside the tree (default: 0.2.0); '' for none",
    )
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    machine = machine_info()
    results = measure(args.repeats, args.baseline or None)
    command = command_line("footprint.py")
    text = report(results, command, machine)
    print(text)
    if args.write:
        replace_section(SECTION, text)


if __name__ == "__main__":
    main()

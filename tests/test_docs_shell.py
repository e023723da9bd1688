"""Every shell example in README.md and docs/*.md runs, against a real service and real files.

Each Markdown file's ```bash blocks become one bash script (``set -euo pipefail``), so a
variable exported in one block, or a service started in one block, is there for the
next. Each block starts in a fresh copy of a folder holding what the examples name:
``train.jsonl``/``val.jsonl`` (the CLINC150 slices), ``routes.yaml``, and ``routes.db``
already holding the training routes; ``examples/`` and ``scripts/`` link to the
repository's. Rewrites, so that nothing leaves 127.0.0.1 or depends on a fixed port:

- ``synaptoroute serve ...`` runs in the background on a free port, and the script
  waits (bounded) until ``synaptoroute healthcheck`` succeeds; it is stopped at the end;
- ``--port 8000`` and ``localhost:8000`` point at that port;
- ``curl`` gets ``--fail-with-body`` (a non-2xx answer fails the example) and a time limit,
  and may only name 127.0.0.1 or localhost.

Lines starting with ``$ `` are commands and the other lines of such a block are output.
Not run (see CONTRIBUTING.md): a line ending in ``# doc-test: skip``, a whole block after
``<!-- doc-test: skip -->`` (a reason may follow ``skip``), and the lines starting with
PREFIX in a block after ``<!-- doc-test: skip-lines PREFIX -->`` (e.g. ``pip install``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from doc_blocks import FENCE, fenced

# Integration tier: the real model (and, for some, a real server).
pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Pages whose examples run an integration package.
_NEEDS = {"langchain.md": "langchain_synaptoroute", "langgraph.md": "langchain_synaptoroute"}
SKIP = "doc-test: skip"

ROUTES_YAML = """\
threshold: 0.5
routes:
  - name: billing
    utterances: ["I need a refund", "Where is my receipt?", "I was charged twice"]
    description: Payments
  - name: tech
    utterances: ["The app crashes", "I can't log in", "The page does not load"]
"""


@dataclass
class Block:
    """One ```bash block: where it is, and its commands (continuation lines joined)."""

    path: Path
    line: int
    commands: list[str] = field(default_factory=list)


def blocks(path: Path) -> list[Block]:
    """The runnable commands of every bash block of ``path``, in order."""
    found = []
    for fence in fenced(path.read_text(encoding="utf-8"), ("bash", "sh", "shell", "console")):
        if fence.skipped:
            continue
        block = Block(path, fence.line)
        markers = fence.skipped_prefixes  # prefixes of the lines not to run
        lines = fence.code.splitlines()
        prompted = any(line.startswith("$ ") for line in lines)
        command = ""
        for line in lines:
            if not command:
                if prompted:
                    if not line.startswith("$ "):
                        continue  # the output shown after a command
                    line = line[2:]
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
            command += line
            if command.endswith("\\"):
                command += "\n"
                continue
            if SKIP not in command and not any(command.startswith(p) for p in markers):
                block.commands.append(command)
            command = ""
        found.append(block)
    return found


def rewrite(command: str) -> str:
    """The command as the harness runs it (see the module docstring)."""
    command = command.replace("localhost:8000", "127.0.0.1:$DOCTEST_PORT")
    command = re.sub(r"--port 8000\b", "--port $DOCTEST_PORT", command)
    words = command.split()
    if words[:2] == ["synaptoroute", "serve"]:
        if "--port" not in words:
            command += " --port $DOCTEST_PORT"
        return f"doctest_serve {command}"
    if words[0] == "curl":
        for url in re.findall(r"\b(?:https?://)?([A-Za-z0-9.-]+):\$?\w+/", command):
            assert url in ("127.0.0.1", "localhost"), f"curl to {url} in an example: {command}"
        return "curl --fail-with-body --max-time 60 --noproxy '*'" + command[len("curl") :]
    return command


PRELUDE = r"""
set -euo pipefail
DOCTEST_SERVER=""
doctest_stop() {
    if [ -n "$DOCTEST_SERVER" ]; then
        kill -TERM "$DOCTEST_SERVER" 2>/dev/null || true
        wait "$DOCTEST_SERVER" 2>/dev/null || true
        DOCTEST_SERVER=""
    fi
}
trap doctest_stop EXIT
# Start the example's 'synaptoroute serve' in the background; wait until it is ready.
doctest_serve() {
    doctest_stop
    "$@" > "$DOCTEST_LOGS/serve.log" 2>&1 &
    DOCTEST_SERVER=$!
    # Bounded: the model loads in seconds; give up after 3000 polls (several minutes).
    # curl, not 'synaptoroute healthcheck': a poll must not compete with the model load.
    for _ in $(seq 3000); do
        if curl -fs -o /dev/null --max-time 5 "http://127.0.0.1:$DOCTEST_PORT/readyz"; then
            return 0
        fi
        if ! kill -0 "$DOCTEST_SERVER" 2>/dev/null; then
            cat "$DOCTEST_LOGS/serve.log" >&2
            return 1
        fi
        sleep 0.1
    done
    cat "$DOCTEST_LOGS/serve.log" >&2
    return 1
}
# Each block starts in a fresh copy of the prepared folder.
doctest_block() {
    cd "$(mktemp -d "$DOCTEST_WORK/block.XXXX")"
    cp -a "$DOCTEST_FIXTURE/." .
    echo "--- $1" >&2
}
"""


def script(path: Path) -> str:
    """One bash script running every block of ``path``."""
    parts = [PRELUDE]
    for block in blocks(path):
        name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
        where = f"{name}:{block.line}"
        parts.append(f"doctest_block {shlex.quote(where)}")
        for command in block.commands:
            parts.append(f"echo {shlex.quote('$ ' + command)} >&2")
            parts.append(rewrite(command))
    return "\n".join(parts) + "\n"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder each block starts from: data files, a routes file, a store with routes."""
    folder = tmp_path_factory.mktemp("doc_fixture")
    shutil.copy(FIXTURES / "clinc150_train_slice.jsonl", folder / "train.jsonl")
    shutil.copy(FIXTURES / "clinc150_val_slice.jsonl", folder / "val.jsonl")
    (folder / "routes.yaml").write_text(ROUTES_YAML)
    for name in ("examples", "scripts"):
        (folder / name).symlink_to(ROOT / name)
    done = subprocess.run(
        [sys.executable, "-m", "synaptoroute", "import", "train.jsonl", "--store", "routes.db"],
        cwd=folder,
        env=environment(folder),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return folder


def environment(home: Path) -> dict[str, str]:
    """The examples' environment: this interpreter's scripts first, no SYNAPTOROUTE_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNAPTOROUTE_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(home)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_doc(doc: Path, prepared: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run every example of ``doc`` as one script; the script is kept beside its logs."""
    (tmp_path / "script.sh").write_text(script(doc))
    env = environment(tmp_path)
    env.update(
        DOCTEST_PORT=str(free_port()),
        DOCTEST_FIXTURE=str(prepared),
        DOCTEST_WORK=str(tmp_path),
        DOCTEST_LOGS=str(tmp_path),
    )
    return subprocess.run(
        ["bash", "--norc", "--noprofile", str(tmp_path / "script.sh")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )


@pytest.mark.timeout(900)
@pytest.mark.parametrize("doc", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_shell_examples_run(doc: Path, prepared: Path, tmp_path: Path) -> None:
    needs = _NEEDS.get(doc.name)
    if needs is not None and importlib.util.find_spec(needs) is None:
        # The core-only environment of the minimum-versions job has no integrations.
        pytest.skip(f"{doc.name}'s examples run the {needs} package, not installed here")
    done = run_doc(doc, prepared, tmp_path)
    assert done.returncode == 0, f"{doc.name}: an example failed\n{done.stderr[-6000:]}"


@pytest.mark.timeout(900)
def test_a_failing_example_fails(prepared: Path, tmp_path: Path) -> None:
    # The example this harness was written for: a form-encoded body gets 422.
    doc = tmp_path / "old.md"
    doc.write_text(
        "```bash\nsynaptoroute serve --store routes.db --port 8000\n```\n\n"
        "```bash\ncurl -s localhost:8000/route -H 'Content-Type: application/json' "
        '-d \'{"query": "refund"}\'\n'
        'curl -s localhost:8000/route -d \'{"query": "refund"}\'\necho never\n```\n'
    )
    done = run_doc(doc, prepared, tmp_path)
    assert done.returncode != 0
    assert '"route":' in done.stdout  # the JSON request was answered
    assert "422" in done.stdout or "Unprocessable" in done.stdout or "detail" in done.stdout
    assert "never" not in done.stdout


# -- the harness itself ------------------------------------------------------------------------
def test_the_harness_finds_every_bash_block() -> None:
    total = sum(len(FENCE.findall(p.read_text())) for p in DOCS)
    runnable = [c for p in DOCS for b in blocks(p) for c in b.commands]
    assert total > 10
    assert any(c.startswith("synaptoroute serve") for c in runnable)
    assert any(c.startswith("curl") for c in runnable)
    assert not [c for c in runnable if c.startswith(("pip ", "docker "))]


def test_markers_prompts_and_continuations(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "<!-- doc-test: skip (a reason) -->\n```bash\nrm -rf /\n```\n\n"
        "<!-- doc-test: skip-lines pip install -->\n```bash\npip install x\necho a \\\n  b\n"
        "echo c  # doc-test: skip\n# a comment\n```\n\n"
        "```console\n$ echo d\nd\n```\n\n```python\nprint('e')\n```\n"
    )
    found = blocks(doc)
    assert [(b.line, b.commands) for b in found] == [(7, ["echo a \\\n  b"]), (15, ["echo d"])]


def test_rewrites_keep_examples_local() -> None:
    assert rewrite("curl -s localhost:8000/route --json '{}'") == (
        "curl --fail-with-body --max-time 60 --noproxy '*' -s 127.0.0.1:$DOCTEST_PORT/route "
        "--json '{}'"
    )
    assert rewrite("synaptoroute serve --store s.db").endswith("--port $DOCTEST_PORT")
    assert rewrite("synaptoroute serve --port 8000").startswith("doctest_serve ")
    with pytest.raises(AssertionError, match=r"example\.com"):
        rewrite("curl -s http://example.com:80/x")

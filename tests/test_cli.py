"""The command line, in process (``main(argv)``), on the real model and real SQLite files.

The real encoder is built once per session; commands get it in place of a fresh
``Encoder()`` so each invocation does not reload the model.
"""

from __future__ import annotations

import argparse
import http.server
import io
import json
import os
import re
import shlex
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from synaptoroute import (
    AdaptiveRouter,
    Encoder,
    HashingEncoder,
    Route,
    SQLiteStorage,
    __version__,
    cli,
)
from synaptoroute.cli import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK, build_parser, main
from synaptoroute.routes_file import parse_routes
from synaptoroute.storage.base import ModelInfo

DOCS = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(autouse=True)
def shared_encoder(monkeypatch: pytest.MonkeyPatch, encoder: Encoder) -> None:
    monkeypatch.setattr(cli, "Encoder", lambda: encoder)
    monkeypatch.delenv("SYNAPTOROUTE_STORE", raising=False)
    monkeypatch.delenv("SYNAPTOROUTE_API_KEY", raising=False)


@pytest.fixture
def store(tmp_path: Path) -> str:
    return str(tmp_path / "routes.db")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def stored_policy(path: str) -> dict[str, Any] | None:
    storage = SQLiteStorage(path)
    try:
        return storage.get_state("policy")
    finally:
        storage.close()


def stored_routes(path: str) -> dict[str, list[str]]:
    storage = SQLiteStorage(path)
    try:
        return {item.route.name: list(item.route.utterances) for item in storage.load()}
    finally:
        storage.close()


def seed(capsys: pytest.CaptureFixture[str], store: str) -> None:
    assert (
        run(
            capsys,
            "routes",
            "add",
            "billing",
            "I need a refund",
            "Where is my receipt",
            "--store",
            store,
        )[0]
        == 0
    )
    assert (
        run(
            capsys, "routes", "add", "tech", "The app crashes", "I cannot log in", "--store", store
        )[0]
        == 0
    )


# -- every command: help and docs ---------------------------------------------------------
def command_paths() -> Iterator[list[str]]:
    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> Iterator[list[str]]:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield prefix
            return
        for name, child in subs[0].choices.items():
            yield from walk(child, [*prefix, name])

    yield from walk(build_parser(), [])


COMMANDS = [" ".join(p) for p in command_paths()]


def test_the_command_set() -> None:
    assert COMMANDS == [
        "route",
        "routes list",
        "routes add",
        "routes delete",
        "negatives list",
        "negatives add",
        "negatives delete",
        "import",
        "export",
        "fit",
        "eval",
        "serve",
        "healthcheck",
        "completion",
    ]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command.split(), "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: synaptoroute {command}")
    assert len(out.splitlines()) > 3


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_is_documented(command: str) -> None:
    headings = re.findall(r"^#+ `synaptoroute ([^`]+)`", DOCS.read_text(), flags=re.MULTILINE)
    # Whole words: "routes list" started with "route", so `route` passed undocumented.
    words = command.split()
    assert any(h.split()[: len(words)] == words for h in headings), headings


def test_progress_options_are_documented() -> None:
    # The docs said every command took --progress/--no-progress/-q; four do.
    with_progress = []
    for command in COMMANDS:
        parser = build_parser()
        for word in command.split():
            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            parser = sub.choices[word]
        options = {o for a in parser._actions for o in a.option_strings}
        if {"--progress", "--no-progress", "-q"} <= options:
            with_progress.append(command)
    bullet = next(b for b in DOCS.read_text().split("\n- ") if b.startswith("Long work"))
    documented = [c for c in re.findall(r"`([a-z ]+)`", bullet) if c in COMMANDS]
    assert documented == with_progress == ["routes add", "import", "fit", "eval"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_printing_data_has_json(command: str) -> None:
    parser = build_parser()
    for word in command.split():
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    options = {o for a in parser._actions for o in a.option_strings}
    # serve, healthcheck and completion print no data: a log, an exit code, a script.
    assert ("--json" in options) is (command not in ("serve", "healthcheck", "completion"))


def test_fit_help_names_the_fits_default_regularization() -> None:
    # The CLI leaves the default to fit() (it does not import the fitting modules to
    # start): its help must not drift from it.
    from synaptoroute.fitting.fit import DEFAULT_REGULARIZATION

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices["fit"]._actions if "--regularization" in a.option_strings)
    assert action.default is None
    assert action.help is not None
    assert f"default: {' '.join(f'{c:g}' for c in DEFAULT_REGULARIZATION)};" in action.help


def test_exit_codes_are_documented() -> None:
    text = DOCS.read_text()
    for code in (
        EXIT_OK,
        EXIT_FAILURE,
        EXIT_BAD_INPUT,
        cli.EXIT_MISSING_EXTRA,
        cli.EXIT_BELOW_BAR,
        cli.EXIT_INTERRUPTED,
    ):
        assert re.search(rf"^\| `?{code}`? \|", text, flags=re.MULTILINE), code
    # And --help's epilog names every code the docs' table lists (it lacked 141).
    documented = re.findall(r"^\| `?(\d+)`? \|", text, flags=re.MULTILINE)
    epilog = build_parser().epilog or ""
    assert documented and all(re.search(rf"\b{code}\b", epilog) for code in documented)


# -- route management -----------------------------------------------------------------------
def test_add_list_route_delete(capsys: pytest.CaptureFixture[str], store: str) -> None:
    seed(capsys, store)
    code, out, _ = run(capsys, "routes", "list", "--store", store, "--json")
    assert code == 0
    assert [r["name"] for r in json.loads(out)] == ["billing", "tech"]

    code, out, _ = run(
        capsys, "route", "How do I get my money back?", "hello", "--store", store, "--json"
    )
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["query"] == "How do I get my money back?"
    assert lines[0]["result"]["route"] == "billing"
    assert lines[0]["result"]["runner_up"] == "tech"
    assert lines[1]["result"]["route"] is None

    code, out, _ = run(capsys, "route", "the app crashed again", "--store", store)
    assert out.split("\t")[0] == "tech"

    code, out, _ = run(capsys, "route", "refund", "--top-k", "2", "--store", store, "--json")
    ranked = json.loads(out)["result"]
    assert [m["route"] for m in ranked] == ["billing", "tech"]

    assert run(capsys, "routes", "delete", "tech", "--store", store)[0] == 0
    assert list(stored_routes(store)) == ["billing"]


def test_add_existing_route_needs_replace(capsys: pytest.CaptureFixture[str], store: str) -> None:
    seed(capsys, store)
    code, _, err = run(capsys, "routes", "add", "tech", "printer on fire", "--store", store)
    assert code == EXIT_BAD_INPUT
    assert "--replace" in err
    assert stored_routes(store)["tech"] == ["The app crashes", "I cannot log in"]
    code, out, _ = run(
        capsys, "routes", "add", "tech", "printer on fire", "--replace", "--store", store, "--json"
    )
    assert code == 0
    assert json.loads(out)["replaced"] == ["tech"]
    assert stored_routes(store)["tech"] == ["printer on fire"]


def test_delete_is_all_or_nothing(capsys: pytest.CaptureFixture[str], store: str) -> None:
    seed(capsys, store)
    code, _, err = run(capsys, "routes", "delete", "tech", "nope", "--store", store)
    assert code == EXIT_BAD_INPUT
    assert "unknown route: 'nope'" in err
    assert list(stored_routes(store)) == ["billing", "tech"]


def test_export_and_reimport_round_trip(
    capsys: pytest.CaptureFixture[str], store: str, tmp_path: Path
) -> None:
    seed(capsys, store)
    run(
        capsys,
        "routes",
        "add",
        "music",
        "play jazz",
        "--threshold",
        "0.4",
        "--description",
        "tunes",
        "--store",
        store,
    )
    negatives = ["tell me a joke", "what is the weather"]
    assert run(capsys, "negatives", "add", *negatives, "--store", store)[0] == 0
    for fmt in ("yaml", "json"):
        out_file = tmp_path / f"routes.{fmt}"
        assert run(capsys, "export", "--store", store, "-o", str(out_file))[0] == 0
        other = str(tmp_path / f"other-{fmt}.db")
        code, out, _ = run(capsys, "import", str(out_file), "--store", other, "--json")
        assert code == 0
        assert json.loads(out)["created"] == ["billing", "tech", "music"]
        assert json.loads(out)["negatives_added"] == negatives
        assert stored_routes(other) == stored_routes(store)  # negatives included
    code, out, _ = run(capsys, "export", "--store", store, "--json")
    doc = json.loads(out)
    assert doc["negatives"] == negatives
    assert doc["routes"][2] == {
        "name": "music",
        "utterances": ["play jazz"],
        "description": "tunes",
        "threshold": 0.4,
    }


def test_export_writes_through_a_temporary_file_of_its_own(
    capsys: pytest.CaptureFixture[str], store: str, tmp_path: Path
) -> None:
    # 'export -o FILE' wrote FILE.tmp: a file of that name was overwritten, then
    # deleted, and two exports to one file wrote the same temporary file.
    seed(capsys, store)
    out_file = tmp_path / "routes.yaml"
    mine = tmp_path / "routes.yaml.tmp"
    mine.write_text("my notes")
    out_file.write_text("an older export")
    assert run(capsys, "export", "--store", store, "-o", str(out_file))[0] == EXIT_OK
    assert mine.read_text() == "my notes"
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([Path(store).name, "routes.yaml", "routes.yaml.tmp"])
    assert out_file.read_text() == run(capsys, "export", "--store", store)[1]
    umask = os.umask(0)
    os.umask(umask)
    assert out_file.stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain write makes it


def test_an_output_file_that_is_the_store_an_input_or_a_database_is_refused(
    capsys: pytest.CaptureFixture[str], store: str, tmp_path: Path
) -> None:
    # 'export -o routes.db' renamed YAML over the store and 'eval --plot' wrote a PNG
    # over it or over the data file, exiting 0: the fitted policy was gone for good.
    seed(capsys, store)
    before = Path(store).read_bytes()
    other = tmp_path / "other.db"
    SQLiteStorage(str(other)).close()
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "I need a refund", "label": "billing"}\n')
    link = tmp_path / "link.db"
    link.symlink_to(store)
    for argv, said in (
        (("export", "-o", store), "is the store"),
        (("export", "-o", str(link)), "is the store"),
        (("export", "-o", str(other)), "is a SQLite database"),
        (("eval", str(data), "--plot", store, "-q"), "is the store"),
        (("eval", str(data), "--plot", str(data), "-q"), "is an input file"),
    ):
        code, out, err = run(capsys, *argv, "--store", store)
        assert code == EXIT_BAD_INPUT, (argv, err)
        assert said in err and out == ""
    assert Path(store).read_bytes() == before and stored_routes(store)
    assert data.read_text().startswith('{"text"')
    fresh = tmp_path / "routes.yaml"
    assert run(capsys, "export", "-o", str(fresh), "--store", store)[0] == EXIT_OK


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes and symbolic links")
def test_export_writes_through_links_and_pipes_and_keeps_a_files_mode(
    capsys: pytest.CaptureFixture[str], store: str, tmp_path: Path
) -> None:
    # The rename replaced whatever -o named: a link became a file (its target kept
    # the old export), a named pipe (or, as root, a device node) became a file, and a
    # private file became readable by all.
    seed(capsys, store)
    expected = run(capsys, "export", "--store", store)[1]
    target = tmp_path / "real.yaml"
    target.write_text("an older export")
    target.chmod(0o604)  # not what a umask of 022 or 077 would give a new file
    link = tmp_path / "link.yaml"
    link.symlink_to(target)
    assert run(capsys, "export", "--store", store, "-o", str(link))[0] == EXIT_OK
    assert link.is_symlink() and target.read_text() == expected
    assert target.stat().st_mode & 0o777 == 0o604
    pipe = tmp_path / "pipe.yaml"
    os.mkfifo(pipe)
    # Opened for reading first, without waiting: the export's open then finds a reader.
    reader = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert run(capsys, "export", "--store", store, "-o", str(pipe))[0] == EXIT_OK
        read = os.read(reader, 1 << 20).decode()
    finally:
        os.close(reader)
    assert read == expected
    assert stat.S_ISFIFO(pipe.stat().st_mode)
    # /dev/stdout on a pipe: its realpath names nothing (a temporary file was made there).
    done = subprocess.run(
        [sys.executable, "-m", "synaptoroute", "export", "--store", store, "-o", "/dev/stdout"],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stdout.decode()) == (EXIT_OK, expected)
    assert b"synaptoroute:" not in done.stderr  # no error (onnxruntime may log there)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [Path(store).name, "real.yaml", "link.yaml", "pipe.yaml"]
    )


def test_an_empty_store_option_is_bad_input(
    capsys: pytest.CaptureFixture[str], store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `--store "$STORE"` with STORE unset used $SYNAPTOROUTE_STORE, or made ./routes.db.
    seed(capsys, store)
    monkeypatch.setenv("SYNAPTOROUTE_STORE", store)
    monkeypatch.chdir(tmp_path)
    before = stored_routes(store)
    for argv in (["routes", "add", "x", "hello there"], ["routes", "delete", "billing"]):
        for empty in ("", " "):
            code, out, err = run(capsys, *argv, "--store", empty)
            assert code == EXIT_BAD_INPUT and "--store is empty" in err and not out
    assert stored_routes(store) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [Path(store).name]
    # So is the variable set but empty (SYNAPTOROUTE_STORE="$STORE", STORE unset):
    # it meant ./routes.db.
    for empty in ("", "  "):
        monkeypatch.setenv("SYNAPTOROUTE_STORE", empty)
        code, out, err = run(capsys, "routes", "add", "x", "hello there")
        assert code == EXIT_BAD_INPUT and "SYNAPTOROUTE_STORE is set but empty" in err
        assert not out
    assert sorted(p.name for p in tmp_path.iterdir()) == [Path(store).name]


def test_a_files_default_threshold_needs_replace_and_is_reported(
    capsys: pytest.CaptureFixture[str], store: str, tmp_path: Path
) -> None:
    # Every export carries its store's threshold: importing one into another store
    # replaced that store's (a fitted one too) while the output said "unchanged".
    seed(capsys, store)
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "threshold: 0.9\nroutes:\n- name: billing\n"
        "  utterances: [I need a refund, Where is my receipt]\n"
    )
    for command in (["routes", "add", "--file"], ["import"]):
        code, out, err = run(capsys, *command, str(routes), "--store", store)
        assert code == EXIT_BAD_INPUT and not out
        assert "default threshold 0.900, and the store's is 0.500; pass --replace" in err
    assert AdaptiveRouter.open(store, cli.Encoder()).threshold == 0.5
    code, out, _ = run(
        capsys, "routes", "add", "--file", str(routes), "--store", store, "--replace"
    )
    assert code == EXIT_OK and out == "unchanged\tbilling\nthreshold\t0.500 -> 0.900\n"
    code, out, _ = run(capsys, "import", str(routes), "--store", store)  # the same now
    assert code == EXIT_OK and "threshold" not in out
    fresh = str(tmp_path / "fresh.db")  # a new store takes the file's
    code, out, _ = run(capsys, "import", str(routes), "--store", fresh)
    assert code == EXIT_OK and out.endswith("default threshold 0.500 -> 0.900\n")
    # A store of negative examples only is not new: it counted as one, and a file's
    # default replaced its own without --replace.
    negatives = str(tmp_path / "negatives.db")
    code, _, _ = run(capsys, "negatives", "add", "what is the weather", "--store", negatives)
    assert code == EXIT_OK
    code, out, err = run(capsys, "import", str(routes), "--store", negatives)
    assert code == EXIT_BAD_INPUT and not out and "pass --replace" in err
    assert AdaptiveRouter.open(negatives, cli.Encoder()).threshold == 0.5


def test_a_closed_stdout_ends_the_command_quietly(
    store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # `synaptoroute export | head -1` failed with "error: [Errno 32] Broken pipe", exit 1.
    seed(capsys, store)
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before the command starts: every write to it fails
    try:
        done = subprocess.run(
            [sys.executable, "-m", "synaptoroute", "export", "--store", store],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.returncode == cli.EXIT_BROKEN_PIPE
    for noise in (b"Broken pipe", b"synaptoroute:", b"Traceback", b"Exception ignored"):
        assert noise not in done.stderr


def test_a_reader_that_leaves_midway_is_a_broken_pipe_not_a_success() -> None:
    # `export | head -1` of a large store exited 0: the one write the pipe took part of
    # returned a short count, and the rest of the document was dropped silently.
    script = "from synaptoroute.cli import _write_document; _write_document('x' * 2**22)"
    read_end, write_end = os.pipe()
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=write_end, stderr=subprocess.PIPE
    )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        assert reader.read(10) == b"x" * 10  # then leave, as head does
    _, err = child.communicate(timeout=120)
    assert child.returncode != 0 and b"BrokenPipeError" in err


def test_library_warnings_are_one_line(
    capsys: pytest.CaptureFixture[str], store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A warning printed its source path and line of code, against the one-line rule.
    def warn(args: argparse.Namespace) -> int:
        warnings.warn("the fitted head was dropped", UserWarning, stacklevel=1)
        return EXIT_OK

    parser = build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub.choices["export"].set_defaults(func=warn)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        code, _, err = run(capsys, "export", "--store", store)
    assert code == EXIT_OK
    assert err == "synaptoroute: warning: the fitted head was dropped\n"


# Characters a YAML writer or reader may fold, escape or read as something else.
AWKWARD = [
    "caf\x85menu",  # NEL: a YAML 1.1 line break, folded into a space when written raw
    "line\u2028separator",
    "paragraph\u2029separator",
    "tab\tinside",
    "nul\x00inside",
    "\ufeffbyte order mark first",
    "byte order\ufeffmark inside",
    "emoji \U0001f600 and é",
    "two\nlines",
    "cr\r\nlf",
    "bell\x07 and del\x7f and c1\x9f",
    "yes",
    "null",
    "~",
    "0x10",
    "'single' and \"double\" quotes",
    "key: value # not a comment",
]


FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"


def test_routes_list_lines_up_names_of_every_script(
    capsys: pytest.CaptureFixture[str], store: str
) -> None:
    # The name column was padded by code points: a CJK name (two columns a character)
    # pushed its line's counts right, a decomposed accent (no column) pulled them left.
    for name in ("billing", "\u8acb\u6c42\u66f8", "cafe\u0301", FAMILY, "love\u2764\ufe0f"):
        assert run(capsys, "routes", "add", name, "I need a refund", "--store", store)[0] == 0
    code, out, _ = run(capsys, "routes", "list", "--store", store)
    lines = out.splitlines()
    assert code == EXIT_OK and len(lines) == 6
    # As terminals draw them: the family emoji (three joined by ZWJ) and the heart
    # made an emoji by VS16 take two columns each.
    drawn = {"\u8acb": 2, "\u6c42": 2, "\u66f8": 2, "\u0301": 0, FAMILY: 2, "\u2764\ufe0f": 2}

    def columns_before_count(line: str) -> int:
        head = line[: line.index(" 1 ") if " 1 " in line else 0]
        for text, columns in drawn.items():
            head = head.replace(text, "x" * columns)
        return len(head)

    assert len({columns_before_count(line) for line in lines[1:]}) == 1, lines


def test_text_output_keeps_one_record_per_line(
    capsys: pytest.CaptureFixture[str], store: str
) -> None:
    # Names refuse control characters, but a query, a negative example and a
    # description may hold a line break: printed raw, it split a record over two lines.
    argv = ["--description", "line1\nline2\tend", "--store", store]
    assert run(capsys, "routes", "add", "billing", "I need a refund", *argv)[0] == EXIT_OK
    code, out, _ = run(capsys, "routes", "list", "--store", store)
    assert code == EXIT_OK and out.splitlines()[1].endswith("line1\\nline2\\tend")
    assert len(out.splitlines()) == 2
    code, out, _ = run(capsys, "route", "refund\nplease", "fine\u2028ok", "--store", store)
    assert code == EXIT_OK
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].split("\t")[3] == "refund\\nplease"
    assert lines[1].endswith("\tfine\\u2028ok")
    code, out, _ = run(capsys, "negatives", "add", "tell\nme a joke", "--store", store)
    assert code == EXIT_OK and out == "added\ttell\\nme a joke\n"
    code, out, _ = run(capsys, "route", "refund\nplease", "--store", store, "--json")
    assert json.loads(out)["query"] == "refund\nplease"  # JSON keeps the text as it is


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="gives a link to another user"
)
def test_export_refuses_another_users_link_in_a_shared_folder(
    capsys: pytest.CaptureFixture[str], store: str, tmp_path: Path
) -> None:
    # The link was resolved and the file it names replaced: a link another user
    # planted in /tmp made the export overwrite any file of this user (the kernel's
    # protected_symlinks refuses such a link to open(), not to readlink and rename).
    seed(capsys, store)
    victim = tmp_path / "victim.conf"
    victim.write_text("keep me")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    planted = shared / "routes.yaml"
    planted.symlink_to(victim)
    os.lchown(planted, 65534, 65534)
    mine = tmp_path / "mine.yaml"  # a link of one's own to theirs
    mine.symlink_to(planted)
    folder_link = shared / "dir"  # theirs, to a folder
    folder_link.symlink_to(tmp_path)
    os.lchown(folder_link, 65534, 65534)
    for target in (planted, mine, folder_link / "victim.conf"):
        code, _, err = run(capsys, "export", "--store", store, "-o", str(target))
        assert code == EXIT_BAD_INPUT and "another user's link" in err, target
    assert victim.read_text() == "keep me"
    os.lchown(planted, os.geteuid(), os.getegid())  # one's own link is followed
    assert run(capsys, "export", "--store", store, "-o", str(planted))[0] == EXIT_OK
    assert victim.read_text().startswith("threshold")


def test_a_server_url_the_store_cannot_read_is_refused_unshown(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "postgresql+psycopg://" was read as a SQLite path: a read command said "no store
    # at '<the URL, password included>'", a writing one made a file of that name.
    monkeypatch.chdir(tmp_path)
    url = "postgresql+psycopg://pwuser:TopSecretPW@127.0.0.1:1/db"
    for args in (("routes", "list"), ("routes", "add", "r", "hello there")):
        code, out, err = run(capsys, *args, "--store", url)
        assert code == EXIT_BAD_INPUT and "TopSecretPW" not in out + err, args
    assert list(tmp_path.iterdir()) == []
    # A store with no routes is named without its password.
    from synaptoroute import AdaptiveRouter, HashingEncoder

    args = argparse.Namespace(store="postgresql://pwuser:TopSecretPW@127.0.0.1:1/db")
    with pytest.raises(cli.BadInput, match="holds no routes") as exc:
        cli._require_routes(AdaptiveRouter(HashingEncoder(dimension=8)), args)
    assert "TopSecretPW" not in str(exc.value)


def test_export_keeps_every_character(
    capsys: pytest.CaptureFixture[str], store: str, tmp_path: Path
) -> None:
    # The YAML export wrote U+0085 raw, and reading it back turned "caf\x85menu" into
    # "caf menu": an import or a 'routes add --file' stored other utterances.
    argv = ["--description", "menu\x85card", "--store", store]
    assert run(capsys, "routes", "add", "awkward", *AWKWARD, *argv)[0] == EXIT_OK
    assert run(capsys, "negatives", "add", "joke\x85please", "--store", store)[0] == EXIT_OK
    for fmt in ("yaml", "json"):
        routes_file = tmp_path / f"routes.{fmt}"
        assert run(capsys, "export", "--store", store, "-o", str(routes_file))[0] == EXIT_OK
        other = str(tmp_path / f"other-{fmt}.db")
        assert run(capsys, "import", str(routes_file), "--store", other)[0] == EXIT_OK
        assert stored_routes(other) == stored_routes(store)  # negatives included
        assert stored_routes(other)["awkward"] == AWKWARD
        exported = [run(capsys, "export", "--store", s, "--json")[1] for s in (store, other)]
        assert json.loads(exported[0])["routes"][0]["description"] == "menu\x85card"
        assert exported[0] == exported[1]
        # Applied again, the file matches the store: nothing to replace or re-encode.
        code, out, _ = run(
            capsys, "routes", "add", "--file", str(routes_file), "--store", store, "--json"
        )
        assert code == EXIT_OK
        assert json.loads(out)["unchanged"] == ["awkward"]
    # Ordinary text stays readable in the YAML; only the folded breaks are escaped.
    text = (tmp_path / "routes.yaml").read_text(encoding="utf-8")
    assert "- emoji \U0001f600 and é\n" in text
    assert '"caf\\Nmenu"' in text


@pytest.fixture
def clinc_routes(tmp_path: Path) -> tuple[Path, dict[str, list[str]]]:
    """A routes file of every labelled row of the CLINC150 slice (hundreds of utterances)."""
    rows = [
        json.loads(line)
        for line in (FIXTURES / "clinc150_train_slice.jsonl").read_text().splitlines()
    ]
    groups: dict[str, list[str]] = {}
    for row in rows:
        if row["label"] is not None:
            groups.setdefault(row["label"], []).append(row["text"])
    routes_file = tmp_path / "routes.json"
    routes_file.write_text(
        json.dumps({"routes": [{"name": k, "utterances": v} for k, v in groups.items()]})
    )
    return routes_file, groups


@pytest.fixture
def bars(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every progress bar the CLI opens (real tqdm bars), kept for inspection."""
    opened: list[Any] = []
    real = cli._open_bar

    def record(total: int, desc: str) -> Any:
        bar = real(total, desc)
        opened.append(bar)
        return bar

    monkeypatch.setattr(cli, "_open_bar", record)
    return opened


class FakeTerminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_forced_progress_counts_every_text(
    capsys: pytest.CaptureFixture[str],
    store: str,
    clinc_routes: tuple[Path, dict[str, list[str]]],
    bars: list[Any],
) -> None:
    routes_file, groups = clinc_routes
    total = sum(len(v) for v in groups.values())
    argv = ["routes", "add", "--file", str(routes_file), "--store", store, "--progress"]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert len(bars) == 1
    assert (bars[0].total, bars[0].n, bars[0].desc) == (total, total, "encoding")
    assert len(out.splitlines()) == len(groups)
    assert stored_routes(store) == groups
    # Nothing to encode the second time: the bar opens and stays at zero.
    code, out, _ = run(capsys, *argv, "--json")
    assert len(json.loads(out)["unchanged"]) == len(groups)
    assert len(bars) == 2
    assert bars[1].n == 0


@pytest.mark.parametrize("flag", [None, "--no-progress", "-q"])
def test_no_progress_in_a_redirected_log(
    capsys: pytest.CaptureFixture[str],
    store: str,
    clinc_routes: tuple[Path, dict[str, list[str]]],
    bars: list[Any],
    flag: str | None,
) -> None:
    # capsys's stderr is not a terminal, like a log file or a pipe.
    routes_file, _ = clinc_routes
    argv = ["routes", "add", "--file", str(routes_file), "--store", store]
    code, _, err = run(capsys, *argv, *([flag] if flag else []))
    assert code == 0
    assert bars == []
    assert err == ""
    assert "\r" not in err


@pytest.mark.parametrize(("flag", "expected"), [(None, 1), ("--no-progress", 0), ("-q", 0)])
def test_progress_on_a_terminal_by_default(
    monkeypatch: pytest.MonkeyPatch,
    store: str,
    clinc_routes: tuple[Path, dict[str, list[str]]],
    bars: list[Any],
    flag: str | None,
    expected: int,
) -> None:
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    routes_file, _ = clinc_routes
    argv = ["routes", "add", "--file", str(routes_file), "--store", store]
    assert main([*argv, *([flag] if flag else [])]) == 0
    assert len(bars) == expected
    if not expected:
        assert terminal.getvalue() == ""


def test_no_bar_on_a_terminal_for_a_handful_of_texts(
    monkeypatch: pytest.MonkeyPatch, store: str, bars: list[Any]
) -> None:
    monkeypatch.setattr(sys, "stderr", FakeTerminal())
    assert main(["routes", "add", "billing", "I need a refund", "--store", store]) == 0
    assert bars == []
    assert main(["routes", "add", "tech", "It crashes", "--store", store, "--progress"]) == 0
    assert [(b.total, b.n) for b in bars] == [(1, 1)]


# -- python -m, completion, healthcheck -------------------------------------------------------
def test_python_dash_m_runs_the_cli(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "synaptoroute", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"synaptoroute {__version__}"


def bash_complete(script: str, *words: str) -> list[str]:
    """What the bash completion script offers after ``synaptoroute WORDS...``."""
    line = ["synaptoroute", *words]
    driver = (
        f"{script}\nCOMP_WORDS=({' '.join(shlex.quote(w) for w in line)})\n"
        f"COMP_CWORD={len(line) - 1}\n_synaptoroute\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n"
    )
    done = subprocess.run(
        ["bash", "--norc", "--noprofile"],
        input=driver,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.split()


def test_bash_completion(capsys: pytest.CaptureFixture[str]) -> None:
    code, script, _ = run(capsys, "completion", "bash")
    assert code == 0
    subprocess.run(["bash", "-n"], input=script, text=True, timeout=60, check=True)
    top = [c.split()[0] for c in COMMANDS]
    assert bash_complete(script, "") == [*dict.fromkeys(top), "--help", "--version", "--traceback"]
    assert bash_complete(script, "routes", "") == ["list", "add", "delete", "--help"]
    assert bash_complete(script, "routes", "add", "--st") == ["--store"]
    assert bash_complete(script, "import", "train.jsonl", "--pro") == ["--progress"]
    assert bash_complete(script, "completion", "") == ["bash", "zsh", "fish", "--help"]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_completion_name_every_command(
    capsys: pytest.CaptureFixture[str], shell: str
) -> None:
    code, script, _ = run(capsys, "completion", shell)
    assert code == 0
    for command in COMMANDS:
        assert command.split()[-1] in script
    if shutil.which(shell):  # a syntax check where the shell is installed
        subprocess.run([shell, "-n"], input=script, text=True, timeout=60, check=True)


def test_fish_completion_tells_nested_commands_apart(capsys: pytest.CaptureFixture[str]) -> None:
    script = run(capsys, "completion", "fish")[1]
    # "routes add" options are offered after "routes ... add", not after any "add".
    assert (
        "-n '__fish_seen_subcommand_from routes; and __fish_seen_subcommand_from add' -l replace"
        in script
    )
    assert "-n '__fish_seen_subcommand_from add' " not in script


@pytest.fixture
def readyz_server() -> Iterator[tuple[int, list[int]]]:
    """A real HTTP server on 127.0.0.1 whose /readyz answers the status at the list's end."""
    status = [200]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = status[-1] if self.path == "/readyz" else 404
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], status
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


def test_healthcheck_follows_the_port_variable(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    readyz_server: tuple[int, list[int]],
) -> None:
    port, status = readyz_server
    monkeypatch.setenv(cli.PORT_ENV, str(port))
    # A proxy in the environment (here: a closed port) must not carry the local probe.
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert run(capsys, "healthcheck")[0] == EXIT_OK
    status.append(503)
    code, _, err = run(capsys, "healthcheck")
    assert code == EXIT_FAILURE
    assert "503" in err
    status.append(200)
    monkeypatch.setenv(cli.PORT_ENV, "not-a-port")
    assert run(capsys, "healthcheck", "--port", str(port))[0] == EXIT_OK
    assert run(capsys, "healthcheck")[0] == EXIT_BAD_INPUT
    # int() read "8_000" as 8000, and other scripts' digits as ASCII ones.
    for odd in ("8_000", "\u0668\u0660\u0660\u0660", "+8000"):
        monkeypatch.setenv(cli.PORT_ENV, odd)
        code, _, err = run(capsys, "healthcheck")
        assert code == EXIT_BAD_INPUT
        assert f"{cli.PORT_ENV} must be a port number, got {odd!r}" in err
    # Port 0 is serve's "pick one"; no service listens there, so there is none to ask.
    code, _, err = run(capsys, "healthcheck", "--port", "0")
    assert code == EXIT_BAD_INPUT
    assert "--port must be a port number (1-65535), got 0" in err
    monkeypatch.setenv(cli.PORT_ENV, "0")
    assert run(capsys, "healthcheck")[0] == EXIT_BAD_INPUT
    # Set but empty (PORT="$P" with P unset) meant 8000, where an empty store is refused.
    for empty in ("", "  "):
        monkeypatch.setenv(cli.PORT_ENV, empty)
        code, _, err = run(capsys, "healthcheck")
        assert code == EXIT_BAD_INPUT and f"{cli.PORT_ENV} is set but empty" in err
    # The flags read whole numbers as the variables do.
    monkeypatch.delenv(cli.PORT_ENV)
    for odd in ("8_000", "\u0668\u0660\u0660\u0660"):
        with pytest.raises(SystemExit) as exit_info:
            run(capsys, "healthcheck", "--port", odd)
        assert exit_info.value.code == EXIT_BAD_INPUT
        assert f"invalid int value: {odd!r}" in capsys.readouterr().err


def test_healthcheck_takes_an_ipv6_address_with_or_without_brackets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # "[::1]" became "http://[[::1]]:.../readyz", an error that looked like a failed probe.
    with socket.socket() as closed:  # a port nothing listens on: the probe fails either way
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    for host in ("::1", "[::1]"):
        code, _, err = run(capsys, "healthcheck", "--host", host, "--port", str(port))
        assert code == EXIT_FAILURE
        assert f"http://[::1]:{port}/readyz: " in err
        assert "does not appear to be" not in err


def test_a_store_of_another_model_is_refused_or_reencoded_on_request(
    capsys: pytest.CaptureFixture[str], store: str, encoder: Encoder
) -> None:
    # The refusal said "pass reencode=True", which no command took.
    other = AdaptiveRouter(HashingEncoder(dimension=64), SQLiteStorage(store))
    other.add_route(Route(name="billing", utterances=["I need a refund", "Where is my receipt"]))
    other.close()
    code, out, err = run(capsys, "routes", "list", "--store", store)
    assert code == EXIT_BAD_INPUT and not out
    assert "'hashing-bow-64'" in err and "on the command line: --reencode" in err

    def model() -> ModelInfo | None:
        storage = SQLiteStorage(store)
        try:
            return storage.model_info()
        finally:
            storage.close()

    assert model() == ModelInfo("hashing-bow-64", 64)  # left as it was
    code, out, _ = run(capsys, "route", "I want my money back", "--store", store, "--reencode")
    assert code == EXIT_OK and out.startswith("billing\t")
    assert model() == ModelInfo(encoder.model_id, encoder.dimension)
    assert run(capsys, "routes", "list", "--store", store)[0] == EXIT_OK


@pytest.mark.parametrize("timeout", ["-1", "0", "nan", "inf", "soon"])
def test_a_bad_healthcheck_timeout_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], timeout: str
) -> None:
    # Reported as "not ready" (exit 1) before: a wrong HEALTHCHECK line looked unhealthy.
    with pytest.raises(SystemExit) as exit_info:
        main(["healthcheck", "--timeout", timeout])
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert "--timeout" in capsys.readouterr().err


def test_healthcheck_fails_when_nothing_listens(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and is closed now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, _, err = run(capsys, "healthcheck", "--port", str(port), "--timeout", "5")
    assert code == EXIT_FAILURE
    assert f"127.0.0.1:{port}/readyz" in err


# -- bad input vs failures ------------------------------------------------------------------
def test_a_route_name_with_a_control_character_is_refused_and_an_old_one_still_opens(
    capsys: pytest.CaptureFixture[str], store: str
) -> None:
    # A tab or a line break in a name split `route` and `routes list` lines (U+2028
    # too, to str.splitlines() and JavaScript).
    for name in ("bad\tname", "multi\nline", "bill\u2028ing"):
        code, out, err = run(capsys, "routes", "add", name, "hello there", "--store", store)
        assert code == EXIT_BAD_INPUT and not out and "control character" in err
    assert not Path(store).exists()
    # One stored before the rule: the store opens, lists it, and can delete it.
    seed(capsys, store)
    raw = sqlite3.connect(store)
    with raw:
        raw.execute("UPDATE routes SET name = 'old\tname' WHERE name = 'tech'")
    raw.close()
    code, out, _ = run(capsys, "routes", "list", "--store", store, "--json")
    assert code == EXIT_OK and {r["name"] for r in json.loads(out)} == {"billing", "old\tname"}
    assert run(capsys, "routes", "delete", "old\tname", "--store", store)[0] == EXIT_OK
    assert set(stored_routes(store)) == {"billing"}


def test_missing_store_is_bad_input_and_creates_nothing(
    capsys: pytest.CaptureFixture[str], store: str
) -> None:
    for argv in (["route", "hi"], ["routes", "list"], ["export"], ["routes", "delete", "x"]):
        code, _, err = run(capsys, *argv, "--store", store)
        assert code == EXIT_BAD_INPUT
        assert "no store at" in err
    assert not Path(store).exists()


def test_not_a_store_is_bad_input_and_left_untouched(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database" * 100)
    code, _, err = run(capsys, "routes", "list", "--store", str(path))
    assert code == EXIT_BAD_INPUT
    assert "not a readable SQLite database" in err
    assert path.read_bytes() == b"these are my notes, not a database" * 100


def test_unusable_store_is_a_failure(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    folder = tmp_path / "a-folder.db"
    folder.mkdir()
    code, _, err = run(capsys, "routes", "add", "x", "hello", "--store", str(folder))
    assert code == EXIT_FAILURE
    assert err.startswith("synaptoroute: error:")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [["route", "hi"], ["routes", "list"], ["export"], ["routes", "delete", "x"]],
)
def test_an_empty_file_is_no_store_for_a_command_that_reads(
    argv: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # A 0-byte file was made a store (the schema written into it) by commands that
    # refuse a missing store, and 'routes list' printed an empty table with exit 0.
    path = tmp_path / "routes.db"
    path.touch()
    code, _, err = run(capsys, *argv, "--store", str(path))
    assert code == EXIT_BAD_INPUT
    assert f"no store at {str(path)!r}: the file is empty" in err
    assert path.read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["routes.db"]
    # A command that creates a store still makes one of it.
    assert run(capsys, "negatives", "add", "tell me a joke", "--store", str(path))[0] == EXIT_OK
    assert path.stat().st_size > 0


def test_a_store_that_cannot_be_written_is_a_failure(
    capsys: pytest.CaptureFixture[str], read_only_store: Path
) -> None:
    # A valid store in a folder the process cannot write (SQLite cannot make its -wal
    # and -shm files) exited 2, "not a readable SQLite database" (see the fixture).
    path = read_only_store
    before = path.read_bytes()
    code, _, err = run(capsys, "routes", "list", "--store", str(path))
    assert code == EXIT_FAILURE
    assert err.startswith("synaptoroute: error: ")
    assert "the file or its folder is not writable" in err
    assert path.read_bytes() == before


def cp1252_stdout(monkeypatch: pytest.MonkeyPatch) -> Any:
    out = io.TextIOWrapper(io.BytesIO(), encoding="cp1252", errors="strict")
    monkeypatch.setattr(sys, "stdout", out)
    return out


def test_output_the_terminal_cannot_encode_is_escaped(
    monkeypatch: pytest.MonkeyPatch, store: str
) -> None:
    # With a cp1252 stdout (a Windows console, PYTHONIOENCODING=cp1252) printing a route
    # name failed after the route was stored, and exited 2 ("bad input", which promises
    # that nothing was written).
    name = "snow\u2603\U0001f600"
    out = cp1252_stdout(monkeypatch)
    assert main(["routes", "add", name, "it snows", "--store", store]) == EXIT_OK
    assert out.errors == "strict"  # the stream's own setting is given back
    out.flush()
    assert out.buffer.getvalue() == b"created\tsnow\\u2603\\U0001f600\n"
    assert name in stored_routes(store)
    # JSON is escaped as JSON (exact, where the stream's escapes would not be) ...
    out = cp1252_stdout(monkeypatch)
    assert main(["routes", "list", "--json", "--store", store]) == EXIT_OK
    out.flush()
    assert json.loads(out.buffer.getvalue().decode("ascii"))[0]["name"] == name
    # ... and an export is UTF-8, the encoding routes files are read in.
    out = cp1252_stdout(monkeypatch)
    assert main(["export", "--store", store]) == EXIT_OK
    out.flush()
    exported = out.buffer.getvalue().decode("utf-8")
    assert [r.name for r in parse_routes(exported, "yaml").routes] == [name]
    # ... whatever the stream's encoding: a UTF-16 one wrote UTF-16, which import refuses.
    utf16 = io.TextIOWrapper(io.BytesIO(), encoding="utf-16", errors="strict")
    monkeypatch.setattr(sys, "stdout", utf16)
    assert main(["export", "--store", store]) == EXIT_OK
    utf16.flush()
    assert utf16.buffer.getvalue().decode("utf-8") == exported


def test_an_output_that_fails_is_no_bad_input() -> None:
    failed = UnicodeEncodeError("cp1252", "\u2603", 0, 1, "character maps to <undefined>")
    assert cli._exit_code(failed) == EXIT_FAILURE
    # A file that cannot be decoded is bad input, as before.
    undecodable = UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    assert cli._exit_code(undecodable) == EXIT_BAD_INPUT


@pytest.mark.parametrize(
    "argv",
    [
        ["routes", "add", "x", "a", "--threshold", "7"],
        ["routes", "add", "x", "a", "--threshold", "high"],
        ["route"],
        ["frobnicate"],
        [],
    ],
)
def test_usage_errors_are_bad_input(
    argv: list[str], capsys: pytest.CaptureFixture[str], store: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--store", store] if argv[:1] == ["routes"] else argv)
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert not Path(store).exists()


def test_invalid_values_are_bad_input(
    capsys: pytest.CaptureFixture[str], store: str, tmp_path: Path
) -> None:
    code, _, err = run(capsys, "routes", "add", "x", "   ", "--store", store)
    assert code == EXIT_BAD_INPUT
    assert err == (
        "synaptoroute: bad input: utterances: "
        "Value error, utterance 0 is empty after stripping whitespace\n"
    )
    assert not Path(store).exists()
    bad = tmp_path / "routes.yaml"
    bad.write_text("routes:\n  - name: a\n    utterances: [ok]\n  - name: a\n")
    code, _, err = run(capsys, "routes", "add", "--file", str(bad), "--store", store)
    assert code == EXIT_BAD_INPUT
    assert "'a' appears more than once" in err
    assert stored_routes(store) == {}


def test_odd_arguments_fail_cleanly_and_leave_nothing(
    capsys: pytest.CaptureFixture[str], store: str, tmp_path: Path
) -> None:
    seed(capsys, store)
    # --top-k 0 printed the ordinary answer with exit code 0 (-1 was refused).
    code, _, err = run(capsys, "route", "refund", "--top-k", "0", "--store", store)
    assert code == EXIT_BAD_INPUT and "k must be at least 1" in err
    # Exporting onto a folder failed but left "<folder>.tmp" behind.
    folder = tmp_path / "out"
    folder.mkdir()
    code, _, _ = run(capsys, "export", "--store", store, "-o", str(folder))
    assert code != EXIT_OK
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", Path(store).name])
    # A lone surrogate in a JSON line was refused without its line number.
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"text": "ok", "label": "billing"}\n{"text": "x\\ud800", "label": "billing"}\n')
    code, _, err = run(capsys, "import", str(bad), "--store", store)
    assert code == EXIT_BAD_INPUT and "line 2: 'text' is not valid Unicode" in err
    assert stored_routes(store)["billing"] == ["I need a refund", "Where is my receipt"]


def test_files_as_editors_write_them_and_refusals_that_write_nothing(
    capsys: pytest.CaptureFixture[str], store: str, tmp_path: Path
) -> None:
    # A JSON routes file with a BOM (Notepad, PowerShell) was "not valid JSON".
    bom = tmp_path / "routes.json"
    bom.write_bytes(
        b"\xef\xbb\xbf" + b'{"routes": [{"name": "billing", "utterances": ["refund"]}]}'
    )
    assert run(capsys, "import", str(bom), "--store", store)[0] == EXIT_OK
    # A YAML syntax error printed PyYAML's excerpt over several lines.
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes:\n  - name: billing\n    utterances: [a, b\n")
    code, _, err = run(capsys, "import", str(bad), "--store", store)
    assert code == EXIT_BAD_INPUT and len(err.strip().splitlines()) == 1, err
    assert "not valid YAML" in err and "(line " in err
    # A JSONL file with the reserved label made an empty store before it was refused.
    other = tmp_path / "other.db"
    labelled = tmp_path / "rows.jsonl"
    labelled.write_text(
        '{"text": "tell me a joke", "label": "__negatives__"}\n{"text": "refund", "label": "b"}\n'
    )
    code, _, err = run(capsys, "import", str(labelled), "--store", str(other))
    assert code == EXIT_BAD_INPUT and "'__negatives__' is reserved" in err
    assert not other.exists()
    # Lines ended by a lone CR read as one line here, and as two in the console.
    cr = tmp_path / "cr.jsonl"
    cr.write_bytes(
        b'{"text": "refund please", "label": "billing"}\r{"text": "hi", "label": null}\r'
    )
    code, out, _ = run(capsys, "import", str(cr), "--store", str(other), "--json")
    assert code == EXIT_OK and json.loads(out)["rows"] == 2
    # A route with no utterance was stored, and then never routed to.
    code, _, err = run(capsys, "routes", "add", "empty", "--store", store)
    assert code == EXIT_BAD_INPUT and "at least one utterance" in err
    assert "empty" not in stored_routes(store)


@pytest.mark.parametrize(
    "argv",
    [
        ["negatives", "add", "  "],
        ["negatives", "add", "ok", "\udcff"],  # what Python makes of the byte 0xff in argv
        ["routes", "add", "x", "\udcff"],
        ["routes", "add", "x", "a", "--description", "\udcff"],
        ["routes", "add", "\udcff", "a"],
        ["routes", "add", "__negatives__", "a"],
    ],
)
def test_bad_arguments_make_no_store(
    argv: list[str], capsys: pytest.CaptureFixture[str], store: str
) -> None:
    # These were refused only once the store was open: an empty store file was left.
    code, _, err = run(capsys, *argv, "--store", store)
    assert code == EXIT_BAD_INPUT
    assert err.startswith("synaptoroute: bad input: ")
    assert not Path(store).exists()


@pytest.mark.parametrize("option", [["--threshold", "0.5"], ["--description", "Payments"]])
def test_routes_add_file_refuses_the_options_of_one_route(
    option: list[str], capsys: pytest.CaptureFixture[str], store: str, tmp_path: Path
) -> None:
    # They were ignored: the routes were stored with the file's values, exit code 0.
    routes_file = tmp_path / "routes.yaml"
    routes_file.write_text("routes:\n  - name: billing\n    utterances: [refund]\n")
    code, _, err = run(
        capsys, "routes", "add", "--file", str(routes_file), *option, "--store", store
    )
    assert code == EXIT_BAD_INPUT
    assert "a routes file sets them per route" in err
    assert not Path(store).exists()


def test_a_route_without_utterances_goes_out_and_comes_back(
    capsys: pytest.CaptureFixture[str], store: str, tmp_path: Path, encoder: Encoder
) -> None:
    # The API and the console may leave a route without utterances, to be filled later:
    # an export is a backup, so it must import again as it is.
    seed(capsys, store)
    router = AdaptiveRouter.open(store, encoder)
    try:
        router.add_routes([Route(name="later", description="filled in later")])
    finally:
        router.close()
    routes_file = tmp_path / "routes.yaml"
    code, _, err = run(capsys, "export", "--store", store, "-o", str(routes_file))
    assert code == EXIT_OK and err == ""
    copy = str(tmp_path / "copy.db")
    code, _, _ = run(capsys, "import", str(routes_file), "--store", copy)
    assert code == EXIT_OK
    router = AdaptiveRouter.open(copy, encoder)
    try:
        assert router.get_route("later").utterances == []
        assert router.get_route("later").description == "filled in later"
    finally:
        router.close()


def test_export_refuses_two_formats(capsys: pytest.CaptureFixture[str], store: str) -> None:
    seed(capsys, store)
    # --format yaml --json printed JSON, silently dropping one of the two.
    code, out, err = run(capsys, "export", "--format", "yaml", "--json", "--store", store)
    assert code == EXIT_BAD_INPUT
    assert out == ""
    assert "--json means --format json" in err
    code, out, _ = run(capsys, "export", "--format", "json", "--json", "--store", store)
    assert code == EXIT_OK
    assert [r["name"] for r in json.loads(out)["routes"]] == ["billing", "tech"]
    # YAML into a .json file: import (and serve --routes) read it as JSON and failed.
    target = Path(store).with_name("routes.json")
    code, _, err = run(capsys, "export", "--format", "yaml", "-o", str(target), "--store", store)
    assert code == EXIT_BAD_INPUT and "a .json file is read as JSON" in err
    assert not target.exists()
    assert (
        run(
            capsys,
            "export",
            "-o",
            str(target.with_suffix(".yaml")),
            "--format",
            "json",
            "--store",
            store,
        )[0]
        == EXIT_OK
    )  # JSON is YAML: a .yaml file of it loads


@pytest.mark.parametrize("command", ["healthcheck", "serve"])
@pytest.mark.parametrize("port", ["70000", "65536", "-1"])
def test_port_out_of_range_is_bad_input(
    command: str,
    port: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    store: str,
) -> None:
    # healthcheck took 70000 and asked another port (70000 - 65536) instead.
    extra = ["--store", store] if command == "serve" else []
    code, _, err = run(capsys, command, "--port", port, *extra)
    assert code == EXIT_BAD_INPUT
    lowest = 0 if command == "serve" else 1  # serve listens (0: pick one); healthcheck asks
    assert f"--port must be a port number ({lowest}-65535), got {port}" in err
    monkeypatch.setenv(cli.PORT_ENV, port)
    code, _, err = run(capsys, command, *extra)
    assert code == EXIT_BAD_INPUT
    assert f"{cli.PORT_ENV} must be a port number ({lowest}-65535), got {port}" in err
    assert not Path(store).exists()


def test_serve_refuses_an_exposed_host_without_key(
    capsys: pytest.CaptureFixture[str], store: str
) -> None:
    code, _, err = run(capsys, "serve", "--host", "0.0.0.0", "--store", store)
    assert code == EXIT_BAD_INPUT
    assert "SYNAPTOROUTE_API_KEY" in err


def test_serve_refuses_a_set_but_empty_key_on_loopback(
    capsys: pytest.CaptureFixture[str], store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYNAPTOROUTE_API_KEY", "")
    code, _, err = run(capsys, "serve", "--host", "127.0.0.1", "--store", store)
    assert code == EXIT_BAD_INPUT
    assert "SYNAPTOROUTE_API_KEY is set but empty" in err


def test_serve_names_a_bad_value_by_its_option(
    capsys: pytest.CaptureFixture[str], store: str
) -> None:
    # pydantic named the settings field ("max_connections", "encoder_threads").
    code, _, err = run(
        capsys,
        "serve",
        "--store",
        store,
        "--max-connections",
        "0",
        "--threads",
        "0",
        "--max-queue",
        "0",
    )
    assert code == EXIT_BAD_INPUT
    assert "--max-connections: Input should be greater than or equal to 1" in err
    assert "--threads: Input should be greater than or equal to 1" in err
    assert "--max-queue: Input should be greater than or equal to 1" in err
    assert "max_connections" not in err and "encoder_threads" not in err
    assert not Path(store).exists()
    # Past what the store's poll or ONNX Runtime can take: refused here, by the option,
    # not by the store or the encoder inside the start-up, by the field's name.
    for option, value, said in (
        ("--store-poll-interval", "1e10", "--store-poll-interval: Input should be less than"),
        ("--threads", "100000", "--threads: Input should be less than or equal to 65535"),
        ("--rate-burst", "5", "--rate-burst needs --rate-limit"),
        ("--rate-burst", "50", "--rate-burst needs --rate-limit"),  # the default, given
        ("--auth-reads", None, "--auth-reads (auth_reads) needs an API key"),
    ):
        argv = [option] if value is None else [option, value]
        code, _, err = run(capsys, "serve", "--store", store, *argv)
        assert code == EXIT_BAD_INPUT and said in err, (option, err)
    with pytest.raises(SystemExit) as exit_info:  # another script's digit, as the variable
        run(capsys, "serve", "--store", store, "--threads", "\u0662")
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert "invalid int value" in capsys.readouterr().err
    assert not Path(store).exists()


def test_serves_option_names_are_its_parsers() -> None:
    # The table that names a bad value's option is written by hand: it must name
    # options that exist, each for the settings field it sets.
    from synaptoroute.server import ServerSettings
    from synaptoroute.server.settings import limit_flags

    serve = next(
        a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    ).choices["serve"]
    options = {o for a in serve._actions for o in a.option_strings}
    for field, flag in {**cli._SERVE_FLAGS, **limit_flags()}.items():
        assert flag in options or flag == "SYNAPTOROUTE_API_KEY", (field, flag)
        assert field in ServerSettings.model_fields, field


# -- import, fit, eval (issue 4's library calls) -------------------------------------------
TRAIN = str(FIXTURES / "clinc150_train_slice.jsonl")
VAL = str(FIXTURES / "clinc150_val_slice.jsonl")


def test_import_fit_eval(
    capsys: pytest.CaptureFixture[str], store: str, tmp_path: Path, bars: list[Any]
) -> None:
    code, out, _ = run(capsys, "import", TRAIN, "--store", store, "--json", "--progress")
    assert code == 0
    summary = json.loads(out)
    assert summary["rows"] == 630
    assert summary["routes"] == len(summary["created"]) == 20
    assert [(b.total, b.n) for b in bars] == [(600, 600)]  # the 30 null rows make no route

    code, out, _ = run(capsys, "eval", VAL, "--store", store, "--json", "-q")
    assert code == 0
    before = json.loads(out)
    assert before["rows"] == 440
    assert before["out_of_scope"] == 40

    # A bad C is refused before anything is fitted or saved.
    code, _, err = run(capsys, "fit", TRAIN, "--store", store, "--regularization", "0", "-q")
    assert code == EXIT_BAD_INPUT
    assert "regularization must be a positive number" in err
    assert stored_policy(store) is None  # no fit was saved

    code, out, _ = run(capsys, "fit", TRAIN, "--store", store, "--json", "-q")
    assert code == 0
    report = json.loads(out)
    assert report["rows"] == 630
    assert report["candidates"]["head"]["regularization"] in (10.0, 30.0)
    # One C, as asked (a faster fit), is the only one tried.
    code, out, _ = run(
        capsys, "fit", TRAIN, "--store", store, "--regularization", "30", "--json", "-q"
    )
    assert code == 0
    assert json.loads(out)["candidates"]["head"]["regularization"] == 30.0

    plot = tmp_path / "report.png"
    code, out, _ = run(capsys, "eval", VAL, "--store", store, "--plot", str(plot), "-q")
    assert code == 0
    assert "accuracy" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The fitted state lives in the store: a new process (here: a new command) uses it.
    code, out, _ = run(capsys, "eval", VAL, "--store", store, "--json", "-q")
    after = json.loads(out)
    assert after["accuracy"] > before["accuracy"]


def test_eval_fail_under_is_a_gate(capsys: pytest.CaptureFixture[str], store: str) -> None:
    assert run(capsys, "import", TRAIN, "--store", store, "-q")[0] == 0
    code, out, _ = run(capsys, "eval", VAL, "--store", store, "--json", "-q")
    figures = json.loads(out)
    low, high = figures["accuracy"] - 0.01, figures["accuracy"] + 0.01
    code, out, err = run(
        capsys, "eval", VAL, "--store", store, "-q", "--fail-under", f"accuracy={low}"
    )
    assert code == 0 and "accuracy" in out and err == ""
    code, out, err = run(
        capsys,
        "eval",
        VAL,
        "--store",
        store,
        "--json",
        "-q",
        "--fail-under",
        f"accuracy={high}",
        "--fail-under",
        "oos_recall=0",
    )
    assert code == cli.EXIT_BELOW_BAR
    assert json.loads(out)["accuracy"] == figures["accuracy"]  # the report still comes
    assert err.count("synaptoroute: eval:") == 1 and "accuracy" in err and "under" in err
    # A bar on a figure the data cannot give fails rather than passing unchecked.
    in_scope = Path(store).with_name("in_scope.jsonl")
    in_scope.write_text(
        "".join(
            line + "\n"
            for line in Path(VAL).read_text().splitlines()
            if '"label": null' not in line
        )
    )
    code, _, err = run(
        capsys, "eval", str(in_scope), "--store", store, "-q", "--fail-under", "oos_recall=0"
    )
    assert code == cli.EXIT_BELOW_BAR and "oos_recall is not measured" in err
    for bad in ("accuracy", "ece=0.1", "accuracy=1.5", "accuracy=nan", "=0.5"):
        with pytest.raises(SystemExit) as exc:
            run(capsys, "eval", VAL, "--store", store, "--fail-under", bad)
        assert exc.value.code == EXIT_BAD_INPUT, bad


MALFORMED = (
    '{"text": "move money to savings", "label": "transfer"}\n'
    "{not json}\n"
    '{"text": 5, "label": "transfer"}\n'
    "\n"
    '{"label": "transfer"}\n'
)


def test_malformed_lines_are_named_and_nothing_is_written(
    capsys: pytest.CaptureFixture[str], store: str, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(MALFORMED)
    code, _, err = run(capsys, "import", str(bad), "--store", store)
    assert code == EXIT_BAD_INPUT
    assert "line 2: invalid JSON" in err
    assert "line 3: 'text' must be a string" in err
    assert "line 5: missing key 'text'" in err
    assert not Path(store).exists()

    seed(capsys, store)
    before = stored_routes(store)
    for command in ("import", "fit", "eval"):
        code, _, err = run(capsys, command, str(bad), "--store", store)
        assert code == EXIT_BAD_INPUT, command
        assert "3 malformed lines" in err
    assert stored_routes(store) == before
    assert stored_policy(store) is None  # no fit was saved


def test_unknown_labels_are_named_by_their_line(
    capsys: pytest.CaptureFixture[str], store: str, tmp_path: Path
) -> None:
    # The API names a row by its index; a file's reader looks for its line, and blank
    # lines make the two differ.
    seed(capsys, store)
    data = tmp_path / "labelled.jsonl"
    data.write_text(
        '{"text": "I need a refund", "label": "billing"}\n'
        "\n"
        '{"text": "tell me a joke", "label": null}\n'
        '{"text": "cancel my order", "label": "orders"}\n'
        '{"text": "the app froze", "label": "tech"}\n'
        '{"text": "where is my parcel", "label": "orders"}\n'
    )
    for command in ("fit", "eval"):
        code, _, err = run(capsys, command, str(data), "--store", store)
        assert code == EXIT_BAD_INPUT, command
        assert "'orders' (line 4) name no route of this router" in err
        assert "index" not in err
    assert stored_policy(store) is None  # no fit was saved


def test_fit_needs_routes_and_a_readable_file(
    capsys: pytest.CaptureFixture[str], store: str, tmp_path: Path
) -> None:
    code, _, err = run(capsys, "import", str(tmp_path / "missing.jsonl"), "--store", store)
    assert code == EXIT_BAD_INPUT
    assert "cannot read" in err
    SQLiteStorage(store).close()  # an empty store
    code, _, err = run(capsys, "fit", TRAIN, "--store", store)
    assert code == EXIT_BAD_INPUT
    assert "holds no routes" in err


def test_the_encoder_can_be_injected(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # Issue 15: the command line takes its encoder by injection (an embedding service,
    # or a test double that needs no model file).
    from synaptoroute import HashingEncoder

    store = str(tmp_path / "hashing.db")
    hashing = HashingEncoder()
    add = ["routes", "add", "billing", "refund my order", "--store", store]
    assert main(add, encoder=hashing) == EXIT_OK
    capsys.readouterr()
    assert main(["route", "refund my order now", "--store", store, "--json"], encoder=hashing) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["result"]["route"] == "billing"
    storage = SQLiteStorage(store)
    try:
        info = storage.model_info()
        assert info is not None and info.model_id == hashing.model_id
    finally:
        storage.close()


# -- bad input found before the store is made ---------------------------------------------
def refused_without_a_store(capsys: pytest.CaptureFixture[str], store: Path, *argv: str) -> str:
    """Run ``argv`` on ``store``, expect bad input and no store made; its stderr."""
    code, _, err = run(capsys, *argv, "--store", str(store))
    assert code == EXIT_BAD_INPUT, (argv, err)
    assert not store.exists(), argv
    return err


def test_a_text_the_model_reads_nothing_of_makes_no_store(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # The router refused it, but after the store was created: an empty store was left.
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text(
        '{"text": "ok", "label": "b"}\n{"text": "x", "label": null}\n'
        '{"text": "\\u200b", "label": "a"}\n',
        encoding="utf-8",
    )
    yaml_file = tmp_path / "routes.yaml"
    yaml_file.write_text('routes:\n- name: a\n  utterances: [fine, "\\u200b"]\n', encoding="utf-8")
    cases = [
        (["routes", "add", "a", "\u200b"], "route 'a': utterance"),
        (["negatives", "add", "\ufeff"], "negative example"),
        (["import", str(jsonl)], f"{jsonl}: line 3: text"),
        (["import", str(yaml_file)], f"{yaml_file}: routes.0 ('a').utterances.1"),
        (["routes", "add", "--file", str(yaml_file)], "routes.0 ('a').utterances.1"),
    ]
    for n, (argv, named) in enumerate(cases):
        err = refused_without_a_store(capsys, tmp_path / f"{n}.db", *argv)
        assert named in err and "is empty to the model" in err, err
    # A null-labelled row is no utterance: import takes the file without it.
    jsonl.write_text('{"text": "ok", "label": "b"}\n{"text": "\\u200b", "label": null}\n')
    assert run(capsys, "import", str(jsonl), "--store", str(tmp_path / "ok.db"))[0] == EXIT_OK
    # fit names the line too (it named the row's 0-based index).
    code, _, err = run(capsys, "fit", str(jsonl), "--store", str(tmp_path / "ok.db"))
    assert code == EXIT_BAD_INPUT and f"{jsonl}: line 2: text" in err


def test_serve_refuses_a_bad_routes_file_before_making_the_store(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for n, (body, named) in enumerate(
        [
            ('routes:\n- name: ".."\n  utterances: [a]\n', "path segment"),
            ('routes:\n- name: a\n  utterances: ["\\u200b"]\n', "is empty to the model"),
        ]
    ):
        routes = tmp_path / f"{n}.yaml"
        routes.write_text(body, encoding="utf-8")
        serve = ["serve", "--port", "0", "--routes", str(routes)]
        err = refused_without_a_store(capsys, tmp_path / f"{n}.db", *serve)
        assert named in err and str(routes) in err, err


def test_a_repeated_key_or_a_control_character_in_a_label_names_its_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # json.loads kept the last value: text "e" and label "y" were dropped silently; a
    # label no route may have gave pydantic's message with no file or line.
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        '{"text": "e", "label": "x", "text": "f"}\n{"text": "g", "label": "y", "label": "z"}\n'
        '{"text": "h", "label": "x\\ny"}\n{"text": "i", "label": " w\\n"}\n',
        encoding="utf-8",
    )
    err = refused_without_a_store(capsys, tmp_path / "s.db", "import", str(rows))
    assert "3 malformed lines" in err
    assert "line 1: key 'text' appears more than once" in err
    assert "line 2: key 'label' appears more than once" in err
    assert "line 3: 'label' holds a control character ('\\n')" in err


def test_an_output_that_cannot_be_written_is_refused_before_any_work(
    capsys: pytest.CaptureFixture[str], store: str, tmp_path: Path
) -> None:
    # eval --plot failed after the whole evaluation (its report lost); "" was ignored.
    assert run(capsys, "routes", "add", "a", "hello there", "--store", store)[0] == EXIT_OK
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "hello", "label": "a"}\n', encoding="utf-8")
    for output, said in [
        ("", "the output file name is empty"),
        (str(tmp_path), "is a folder"),
        (str(tmp_path / "nodir" / "out.png"), "there is no folder"),
    ]:
        for argv in (["eval", str(rows), "--plot", output], ["export", "-o", output]):
            code, out, err = run(capsys, *argv, "--store", store)
            assert code == EXIT_BAD_INPUT and said in err and out == "", (argv, err)


def test_export_says_the_fitted_policy_stays_behind(
    capsys: pytest.CaptureFixture[str], store: str, tmp_path: Path
) -> None:
    assert run(capsys, "import", TRAIN, "--store", store)[0] == EXIT_OK
    code, _, err = run(capsys, "export", "-o", str(tmp_path / "a.yaml"), "--store", store)
    assert code == EXIT_OK and "warning" not in err
    assert run(capsys, "fit", VAL, "--store", store)[0] == EXIT_OK
    code, _, err = run(capsys, "export", "-o", str(tmp_path / "b.yaml"), "--store", store)
    assert code == EXIT_OK
    assert "synaptoroute: warning: the store's decision policy (" in err
    assert "'synaptoroute fit'" in err


@pytest.mark.parametrize("host", ["a b", "x/y", "[::1", "localhost:9999", ""])
def test_a_healthcheck_host_no_url_can_carry_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], host: str
) -> None:
    # Exit 1 ("not ready") before; "x/y" probed port 80 at path "/y:PORT/readyz".
    code, _, err = run(capsys, "healthcheck", "--host", host, "--port", "1")
    assert code == EXIT_BAD_INPUT and "is no host name or IP address" in err


_WILDCARD = "'*' is only read as a leading '*.' before a domain"


@pytest.mark.parametrize(
    ("name", "said"),
    [
        *((n, f"{n!r} is not a host name") for n in ("a b", "", "bücher.example", "x/y")),
        # Matched literally, '*' matches no Host at all (and "*" is no opt-out of the
        # DNS-rebinding guard: set an API key for that).
        *(
            (n, f"{n!r}: {_WILDCARD}")
            for n in ("*", "*x.com", "a.*.x.com", "*.*.x.com", "*.", "*..x.com", "*.x.com.")
        ),
    ],
)
def test_serve_refuses_an_allowed_host_no_host_header_carries(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, said: str
) -> None:
    # Such a name never matches a request's Host: the service would answer 421 to the
    # very clients it was told to serve, and nothing would say why.
    store = str(tmp_path / "r.db")
    # A second bad value keeps serve from starting should the name pass.
    args = ("--store", store, "--allowed-host", name, "--max-connections", "0")
    code, _, err = run(capsys, "serve", *args)
    assert code == EXIT_BAD_INPUT
    assert f"--allowed-host: Value error, {said}" in err
    assert not Path(store).exists()


def test_allowed_hosts_take_names_addresses_and_ports() -> None:
    from synaptoroute.server import ServerSettings

    hosts = ("router.internal", "xn--bcher-kva.example", "[::1]:8000", "10.0.0.7", " Router ")
    assert ServerSettings(allowed_hosts=hosts).allowed_hosts == hosts


def test_a_rate_burst_needs_a_rate_limit_in_python_too() -> None:
    # The CLI refused it; ServerSettings(rate_burst=10) alone served with no limit.
    from pydantic import ValidationError

    from synaptoroute.server import ServerSettings

    with pytest.raises(ValidationError, match="needs --rate-limit"):
        ServerSettings(rate_burst=10)
    assert ServerSettings(rate_limit=5, rate_burst=10).rate_burst == 10
    # The default burst is no error, named or not: settings dumped and read back (a
    # config file naming every field) are as before.
    assert ServerSettings.model_validate(ServerSettings().model_dump()).rate_limit is None


def test_the_cli_scores_as_the_stores_fit_was_made(
    capsys: pytest.CaptureFixture[str], clinc_store: Path, tmp_path: Path, encoder: Encoder
) -> None:
    # The CLI has no aggregation option: it routed and re-fitted a store fitted under
    # centroid with max scores, and saved thresholds that were wrong for its owner.
    store = str(tmp_path / "routes.db")
    shutil.copy(clinc_store, store)
    router = AdaptiveRouter.open(store, encoder, aggregation="centroid")
    router.fit(*_labelled(TRAIN), head=False)
    text = "how do i get my money back"
    expected = router.query(text)
    router.close()

    code, out, _ = run(capsys, "route", text, "--store", store, "--json")
    assert code == 0
    result = json.loads(out)["result"]
    assert (result["route"], result["score"]) == (expected.name, expected.score)

    assert run(capsys, "fit", TRAIN, "--store", store, "-q")[0] == 0
    policy = stored_policy(store)
    assert policy is not None and policy["info"]["aggregation"] == "centroid"


def _labelled(path: str) -> tuple[list[str], list[str | None]]:
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]
    return [r["text"] for r in rows], [r["label"] for r in rows]


def test_serve_says_a_keyless_exposed_service_answers_loopback_names_only(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It started without a word, then answered 421 to every client naming it by its
    # address: --read-only alone reads as enough to serve others.
    import synaptoroute.server

    started: list[Any] = []
    monkeypatch.setattr(synaptoroute.server, "run", lambda settings, **_: started.append(settings))
    store = str(tmp_path / "r.db")
    exposed = ("serve", "--store", store, "--host", "0.0.0.0", "--read-only")
    code, _, err = run(capsys, *exposed)
    assert code == EXIT_OK and len(started) == 1
    assert "warning: listening on 0.0.0.0 without an API key" in err
    assert "--allowed-host NAME" in err
    code, _, err = run(capsys, *exposed, "--allowed-host", "router.internal")
    assert code == EXIT_OK and "warning" not in err
    code, _, err = run(capsys, "serve", "--store", store)  # loopback
    assert code == EXIT_OK and "warning" not in err and len(started) == 3
    # A start refused for a bad routes file says why, and nothing about the host.
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes: [{name: x, utterances: [7]}]\n")
    code, _, err = run(capsys, *exposed, "--routes", str(bad))
    assert code == EXIT_BAD_INPUT and "warning" not in err and len(started) == 3

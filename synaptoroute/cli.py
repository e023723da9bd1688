"""The ``synaptoroute`` command line: a thin layer over the library.

Commands: ``route``, ``routes list|add|delete``, ``import``, ``export``, ``fit``,
``eval``, ``serve``, ``healthcheck`` and ``completion``. Every command has ``--help``;
those that print data take ``--json``. Long work (encoding many texts) shows a progress
bar on stderr when stderr is a terminal (``--progress``/``--no-progress`` force it), so
redirected logs never receive its ``\r`` frames. ``python -m synaptoroute`` runs it too.

Why one module over 400 lines: each command is a parser entry and a short handler
that calls the library; they share the output helpers and the exit-code mapping,
and splitting them apart would spread that mapping over files.

Exit codes:
    0: success.
    1: the operation failed (the store or the model could not be used, an I/O error).
    2: bad input (usage, a malformed or invalid file, an unknown route, a missing store).
    3: an optional extra is not installed (the message names the ``pip install``).
    4: ``eval --fail-under``: a figure is under its bar.
    130: interrupted.
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import select
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np
from numpy.typing import NDArray
from pydantic import ValidationError

from . import __version__
from .encoder import Encoder, EncoderProtocol, EncoderWrapper, check_text, text_list
from .evaluation import HEADLINE_FIGURES
from .exceptions import (
    InvalidInputError,
    MissingDependencyError,
    ModelMismatchError,
    NotADatabaseError,
    RouteExistsError,
    RouteNotFoundError,
    SynaptorouteError,
)
from .models import NEGATIVES_ROUTE, Route, clean_utterances
from .router import AdaptiveRouter
from .routes_file import (
    RoutesDocument,
    apply_routes,
    check_document,
    check_readable,
    dump_routes,
    load_routes_file,
    refuse_unread,
    render_routes,
)
from .server.settings import add_limit_arguments, whole_number
from .storage import check_route, is_database_url
from .storage.base import check_store_path, redact_url

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_BELOW_BAR",
    "EXIT_BROKEN_PIPE",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_MISSING_EXTRA",
    "EXIT_OK",
    "build_parser",
    "main",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_MISSING_EXTRA = 3
#: ``eval --fail-under``: a figure is under its bar (or could not be measured).
EXIT_BELOW_BAR = 4
EXIT_INTERRUPTED = 130
#: stdout was closed before the command had written it all (128 + SIGPIPE).
EXIT_BROKEN_PIPE = 141

#: Used when ``--store`` is not given.
STORE_ENV = "SYNAPTOROUTE_STORE"
DEFAULT_STORE = "routes.db"
#: Used by ``serve`` and ``healthcheck`` when ``--port`` is not given.
PORT_ENV = "SYNAPTOROUTE_PORT"
DEFAULT_PORT = 8000
# Texts per encoder call while a progress bar is shown: small enough for a smooth
# bar, large enough that the batching inside the encoder still pays off.
_PROGRESS_CHUNK = 256
_PROGRESS_MIN = 100


class BadInput(Exception):
    """A usage problem found by the CLI itself (exit code 2)."""


# -- progress --------------------------------------------------------------------------
class ProgressEncoder(EncoderWrapper):
    """Wraps an encoder; while :attr:`bar` is set, encodes in chunks and advances it."""

    def __init__(self, inner: EncoderProtocol) -> None:
        super().__init__(inner)
        self.bar: Any = None

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Encode ``texts``, advancing the progress bar if one is shown."""
        bar = self.bar
        texts = text_list(texts)
        if bar is None or len(texts) <= _PROGRESS_CHUNK:
            out = self.inner.encode(texts)
            if bar is not None:
                bar.update(len(texts))
            return out
        parts = []
        for start in range(0, len(texts), _PROGRESS_CHUNK):
            chunk = texts[start : start + _PROGRESS_CHUNK]
            parts.append(self.inner.encode(chunk))
            bar.update(len(chunk))
        return np.vstack(parts)


def _open_bar(total: int, desc: str) -> Any:
    """A tqdm bar on stderr, or ``None`` without the ``cli`` extra (tests wrap this)."""
    try:
        from tqdm import tqdm
    except ImportError:  # the bar is a comfort, not a requirement
        return None
    return tqdm(total=total, desc=desc, unit="text", file=sys.stderr, leave=False)


def _show_progress(args: argparse.Namespace, total: int) -> bool:
    """``--progress``/``--no-progress``/``-q`` if given, else long work on a terminal."""
    forced: bool | None = getattr(args, "progress", None)
    if getattr(args, "quiet", False):
        return False
    if forced is not None:
        return forced
    # A bar for a handful of texts is noise, and a redirected log must not get \r frames.
    return total >= _PROGRESS_MIN and sys.stderr.isatty()


@contextmanager
def _progress(
    router: AdaptiveRouter, total: int, desc: str, args: argparse.Namespace
) -> Iterator[None]:
    encoder = router.encoder
    bar = None
    if isinstance(encoder, ProgressEncoder) and _show_progress(args, total):
        bar = _open_bar(total, desc)
    if bar is None or not isinstance(encoder, ProgressEncoder):  # (the check narrows for mypy)
        yield
        return
    encoder.bar = bar
    try:
        yield
    finally:
        encoder.bar = None
        bar.close()


# -- helpers ---------------------------------------------------------------------------
def _store_path(args: argparse.Namespace) -> str:
    if args.store is not None and not args.store.strip():
        # Not the default: `--store "$STORE"` with STORE unset would change another store.
        msg = "--store is empty; give a path (or leave --store out for the default)"
        raise BadInput(msg)
    from_env = os.environ.get(STORE_ENV)
    if args.store is None and from_env is not None and not from_env.strip():
        # As for --store "": SYNAPTOROUTE_STORE="$STORE" with STORE unset would change
        # the current folder's store.
        msg = f"{STORE_ENV} is set but empty; give a path, or unset it for the default"
        raise BadInput(msg)
    return str(args.store or from_env or DEFAULT_STORE)


def _open_router(args: argparse.Namespace, *, create: bool) -> AdaptiveRouter:
    path = _store_path(args)
    check_store_path(path)  # before a message could show it (it may hold a password)
    if not create and not is_database_url(path) and path != ":memory:":
        _check_store_exists(path)
    encoder = _encoder(args)
    try:
        return AdaptiveRouter.open(path, ProgressEncoder(encoder), reencode=args.reencode)
    except ModelMismatchError as exc:
        msg = f"{exc}; on the command line: --reencode"
        raise BadInput(msg) from exc


def _encoder(args: argparse.Namespace) -> EncoderProtocol:
    """The command's encoder, made once: the checks run before the store is opened
    and the router share it (the model loads once)."""
    encoder: EncoderProtocol | None = getattr(args, "encoder", None)
    if encoder is None:
        encoder = args.encoder = Encoder()
    return encoder


def _check_store_exists(path: str) -> None:
    """Refuse, for a command that only reads, a store that is not there: no file, or an
    empty one (SQLite would make a new store of it, and the file would be changed).

    Raises:
        BadInput: the file is missing or empty; it is left as it was.
    """
    file = Path(path).expanduser()
    hint = "create one with 'synaptoroute import' or 'routes add'"
    if not file.exists():
        msg = f"no store at {path!r}; {hint}"
        raise BadInput(msg)
    try:
        empty = file.is_file() and file.stat().st_size == 0
    except OSError:  # unreadable: opening it reports why
        empty = False
    if empty:
        msg = f"no store at {path!r}: the file is empty; {hint}"
        raise BadInput(msg)


@contextmanager
def _router(args: argparse.Namespace, *, create: bool = False) -> Iterator[AdaptiveRouter]:
    router = _open_router(args, create=create)
    try:
        yield router
    finally:
        router.close()


def _takes_unicode(stream: TextIO) -> bool:
    """Whether ``stream`` encodes every character (UTF-8, -16 or -32)."""
    return _codec(stream).startswith("utf")


def _codec(stream: TextIO) -> str:
    """The normalised name of ``stream``'s encoding (``""`` for an unknown one)."""
    try:
        return codecs.lookup(getattr(stream, "encoding", None) or "utf-8").name
    except LookupError:
        return ""


def _json_text(data: Any, indent: int | None = None, out: TextIO | None = None) -> str:
    # \u escapes where the output cannot take a character: still JSON, and exact (the
    # stream's backslash escapes would be neither, for a character beyond U+FFFF).
    return json.dumps(data, ensure_ascii=not _takes_unicode(out or sys.stdout), indent=indent)


def _print_json(data: Any, out: TextIO | None = None) -> None:
    print(_json_text(data, 2, out), file=out or sys.stdout)


def _write_document(text: str) -> None:
    """Write a routes file to stdout in UTF-8, the encoding routes files are read in,
    whatever the terminal's: escapes in its place would read back as other text."""
    stream = sys.stdout
    buffer = getattr(stream, "buffer", None)
    if buffer is None:  # a stream of text only (a test's StringIO)
        stream.write(text)
        return
    stream.flush()
    # Until every byte is out: a pipe whose reader left (`| head -1`) takes part of a
    # large write and says so only in the count, where the next write raises
    # BrokenPipeError (exit code 141); one write exited 0 with the rest dropped.
    data = memoryview(text.encode("utf-8"))
    while data:
        written = buffer.write(data)
        if written is None:  # a non-blocking stdout that is full: wait until it drains
            select.select([], [buffer], [])
            continue
        data = data[written:]
    buffer.flush()


def _field(text: str) -> str:
    """``text`` as one field of a text-mode line: a tab or a line break inside (a query
    or a description may hold them) is written as its escape (``\\t``, ``\\n``,
    ``\\x0b`` ...), or it split the line a script reads."""
    return text.translate(_FIELD_ESCAPES)


def _columns(text: str) -> int:
    """The terminal columns ``text`` takes, as terminals draw it: a wide character (CJK,
    full-width forms, most emoji) two, a combining mark, a format character or a Hangul
    vowel or final consonant joining the syllable before it none, a character joined
    by a zero-width joiner (an emoji sequence) none more, and a variation selector 16
    makes the character before it an emoji (two)."""
    import unicodedata

    columns, last, joined = 0, 0, False
    for c in text:
        if c == "\ufe0f":  # VS16: the character before is drawn as an emoji
            columns, last = columns + (2 - last if last == 1 else 0), 2
            continue
        if c == "\u200d":  # joins an emoji sequence: the next emoji is drawn in this one
            joined = last == 2
            continue
        if joined or unicodedata.category(c) in ("Mn", "Me", "Cf") or "\u1160" <= c <= "\u11ff":
            joined = False
            continue
        last = 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1
        columns += last
    return columns


def _pad(text: str, width: int) -> str:
    """``text`` padded with spaces to ``width`` terminal columns (``:24`` counts code
    points), so a column after a route name lines up whatever its script."""
    return text + " " * max(0, width - _columns(text))


# The characters str.splitlines breaks at, and the tab.
_FIELD_ESCAPES = {ord(c): repr(c)[1:-1] for c in "\t\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


def _match_dict(match: Any) -> dict[str, Any]:
    from .server.schemas import RouteResult

    return RouteResult.from_match(match).model_dump()


@dataclass(frozen=True)
class _Labelled:
    """A JSON-lines file's rows, each with its line number."""

    path: str
    texts: list[str]
    labels: list[str | None]
    lines: list[int]

    def refuse_unknown_labels(self, router: AdaptiveRouter) -> None:
        """The API's label check, naming rows by their line in the file (the API's
        index is not the line), before anything is encoded.

        Raises:
            InvalidInputError: a label names no route, or one without utterances.
        """
        from .datasets import label_indexes

        routes = router.list_routes()
        label_indexes(
            self.labels,
            [r.name for r in routes if r.utterances],
            empty={r.name for r in routes if not r.utterances},
            lines=self.lines,
        )

    def refuse_unread_rows(self, args: argparse.Namespace, *, labelled: bool) -> None:
        """Refuse a text the model reads nothing of (of a labelled row only, with
        ``labelled``), naming its line.

        Raises:
            InvalidInputError: the first such text.
        """
        refuse_unread(
            _encoder(args),
            (
                (f"{self.path}: line {line}: text", text)
                for text, label, line in zip(self.texts, self.labels, self.lines, strict=True)
                if label is not None or not labelled
            ),
        )


def _read_labelled(path: str) -> _Labelled:
    """The rows of a JSON-lines file, every line validated before anything is written.

    Raises:
        InvalidInputError: malformed lines, each named by its line number.
    """
    from .datasets import _load_numbered

    try:
        return _Labelled(path, *_load_numbered(path))
    except OSError as exc:
        msg = f"cannot read {path!r}: {exc.strerror or exc}"
        raise BadInput(msg) from exc


# -- commands -------------------------------------------------------------------------
def cmd_route(args: argparse.Namespace) -> int:
    """Route texts and print the route of each."""
    with _router(args) as router:
        if args.top_k is not None:  # 0 is refused by query_top_k, not ignored
            results = [
                [_match_dict(m) for m in router.query_top_k(t, args.top_k)] for t in args.text
            ]
        else:
            results = [[_match_dict(m)] for m in router.query_batch(args.text)]
    for text, matches in zip(args.text, results, strict=True):
        if args.json:
            item = matches if args.top_k is not None else matches[0]
            print(_json_text({"query": text, "result": item}))
            continue
        for m in matches:
            print(f"{m['route'] or '-'}\t{m['score']:.4f}\t{m['reason']}\t{_field(text)}")
    return EXIT_OK


def cmd_routes_list(args: argparse.Namespace) -> int:
    """Print every route."""
    with _router(args) as router:
        doc = dump_routes(router)
    if args.json:
        _print_json(doc["routes"])
        return EXIT_OK
    print(f"{'route':24} {'utterances':>10} {'threshold':>9}  description")
    for r in doc["routes"]:
        threshold = f"{r['threshold']:.3f}" if "threshold" in r else "-"
        desc = _field(r.get("description") or "")
        print(f"{_pad(r['name'], 24)} {len(r['utterances']):>10} {threshold:>9}  {desc}")
    print(f"default threshold: {doc['threshold']:.3f}", file=sys.stderr)
    return EXIT_OK


def cmd_routes_add(args: argparse.Namespace) -> int:
    """Add (or with --replace, replace) routes from arguments or a routes file."""
    if args.file:
        if args.name or args.utterances:
            msg = "give either NAME UTTERANCE... or --file, not both"
            raise BadInput(msg)
        # Ignored, they would leave the file's values in place of the ones asked for.
        if args.threshold is not None or args.description is not None:
            msg = (
                "--threshold and --description go with NAME UTTERANCE...; a routes file "
                "sets them per route"
            )
            raise BadInput(msg)
        doc = load_routes_file(args.file)
    else:
        if not args.name or not args.utterances:
            msg = "give NAME UTTERANCE... (at least one utterance) or --file FILE"
            raise BadInput(msg)
        route = Route(
            name=args.name,
            utterances=args.utterances,
            description=args.description,
            threshold=args.threshold,
        )
        _check_route_arguments(route)
        doc = RoutesDocument(routes=[route])
    if args.file:
        check_readable(doc, args.file, _encoder(args))
    else:
        refuse_unread(
            _encoder(args), ((f"route {args.name!r}: utterance", t) for t in route.utterances)
        )
    with _router(args, create=True) as router:
        if not args.replace:
            taken = [
                r.name for r in doc.routes if r.name in router and router.get_route(r.name) != r
            ]
            if taken:
                msg = f"route {taken[0]!r} exists; pass --replace to replace it"
                raise RouteExistsError(msg)
            _refuse_threshold_change(router, doc)
        total = sum(len(r.utterances) for r in doc.routes)
        with _progress(router, total, "encoding", args):
            report = apply_routes(router, doc)
    if args.json:
        _print_json(report.to_dict())
    else:
        for key in ("created", "replaced", "unchanged"):
            for name in getattr(report, key):
                print(f"{key}\t{name}")
        if report.negatives_added:
            print(f"negatives added\t{len(report.negatives_added)}")
        if report.threshold_changed:
            print(f"threshold\t{report.threshold_before:.3f} -> {doc.threshold:.3f}")
    return EXIT_OK


def _refuse_threshold_change(router: AdaptiveRouter, doc: RoutesDocument) -> None:
    """Refuse a file's default threshold that would replace a store's own (``--replace``
    allows it): an export carries its store's, fitted or not, and importing it into
    another store changed that store's silently.

    Raises:
        BadInput: the store holds routes or negative examples, and another default
            threshold.
    """
    holds = len(router) > 0 or router.has_negatives  # a store of negatives is not new
    if doc.threshold is not None and holds and doc.threshold != router.threshold:
        msg = (
            f"the file sets the default threshold {doc.threshold:.3f}, and the store's is "
            f"{router.threshold:.3f}; pass --replace to change it"
        )
        raise BadInput(msg)


def _check_route_arguments(route: Route) -> None:
    """Refuse what the store would refuse, before the store is opened (or made), so
    bad input leaves no empty store behind (a routes file gets this from its check).

    Raises:
        BadInput: the reserved name of the negative examples.
        InvalidInputError: a name, description or utterance that is not valid Unicode.
    """
    if route.name == NEGATIVES_ROUTE:
        msg = (
            f"route name {NEGATIVES_ROUTE!r} is reserved; add texts that must route nowhere "
            "with 'synaptoroute negatives add'"
        )
        raise BadInput(msg)
    check_route(route)


def cmd_routes_delete(args: argparse.Namespace) -> int:
    """Delete routes; nothing is deleted if any name is unknown."""
    with _router(args) as router:
        for name in args.names:
            router.get_route(name)
        for name in dict.fromkeys(args.names):
            router.delete_route(name)
    if args.json:
        _print_json({"deleted": list(dict.fromkeys(args.names))})
    else:
        for name in dict.fromkeys(args.names):
            print(f"deleted\t{name}")
    return EXIT_OK


def cmd_negatives_list(args: argparse.Namespace) -> int:
    """Print every negative example."""
    with _router(args) as router:
        negatives = router.negatives
    if args.json:
        _print_json({"negatives": negatives})
    else:
        for text in negatives:
            print(_field(text))
    return EXIT_OK


def cmd_negatives_add(args: argparse.Namespace) -> int:
    """Add negative examples (texts that must route nowhere)."""
    # Checked before the store is opened (or made): a refusal leaves no empty store.
    texts = clean_utterances(args.texts)
    for text in texts:
        check_text(text)
    refuse_unread(_encoder(args), (("negative example", text) for text in texts))
    with _router(args, create=True) as router:
        added = router.add_negatives(args.texts)
    if args.json:
        _print_json({"added": added})
    else:
        for text in added:
            print(f"added\t{_field(text)}")
    return EXIT_OK


def cmd_negatives_delete(args: argparse.Namespace) -> int:
    """Delete negative examples."""
    with _router(args) as router:
        deleted = router.delete_negatives(args.texts)
    if args.json:
        _print_json({"deleted": deleted})
    else:
        print(f"deleted\t{deleted}")
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    """Build routes from labelled JSON lines (or apply a YAML/JSON routes file)."""
    suffix = Path(args.file).suffix.lower()
    if suffix in (".yaml", ".yml", ".json"):
        doc = load_routes_file(args.file)
        check_readable(doc, args.file, _encoder(args))
        rows = sum(len(r.utterances) for r in doc.routes)
    else:
        from .datasets import routes_from_labelled

        data = _read_labelled(args.file)
        texts, labels = data.texts, data.labels
        doc = RoutesDocument(routes=routes_from_labelled(texts, labels))
        check_document(doc, args.file)  # before the store is opened (or made)
        data.refuse_unread_rows(args, labelled=True)
        if not doc.routes:
            msg = f"{args.file}: every row is labelled null; there is no route to build"
            raise BadInput(msg)
        rows = len(texts)
    with _router(args, create=True) as router:
        if not args.replace:
            taken = [
                r.name for r in doc.routes if r.name in router and router.get_route(r.name) != r
            ]
            if taken:
                msg = (
                    f"route {taken[0]!r} exists with other content; pass --replace to replace "
                    "existing routes"
                )
                raise RouteExistsError(msg)
            _refuse_threshold_change(router, doc)
        total = sum(len(r.utterances) for r in doc.routes) + len(doc.negatives)
        with _progress(router, total, "encoding", args):
            report = apply_routes(router, doc)
    summary = {"rows": rows, "routes": len(doc.routes), **report.to_dict()}
    if args.json:
        _print_json(summary)
    else:
        negatives = f", {len(report.negatives_added)} negatives added" if doc.negatives else ""
        print(
            f"{summary['routes']} routes from {rows} rows: {len(report.created)} created, "
            f"{len(report.replaced)} replaced, {len(report.unchanged)} unchanged{negatives}"
        )
        if report.threshold_changed:
            print(f"default threshold {report.threshold_before:.3f} -> {router.threshold:.3f}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    """Write the store's routes as a routes file (YAML or JSON)."""
    if args.json and args.format == "yaml":
        msg = "--json means --format json; give one format"
        raise BadInput(msg)
    to_json_file = str(args.output or "").lower().endswith(".json")
    if to_json_file and args.format == "yaml":
        # import (and serve --routes) read a file by its suffix: it would not load.
        msg = f"--format yaml into {args.output}: a .json file is read as JSON; name it .yaml"
        raise BadInput(msg)
    by_suffix = args.format is None and to_json_file
    fmt: Literal["yaml", "json"] = (
        "json" if args.json or args.format == "json" or by_suffix else "yaml"
    )
    if args.output is not None:
        _refuse_to_overwrite(args.output, args)
    with _router(args) as router:
        doc = dump_routes(router)
        policy = router.policy
    text = render_routes(doc, fmt)
    fitted = [
        what
        for what, there in (
            ("per-route thresholds", policy.thresholds),
            ("a margin", policy.min_margin),
            ("a calibrator", policy.calibrator is not None),
            ("a head", policy.head is not None),
        )
        if there
    ]
    if fitted:
        # "Reads back exactly" holds for the routes; the fitted state is the store's.
        print(
            f"synaptoroute: warning: the store's decision policy ({', '.join(fitted)}) is "
            "not part of a routes file; after importing it into another store, run "
            "'synaptoroute fit' there",
            file=sys.stderr,
        )
    if args.output is not None:
        _write_atomically(Path(args.output), text)
    else:
        _write_document(text)
    return EXIT_OK


def _refuse_to_overwrite(output: str, args: argparse.Namespace, *inputs: str) -> None:
    """Refuse, before any work, an output file that is the store (or one of its
    journal files), one of ``inputs``, or any SQLite database: ``export -o routes.db``
    renamed a YAML file over the store, and its fitted policy was gone for good. And
    an output that cannot be written, an empty name, a folder or a file in a folder
    that does not exist: ``eval --plot`` failed there after the whole evaluation."""
    if not output.strip():
        msg = "the output file name is empty: give a path"
        raise BadInput(msg)
    path = Path(output)
    if path.is_dir():
        msg = f"{output} is a folder: give a file name"
        raise BadInput(msg)
    if not path.parent.is_dir():
        msg = f"{output}: there is no folder {str(path.parent)!r}"
        raise BadInput(msg)
    if not path.is_file():
        return  # nothing there, or a pipe or a device (written to, never replaced)
    store = _store_path(args)
    named = {store: "the store", **{f"{store}{end}": "the store's journal" for end in _JOURNALS}}
    named.update({name: "an input file" for name in inputs})
    for other, what in named.items():
        with suppress(OSError, ValueError):  # not a file (a PostgreSQL DSN), or gone
            if os.path.samefile(path, other):
                msg = f"{output} is {what}: write the output elsewhere"
                raise BadInput(msg)
    try:
        with path.open("rb") as fh:
            head = fh.read(len(_SQLITE_HEADER))
    except OSError:
        return  # unreadable: the write says why
    if head == _SQLITE_HEADER:
        msg = f"{output} is a SQLite database (a store?): write the output elsewhere"
        raise BadInput(msg)


_JOURNALS = ("-wal", "-shm", "-journal")
_SQLITE_HEADER = b"SQLite format 3\x00"


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a new temporary file beside ``path``, then rename it over
    ``path``: a reader never sees half a file, and the temporary file has a name of its
    own (as the graph cache's, ``ann.py``), so no other file is overwritten and two
    exports do not collide.

    A symbolic link is followed (its target is replaced, the link kept), a replaced
    file keeps its permission bits, and what is not a regular file (``/dev/stdout``, a
    named pipe) is written to, never renamed over: as root, the rename replaced a
    device node with a file.
    """
    import stat
    import uuid

    _refuse_a_planted_link(path)
    try:
        # stat() follows links, /proc's too: /dev/stdout on a pipe is a pipe, where its
        # realpath ("/proc/<pid>/fd/pipe:[N]") names nothing.
        mode: int | None = path.stat().st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        with path.open("w", encoding="utf-8") as out:
            out.write(text)
        return
    target = Path(os.path.realpath(path))
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        if mode is not None:
            tmp.chmod(stat.S_IMODE(mode))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)  # left only when the write or the rename failed


def _refuse_a_planted_link(path: Path) -> None:
    """Refuse, as the kernel's ``protected_symlinks`` does for an open, a path through
    a link in a sticky world-writable folder (``/tmp``) owned by neither this user nor
    the folder's owner: resolved and replaced, another user's link made the export
    overwrite any file this user may write. Every link on the way is checked."""
    import stat

    if not hasattr(os, "geteuid"):  # Windows: no such folders
        return
    pending = list(Path(os.path.abspath(path)).parts)
    done = Path(pending.pop(0))
    for _ in range(256):  # links followed and parts walked; a loop fails on its own later
        if not pending:
            return
        part = pending.pop(0)
        if part == "..":
            done = done.parent
            continue
        try:
            link = (done / part).lstat()
            folder = done.stat()
        except OSError:
            return  # missing from here on: nothing more to follow
        if not stat.S_ISLNK(link.st_mode):
            done = done / part
            continue
        shared = folder.st_mode & stat.S_ISVTX and folder.st_mode & stat.S_IWOTH
        if shared and link.st_uid not in (os.geteuid(), folder.st_uid):
            msg = (
                f"{str(path)!r} goes through another user's link in a shared folder "
                f"({str(done / part)!r}): not followed (write to a path of your own)"
            )
            raise BadInput(msg)
        target = Path(os.readlink(done / part))
        pending = [*target.parts, *pending]
        if target.is_absolute():
            done = Path(pending.pop(0))


def _require_routes(router: AdaptiveRouter, args: argparse.Namespace) -> None:
    if not len(router):
        # A PostgreSQL URL may hold a password.
        msg = (
            f"the store {redact_url(_store_path(args))!r} holds no routes; "
            "run 'synaptoroute import' first"
        )
        raise BadInput(msg)


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit thresholds (and more) on labelled data; the fitted state is saved in the store."""
    data = _read_labelled(args.file)
    texts, labels = data.texts, data.labels
    with _router(args) as router:
        _require_routes(router, args)
        data.refuse_unknown_labels(router)
        data.refuse_unread_rows(args, labelled=False)
        with _progress(router, len(texts), "encoding", args):
            options: dict[str, Any] = {}
            if args.regularization is not None:
                options["regularization"] = args.regularization
            report = router.fit(
                texts,
                labels,
                objective=args.objective,
                target_oos_recall=args.target_oos_recall,
                **options,
            )
    if args.json:
        _print_json(report.to_dict())
    else:
        print(report)
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate the store's router on labelled data; optionally plot the report."""
    if args.plot is not None:
        _refuse_to_overwrite(args.plot, args, args.file)
    data = _read_labelled(args.file)
    texts, labels = data.texts, data.labels
    with _router(args) as router:
        _require_routes(router, args)
        data.refuse_unknown_labels(router)
        with _progress(router, len(texts), "encoding", args):
            report = router.evaluate(texts, labels)
    if args.plot is not None:
        report.plot(args.plot)
    if args.json:
        _print_json(report.to_dict())
    else:
        print(report)
        if args.plot:
            print(f"plot written to {args.plot}")
    below = []
    for metric, bar in args.fail_under or []:
        value = getattr(report, metric)
        if value is None:  # a gate on a figure the data cannot give must not pass
            below.append(f"{metric} is not measured on this data (under --fail-under {bar})")
        elif value < bar:
            below.append(f"{metric} {value:.4f} is under {bar} (--fail-under)")
    for line in below:
        print(f"synaptoroute: eval: {line}", file=sys.stderr)
    return EXIT_BELOW_BAR if below else EXIT_OK


#: The figures ``eval --fail-under`` can hold a bar for (higher is better).
_BAR_METRICS = (*HEADLINE_FIGURES, "oos_auroc")


def _bar(value: str) -> tuple[str, float]:
    metric, sep, number = value.partition("=")
    metric = metric.strip()
    if not sep or metric not in _BAR_METRICS:
        msg = f"expected METRIC=VALUE with METRIC one of {', '.join(_BAR_METRICS)}, got {value!r}"
        raise argparse.ArgumentTypeError(msg)
    bar = _number(number)
    if not 0.0 <= bar <= 1.0:
        msg = f"{metric}'s bar must be in [0, 1], got {bar}"
        raise argparse.ArgumentTypeError(msg)
    return metric, bar


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the HTTP service until SIGINT/SIGTERM."""
    import logging

    from .server import ServerSettings, run
    from .server.app import check_routes_file
    from .server.settings import is_loopback, limit_flags, limit_values

    values = {
        "store": _store_path(args),
        "routes_file": args.routes,
        "host": args.host,
        "port": _port(args.port),
        "read_only": args.read_only,
        "console": args.console,
        "max_body_bytes": args.max_body_bytes,
        "max_queue_size": args.max_queue,
        "request_timeout": args.request_timeout,
        "drain_timeout": args.drain_timeout,
        "encoder_threads": args.threads,
        "encoder_spin": args.spin,
        "log_level": args.log_level,
        **limit_values(args),
    }
    if args.rate_burst is not None and args.rate_limit is None:
        # The settings refuse a burst other than the default; the CLI knows it was
        # given at all (--rate-burst 50 is the default, and as ignored).
        raise BadInput("--rate-burst needs --rate-limit: no rate limit is set")
    try:
        settings = ServerSettings.from_env(**values)
    except ValidationError as exc:
        # Named by the option that set it, not by the settings field.
        raise BadInput(_message(exc, names=_SERVE_FLAGS | limit_flags())) from exc
    settings.check_safe()
    if args.routes:
        # A bad file fails here with exit code 2 (a text the model reads nothing of,
        # at start-up, with the service's encoder: still before the store is opened).
        check_routes_file(load_routes_file(args.routes), settings)
    if settings.api_key is None and not is_loopback(settings.host) and not settings.allowed_hosts:
        # It starts (read-only), then answers 421 to every client that names it by
        # its address or DNS name: the guard against DNS rebinding. Said after the
        # checks above, so a start that fails on bad input does not print it first.
        warnings.warn(
            f"listening on {settings.host} without an API key: requests addressed to "
            "another name than a loopback one get 421 (the probes and /metrics aside); "
            "give the names clients use with --allowed-host NAME (or set "
            "SYNAPTOROUTE_API_KEY)",
            stacklevel=1,
        )
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(message)s")
    run(settings, access_log=args.access_log)
    return EXIT_OK


def _check_host(host: str) -> None:
    """Refuse a ``--host`` no URL can carry as a host (exit code 2, as a bad
    ``--port``): the probe would report "not ready" (exit 1), or, for a ``/`` in it,
    probe another port than ``--port``.

    Raises:
        BadInput: ``host`` is empty, holds a space or one of ``/?#@[]\\``, or holds
            ``:`` and is no IPv6 address (a port goes in ``--port``).
    """
    import ipaddress

    bad = not host or any(c.isspace() or c in "/?#@[]\\" for c in host)
    if not bad and ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            bad = True
    if bad:
        msg = f"--host {host!r} is no host name or IP address (give a port with --port)"
        raise BadInput(msg)


def cmd_healthcheck(args: argparse.Namespace) -> int:
    """Exit 0 if a running service answers ``GET /readyz`` with 200, else 1."""
    import urllib.error
    import urllib.request

    # An IPv6 address, bracketed or not (as in a URL): "[[::1]]" is no host.
    bare = args.host[1:-1] if args.host.startswith("[") and args.host.endswith("]") else args.host
    _check_host(bare)
    host = f"[{bare}]" if ":" in bare else bare
    url = f"http://{host}:{_port(args.port, lowest=1)}/readyz"
    # No proxy: an HTTP(S)_PROXY in the container's environment must not carry a local probe.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=args.timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        print(f"synaptoroute: error: {url}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if status != 200:
        print(f"synaptoroute: error: {url} answered {status}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_completion(args: argparse.Namespace) -> int:
    """Print the shell completion script for bash, zsh or fish."""
    from ._completion import completion_script

    sys.stdout.write(completion_script(build_parser(), args.shell))
    return EXIT_OK


# -- parser ---------------------------------------------------------------------------
def _add_store(p: argparse.ArgumentParser, *, reencode: bool = True) -> None:
    p.add_argument(
        "--store",
        metavar="PATH",
        help=(
            f"SQLite file or postgresql:// URL (default: ${STORE_ENV} or {DEFAULT_STORE}; "
            "':memory:' for none)"
        ),
    )
    if reencode:
        p.add_argument(
            "--reencode",
            action="store_true",
            help="re-encode a store written with another model with this one (its "
            "vectors are replaced; without it such a store is refused)",
        )


def _add_json(p: argparse.ArgumentParser, what: str = "print JSON instead of text") -> None:
    p.add_argument("--json", action="store_true", help=what)


def _add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar on stderr, or not (default: only when stderr is a terminal)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="same as --no-progress")


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        msg = f"not a number: {value!r}"
        raise argparse.ArgumentTypeError(msg) from None


def _threshold(value: str) -> float:
    number = _number(value)
    if not -1.0 <= number <= 1.0:
        msg = f"threshold must be in [-1, 1], got {number}"
        raise argparse.ArgumentTypeError(msg)
    return number


def _seconds(value: str) -> float:
    number = _number(value)
    # A usage error, not "not ready": the check would otherwise fail for good.
    if not 0 < number < float("inf"):
        msg = f"must be a finite number of seconds > 0, got {value!r}"
        raise argparse.ArgumentTypeError(msg)
    return number


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command (used by ``main`` and the docs test)."""
    parser = argparse.ArgumentParser(
        prog="synaptoroute",
        description="A local semantic router: route texts, manage routes, fit, evaluate, serve.",
        epilog=(
            "Exit codes: 0 ok, 1 failure, 2 bad input, 3 missing extra, 4 under an eval "
            "--fail-under bar, 130 interrupted, "
            "141 output closed early (| head)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"synaptoroute {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("route", help="route texts", description="Route each TEXT; print its route.")
    p.add_argument("text", nargs="+", metavar="TEXT", help="text to route")
    p.add_argument(
        "--top-k", type=whole_number, metavar="K", help="print the K best routes of each text"
    )
    _add_store(p)
    _add_json(p, "print one JSON object per text (JSON lines)")
    p.set_defaults(func=cmd_route)

    p = sub.add_parser("routes", help="list, add or delete routes", description="Manage routes.")
    routes = p.add_subparsers(dest="routes_command", metavar="ACTION", required=True)

    q = routes.add_parser("list", help="list routes", description="List the store's routes.")
    _add_store(q)
    _add_json(q, "print the routes as a JSON array")
    q.set_defaults(func=cmd_routes_list)

    q = routes.add_parser(
        "add",
        help="add routes",
        description="Add a route from arguments, or every route of a YAML/JSON routes file.",
    )
    q.add_argument("name", nargs="?", metavar="NAME", help="route name")
    q.add_argument("utterances", nargs="*", metavar="UTTERANCE", help="example utterances")
    q.add_argument("--file", metavar="FILE", help="a routes file (YAML or JSON, see docs)")
    q.add_argument("--threshold", type=_threshold, help="the route's own threshold")
    q.add_argument("--description", help="the route's description")
    q.add_argument("--replace", action="store_true", help="replace routes that exist")
    _add_store(q)
    _add_json(q, "print what changed as JSON")
    _add_quiet(q)
    q.set_defaults(func=cmd_routes_add)

    q = routes.add_parser(
        "delete", help="delete routes", description="Delete routes (none if one is unknown)."
    )
    q.add_argument("names", nargs="+", metavar="NAME", help="route names")
    _add_store(q)
    _add_json(q, "print what was deleted as JSON")
    q.set_defaults(func=cmd_routes_delete)

    p = sub.add_parser(
        "negatives",
        help="list, add or delete negative examples",
        description="Manage negative examples: texts that must route nowhere.",
    )
    negatives = p.add_subparsers(dest="negatives_command", metavar="ACTION", required=True)
    for action, func, help_text in (
        ("list", cmd_negatives_list, "list negative examples"),
        ("add", cmd_negatives_add, "add negative examples"),
        ("delete", cmd_negatives_delete, "delete negative examples"),
    ):
        q = negatives.add_parser(action, help=help_text, description=help_text.capitalize() + ".")
        if action != "list":
            q.add_argument("texts", nargs="+", metavar="TEXT", help="negative examples")
        _add_store(q)
        _add_json(q, "print the result as JSON")
        q.set_defaults(func=func)

    p = sub.add_parser(
        "import",
        help="build routes from labelled data",
        description=(
            'Build routes from JSON lines {"text": ..., "label": ...} (label null rows '
            "are out-of-scope examples and make no route), or apply a .yaml/.yml/.json "
            "routes file. The whole file is checked first: a malformed line is reported "
            "with its number and nothing is written."
        ),
    )
    p.add_argument("file", metavar="FILE", help="TRAIN.jsonl, or a routes file")
    p.add_argument("--replace", action="store_true", help="replace routes that exist")
    _add_store(p)
    _add_json(p, "print a JSON summary")
    _add_quiet(p)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser(
        "export",
        help="write routes as a routes file",
        description="Write the store's routes as a routes file that 'routes add --file', "
        "'import' and 'serve --routes' read.",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    p.add_argument("--format", choices=("yaml", "json"), help="default: by suffix, else yaml")
    _add_store(p)
    _add_json(p, "same as --format json")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "fit",
        help="fit thresholds on labelled data",
        description="Fit the router on labelled JSON lines; the fitted state is saved in "
        "the store. Nothing is written if the file is malformed.",
    )
    p.add_argument("file", metavar="DATA.jsonl", help="labelled rows (label null = out of scope)")
    p.add_argument(
        "--objective",
        choices=("auto", "balanced", "accuracy", "macro_f1", "oos_recall"),
        default="auto",
        help="what to maximise: auto (default: balanced when some labels are null, else "
        "accuracy), balanced (0.8 x in-scope accuracy + 0.2 x out-of-scope recall), "
        "accuracy counting out-of-scope rows, macro-F1, or in-scope accuracy at "
        "--target-oos-recall",
    )
    p.add_argument(
        "--target-oos-recall",
        type=float,
        default=0.9,
        metavar="R",
        help="out-of-scope recall to reach with --objective oos_recall (default 0.9)",
    )
    p.add_argument(
        "--regularization",
        type=float,
        nargs="+",
        metavar="C",
        help="the head's inverse L2 strength; several are chosen among on held-out folds "
        "(default: 10 30; one value fits faster)",
    )
    _add_store(p)
    _add_json(p, "print the fit report as JSON")
    _add_quiet(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser(
        "eval",
        help="evaluate on labelled data",
        description="Evaluate the store's router on labelled JSON lines.",
    )
    p.add_argument("file", metavar="DATA.jsonl", help="labelled rows (label null = out of scope)")
    p.add_argument("--plot", metavar="OUT.png", help="also write a PNG report")
    p.add_argument(
        "--fail-under",
        metavar="METRIC=VALUE",
        type=_bar,
        action="append",
        help=(
            f"exit with {EXIT_BELOW_BAR} when METRIC ({', '.join(_BAR_METRICS)}) is under "
            "VALUE, or cannot be measured on the data; repeatable (a gate in CI)"
        ),
    )
    _add_store(p)
    _add_json(p, "print the evaluation report as JSON")
    _add_quiet(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "serve",
        help="run the HTTP service",
        description=(
            "Serve the store over HTTP (FastAPI + uvicorn). Route changes need "
            "'Authorization: Bearer $SYNAPTOROUTE_API_KEY' when that variable is set; "
            "without it the service only starts on a loopback host or with --read-only."
        ),
    )
    _add_store(p, reencode=False)
    p.add_argument("--routes", metavar="FILE", help="routes file applied to the store at start")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port",
        type=whole_number,
        default=None,
        help=f"port (default ${PORT_ENV} or 8000; 0 picks one)",
    )
    p.add_argument("--read-only", action="store_true", help="refuse every route change (403)")
    p.add_argument(
        "--no-console",
        dest="console",
        action="store_false",
        help="do not serve the browser console at /console",
    )
    p.add_argument(
        "--max-body-bytes",
        type=whole_number,
        default=1 << 20,
        help="413 above this (default 1 MiB)",
    )
    p.add_argument("--max-queue", type=whole_number, default=10_000, help="queued texts before 503")
    p.add_argument(
        "--request-timeout", type=float, default=30.0, help="seconds a query may wait (503 after)"
    )
    p.add_argument(
        "--drain-timeout", type=float, default=30.0, help="seconds SIGTERM waits for requests"
    )
    p.add_argument(
        "--threads",
        type=whole_number,
        help="ONNX Runtime threads (default: $SYNAPTOROUTE_THREADS, else the CPU quota)",
    )
    p.add_argument(
        "--spin",
        action="store_true",
        help="let ONNX Runtime threads spin between batches (lower latency on an idle machine, "
        "less CPU for HTTP)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="log level (default info)",
    )
    p.add_argument("--access-log", action="store_true", help="log every request")
    add_limit_arguments(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "healthcheck",
        help="check that a running service is ready",
        description="Exit 0 if the service on HOST:PORT answers GET /readyz with 200, else 1 "
        "(the Docker image's HEALTHCHECK; it follows $SYNAPTOROUTE_PORT like 'serve').",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to ask (default 127.0.0.1)")
    p.add_argument(
        "--port",
        type=whole_number,
        default=None,
        help=f"port, 1-65535 (default ${PORT_ENV} or 8000)",
    )
    p.add_argument("--timeout", type=_seconds, default=4.0, help="seconds to wait (default 4)")
    p.set_defaults(func=cmd_healthcheck)

    p = sub.add_parser(
        "completion",
        help="print a shell completion script",
        description="Print the completion script for SHELL. Load it with "
        "'source <(synaptoroute completion bash)' (bash, zsh) or "
        "'synaptoroute completion fish | source'.",
    )
    p.add_argument(
        "shell", choices=("bash", "zsh", "fish"), metavar="SHELL", help="bash, zsh or fish"
    )
    p.set_defaults(func=cmd_completion)
    return parser


def _port(value: int | None, *, lowest: int = 0) -> int:
    """``--port`` if given, else ``$SYNAPTOROUTE_PORT``, else 8000.

    Args:
        value: ``--port``.
        lowest: 0 where the port is one to listen on (0: the system picks one), 1
            where it is one to ask (no service listens on port 0).

    Raises:
        BadInput: not a number, or out of lowest-65535 (the socket layer would wrap it
            around to another port).
    """
    if value is not None:
        port, what = value, "--port"
    else:
        if PORT_ENV not in os.environ:
            return DEFAULT_PORT
        text = os.environ[PORT_ENV].strip()
        if not text:  # PORT="$P" with P unset meant 8000, as an empty store meant ./routes.db
            msg = f"{PORT_ENV} is set but empty; give a port, or unset it"
            raise BadInput(msg)
        try:
            port = whole_number(text)  # as --port reads it: not "8_000", other digits
        except ValueError:
            msg = f"{PORT_ENV} must be a port number, got {text!r}"
            raise BadInput(msg) from None
        what = PORT_ENV
    if not lowest <= port <= 65535:
        msg = f"{what} must be a port number ({lowest}-65535), got {port}"
        raise BadInput(msg)
    return port


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, MissingDependencyError):
        return EXIT_MISSING_EXTRA
    bad_input = (
        BadInput,
        InvalidInputError,
        RouteNotFoundError,
        RouteExistsError,
        NotADatabaseError,
        ModelMismatchError,
    )
    if isinstance(exc, bad_input):
        return EXIT_BAD_INPUT
    # Writing the output failed (a stream that cannot encode a character), maybe after
    # the store was written: no bad input, which promises that nothing was written.
    if isinstance(exc, UnicodeError) and not isinstance(exc, UnicodeDecodeError):
        return EXIT_FAILURE
    # pydantic's ValidationError is a ValueError: a value given on the command line.
    if isinstance(exc, ValueError) and not isinstance(exc, SynaptorouteError):
        return EXIT_BAD_INPUT
    return EXIT_FAILURE


#: ``serve``'s options by the settings field each sets (the limits' come from
#: ``limit_flags``); the API key comes from the environment.
_SERVE_FLAGS = {
    "store": "--store",
    "routes_file": "--routes",
    "host": "--host",
    "port": "--port",
    "max_body_bytes": "--max-body-bytes",
    "max_queue_size": "--max-queue",
    "request_timeout": "--request-timeout",
    "drain_timeout": "--drain-timeout",
    "encoder_threads": "--threads",
    "log_level": "--log-level",
    "api_key": "SYNAPTOROUTE_API_KEY",
}


def _message(exc: BaseException, names: Mapping[str, str] | None = None) -> str:
    if isinstance(exc, ValidationError):
        names = names or {}
        parts = []
        for e in exc.errors(include_url=False, include_input=False):
            path = [str(p) for p in e["loc"]]
            if path and path[0] in names:
                path[0] = names[path[0]]
            parts.append(f"{'.'.join(path) or 'value'}: {e['msg']}")
        return "; ".join(parts)
    return str(exc) or type(exc).__name__


def main(argv: Sequence[str] | None = None, *, encoder: EncoderProtocol | None = None) -> int:
    """Run the command line; returns the exit code.

    ``encoder`` replaces the bundled model for the commands that open a store (an
    embedding service, a test double); ``serve`` always builds its own.
    """
    with _escaping_output(), _warnings_as_lines():  # usage errors and --help print too
        args = build_parser().parse_args(argv)
        args.encoder = encoder
        return _run(args)


@contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Print the library's warnings as the CLI prints its errors, one line each
    (``synaptoroute: warning: ...``), not with a source path and a line of code."""

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        print(f"synaptoroute: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


@contextmanager
def _escaping_output() -> Iterator[None]:
    """Write characters stdout or stderr cannot encode (a cp1252 console, a C locale) as
    backslash escapes for the command's length, instead of failing once the store may
    already have been written; each stream's own setting is restored afterwards."""
    restore: list[tuple[Any, str | None]] = []
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is None:
            continue
        errors = getattr(stream, "errors", None)
        try:
            reconfigure(errors="backslashreplace")
        except (OSError, ValueError):  # a closed or detached stream: left as it is
            continue
        restore.append((stream, errors))
    try:
        yield
    finally:
        for stream, errors in restore:
            with suppress(OSError, ValueError):
                stream.reconfigure(errors=errors)


def _run(args: argparse.Namespace) -> int:
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        code = func(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except KeyboardInterrupt:
        print("synaptoroute: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader stopped early (`| head`): quiet, as a shell tool SIGPIPE ends, and
        # stdout goes nowhere so that the interpreter's flush at exit does not fail too.
        with suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        if args.traceback:
            raise
        code = _exit_code(exc)
        kind = "bad input" if code == EXIT_BAD_INPUT else "error"
        print(f"synaptoroute: {kind}: {_message(exc)}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())

"""Routes files: the YAML or JSON document that seeds a store, and its export.

The format (YAML shown; the same keys in JSON)::

    threshold: 0.5            # optional: the router's default threshold
    routes:
      - name: billing
        utterances: ["I need a refund", "Where is my receipt?"]
        description: Payments and refunds   # optional
        threshold: 0.6                      # optional: this route's own threshold
        metadata: {team: payments}          # optional: any JSON object
    negatives: ["tell me a joke"]   # optional: texts that must route nowhere

A bare list of routes is accepted too. Applying a file creates the routes it
names, replaces those that differ from the store, leaves identical ones alone
(nothing is re-encoded), keeps routes the file does not mention, and adds the
negative examples the store lacks.

Why one module over 400 lines: reading (YAML's loader with its bounds, JSON, the
messages naming a field or a line), checking and writing one format belong together:
what export writes, import must read back unchanged.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, field_validator

from .checks import RepeatedKeyError, _empty_to_the_model, reads_nothing_of, unique_keys
from .encoder import EncoderProtocol, check_text
from .exceptions import InvalidInputError, MissingDependencyError, install_hint
from .models import NEGATIVES_ROUTE, OptionalThreshold, Route, clean_utterances
from .router import AdaptiveRouter
from .storage import check_route

__all__ = [
    "ApplyReport",
    "RoutesDocument",
    "apply_routes",
    "check_document",
    "dump_routes",
    "load_routes_file",
    "parse_routes",
    "render_routes",
]

Format = Literal["yaml", "json"]


class RoutesDocument(BaseModel):
    """A parsed routes file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: OptionalThreshold = None
    routes: list[Route] = Field(default_factory=list)
    negatives: list[StrictStr] = Field(default_factory=list)

    @field_validator("negatives")
    @classmethod
    def _clean_negatives(cls, values: list[str]) -> list[str]:
        return clean_utterances(values)


@dataclass
class ApplyReport:
    """What applying a routes file changed."""

    created: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    #: The default threshold the file replaced; ``None``: it was left as it was.
    threshold_before: float | None = None
    negatives_added: list[str] = field(default_factory=list)

    @property
    def threshold_changed(self) -> bool:
        """Whether the file changed the router's default threshold."""
        return self.threshold_before is not None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "created": self.created,
            "replaced": self.replaced,
            "unchanged": self.unchanged,
            "threshold_changed": self.threshold_changed,
            "negatives_added": self.negatives_added,
        }


def _yaml() -> Any:
    try:
        import yaml
    except ImportError as exc:
        msg = f"YAML routes files need PyYAML: {install_hint('cli')}"
        raise MissingDependencyError(msg) from exc
    return yaml


#: Levels a YAML routes file may nest: PyYAML's own parser stopped near 350 (Python's
#: recursion limit), libyaml's has no such bound, and a document's validation then
#: failed in different words on different machines. Metadata holds 32 at most.
MAX_YAML_DEPTH = 256

#: Values (YAML nodes) the aliases of one routes file may stand for, all together: a
#: few lines of nested aliases (a "billion laughs") expand to billions, which every
#: later walk of the document (the metadata's checks) would visit.
MAX_ALIAS_NODES = 100_000


def _node_size(node: Any, sizes: dict[int, int]) -> int:
    """How many nodes ``node`` stands for once its aliases are expanded (memoised by
    node: an anchored node is shared, so each is sized once)."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    value = node.value
    size = 1
    if isinstance(value, list):
        size += sum(_node_size(part, sizes) for item in value for part in _parts(item))
    sizes[id(node)] = size
    return size


def _check_aliases(root: Any) -> None:
    """Refuse a composed document whose aliases stand for more than
    :data:`MAX_ALIAS_NODES` values all together (each later occurrence of a node, an
    alias: composers share the anchored node, counts the nodes it expands to), or that
    nests deeper than :data:`MAX_YAML_DEPTH` levels."""
    from yaml.composer import ComposerError

    sizes: dict[int, int] = {}
    seen: set[int] = set()
    expanded = 0
    stack = [(root, 1)]
    while stack:  # a walk in document order, each node's children once
        node, depth = stack.pop()
        if depth > MAX_YAML_DEPTH:
            problem = f"it nests too deeply (more than {MAX_YAML_DEPTH} levels)"
            raise ComposerError(None, None, problem, node.start_mark)
        if id(node) in seen:
            expanded += _node_size(node, sizes)
            if expanded > MAX_ALIAS_NODES:
                problem = (
                    f"the aliases expand to more than {MAX_ALIAS_NODES:,} values (the "
                    "anchored value here is repeated too often: write the values out)"
                )
                raise ComposerError(None, None, problem, node.start_mark)
            continue
        seen.add(id(node))
        if isinstance(node.value, list):
            children = [part for item in node.value for part in _parts(item)]
            stack.extend((child, depth + 1) for child in reversed(children))


def _parts(item: Any) -> tuple[Any, ...]:
    """A collection node's item as nodes: a mapping's (key, value) pair, or one node."""
    return item if isinstance(item, tuple) else (item,)


#: An empty value tagged ``!``, which the two parsers read differently (see
#: :func:`_reads_differently`); a plain scalar ending in " !" matches too (it then
#: takes the slower parser: correct, only slower).
_EMPTY_TAG = re.compile(r"(?:^|[\s\[{,])!(?=[ \t]*(?:$|[,\]}#]))", re.MULTILINE)


def _reads_differently(text: str) -> bool:
    """Whether ``text`` holds what libyaml's parser reads otherwise than PyYAML's (a
    differential fuzz of 745,000 documents found two): an empty value tagged ``!``
    (PyYAML's parser: ``None``; libyaml: ``""``) and a byte-order mark after the
    text's start (PyYAML's keeps it, libyaml drops it)."""
    return "\ufeff" in text[1:] or ("!" in text and _EMPTY_TAG.search(text) is not None)


def _load_yaml(text: str, *, fast: bool = True) -> Any:
    """The YAML document ``text``, parsed by libyaml when PyYAML has it (several times
    faster on a large routes file), else by PyYAML's own parser, then checked
    (:func:`_check_aliases`) and built by the routes loader.

    What libyaml cannot parse is parsed again by PyYAML's parser, which decides: the
    two differ on a few spellings (``{a:[1]}`` is refused by libyaml only) and libyaml
    takes no lone surrogate, so a file that loaded with PyYAML's parser still loads, and
    a refusal keeps PyYAML's wording. The checks and the building run once, after the
    parse: a document they refuse is not parsed twice. ``fast=False`` parses with
    PyYAML's parser alone (``benchmarks/routes_file.py``'s baseline)."""
    yaml = _yaml()
    loader = None
    if fast and hasattr(yaml, "CSafeLoader") and not _reads_differently(text):
        try:
            loader = _yaml_loader(fast=True)(text)
            node = loader.get_single_node()
        except (yaml.YAMLError, UnicodeEncodeError):
            if loader is not None:
                loader.dispose()
            loader = None
    if loader is None:
        loader = _yaml_loader(fast=False)(text)
        node = loader.get_single_node()
    try:
        if node is None:  # an empty document
            return None
        _check_aliases(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


@functools.cache
def _yaml_loader(*, fast: bool) -> Any:
    """PyYAML's safe loader (on libyaml's parser if ``fast``: PyYAML must have it),
    stricter where a routes file would otherwise lose data or
    memory: a key repeated in a mapping is refused (PyYAML keeps the last value),
    aliases (``*name``, merge keys) that expand to more than :data:`MAX_ALIAS_NODES`
    values are refused (a few lines of nested aliases expand to billions), and a value that cannot be built (an
    impossible date, an integer too long to convert) is a YAML error with its line."""
    yaml = _yaml()
    from yaml.constructor import ConstructorError
    from yaml.nodes import MappingNode

    merge = "tag:yaml.org,2002:merge"
    # The constructor (the checks below) is Python either way; only parsing differs.
    base = yaml.CSafeLoader if fast else yaml.SafeLoader

    class RoutesLoader(base):  # type: ignore[misc,valid-type]
        def construct_object(self, node: Any, deep: bool = False) -> Any:
            try:
                return super().construct_object(node, deep=deep)
            except (ValueError, OverflowError) as exc:
                problem = f"cannot read the value {node.value!r}: {exc}"
                if _past_digit_limit(node):
                    # Python's message advises sys.set_int_max_str_digits(), of no use
                    # to a file's author (as for JSON below).
                    problem = "a number too long to read"
                elif len(problem) > 200:
                    problem = f"cannot read the value: {exc}"
                raise ConstructorError(None, None, problem, node.start_mark) from exc

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, MappingNode):
                seen: set[Any] = set()
                for key_node, _ in node.value:
                    if key_node.tag == merge:
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        repeated = key in seen
                    except TypeError:  # unhashable: PyYAML's own check reports it
                        break
                    if repeated:
                        raise ConstructorError(
                            "while constructing a mapping",
                            node.start_mark,
                            f"found key {key!r} more than once in one mapping",
                            key_node.start_mark,
                        )
                    seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return RoutesLoader


def _format_of(path: Path) -> Format:
    return "json" if path.suffix.lower() == ".json" else "yaml"


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        said = f"{where}: {err['msg']}"
        value = err.get("input")
        if err["type"] == "string_type" and isinstance(value, bool | int | float | date):
            # YAML reads yes, no, on, 12 and 2024-01-01 as other things than text: say so
            # (only such short scalars: the inputs are otherwise left out).
            shown = value.isoformat() if isinstance(value, date) else repr(value)
            said += f" (read as {type(value).__name__} {shown}: put the text in quotes)"
        elif err["type"] == "string_type" and isinstance(value, bytes):
            said += " (read as binary data, a !!binary value: write the text itself)"
        parts.append(said)
    return "; ".join(parts)


def _past_digit_limit(node: Any) -> bool:
    """Whether ``node`` is a YAML integer longer than Python reads (4,300 digits by default)."""
    limit = getattr(sys, "get_int_max_str_digits", lambda: 0)()
    value = getattr(node, "value", None)
    return (
        getattr(node, "tag", None) == "tag:yaml.org,2002:int"
        and isinstance(value, str)
        and limit > 0
        and sum(c.isdigit() for c in value) > limit
    )


def parse_routes(text: str, fmt: Format = "yaml", *, source: str = "<routes>") -> RoutesDocument:
    """Parse and validate a routes document.

    Raises:
        InvalidInputError: the text is not valid YAML/JSON, or not a routes document
            (the message names the offending field).
    """
    try:
        if fmt == "json":
            data = json.loads(text, object_pairs_hook=unique_keys)
        else:
            data = _load_yaml(text)
    except RecursionError as exc:
        msg = f"{source}: not valid {fmt.upper()}: it nests too deeply"
        raise InvalidInputError(msg) from exc
    except ValueError as exc:
        if fmt != "json":  # the loader turns a value's error into a YAMLError with its line
            raise
        # Else an integer past Python's digit limit (4,300 by default): its message
        # advises sys.set_int_max_str_digits(), of no use to a file's author.
        said = isinstance(exc, json.JSONDecodeError | RepeatedKeyError)
        reason = str(exc) if said else "a number too long to read"
        msg = f"{source}: not valid JSON: {reason}"
        raise InvalidInputError(msg) from exc
    except Exception as exc:
        yaml = _yaml()
        if isinstance(exc, yaml.YAMLError):
            # One line (errors are one line on stderr): the problem and where, not
            # PyYAML's excerpt of the file with a caret under it.
            problem = getattr(exc, "problem", None) or str(exc)
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            msg = f"{source}: not valid YAML: {' '.join(str(problem).split())}{where}"
            raise InvalidInputError(msg) from exc
        raise
    if data is None:
        data = {}
    if isinstance(data, list):
        data = {"routes": data}
    try:
        doc = RoutesDocument.model_validate(data)
    except ValidationError as exc:
        msg = f"{source}: {_describe(exc)}"
        raise InvalidInputError(msg) from None
    check_document(doc, source)
    return doc


def refuse_unread(encoder: EncoderProtocol, texts: Iterable[tuple[str, str]]) -> None:
    """Refuse a text ``encoder`` reads nothing of, named by ``what`` of each ``(what,
    text)``. Run before a store is opened (or made): the router refuses such a text
    too, but after the store was created.

    Raises:
        InvalidInputError: the first such text.
    """
    reads_nothing = reads_nothing_of(encoder)
    for what, text in texts:
        if reads_nothing(text):
            raise _empty_to_the_model(what, text)


def check_readable(doc: RoutesDocument, source: str, encoder: EncoderProtocol) -> None:
    """:func:`refuse_unread` for each utterance and negative example of ``doc``, named
    by its field in ``source`` (as :func:`check_document` names them).

    Raises:
        InvalidInputError: the first text ``encoder`` reads nothing of.
    """
    refuse_unread(
        encoder,
        (
            *(
                (f"{source}: routes.{i} ({route.name!r}).utterances.{j}", text)
                for i, route in enumerate(doc.routes)
                for j, text in enumerate(route.utterances)
            ),
            *((f"{source}: negatives.{i}", text) for i, text in enumerate(doc.negatives)),
        ),
    )


def check_document(doc: RoutesDocument, source: str) -> None:
    """Refuse, naming ``source`` and the field, what applying ``doc`` would refuse:
    the reserved name of the negative examples, a name twice, a value the store
    cannot take. Run before any store is opened, so a refusal writes nothing.

    Raises:
        InvalidInputError: the first such problem.
    """
    names = [r.name for r in doc.routes]
    if NEGATIVES_ROUTE in names:
        msg = (
            f"{source}: route name {NEGATIVES_ROUTE!r} is reserved; texts that must route "
            "nowhere are negative examples ('negatives' in a routes file)"
        )
        raise InvalidInputError(msg)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        msg = f"{source}: route {dupes[0]!r} appears more than once"
        raise InvalidInputError(msg)
    # What the store would refuse (lone surrogates, metadata it cannot read back) is
    # refused here, naming the field, not later when the service is already starting.
    checks: list[tuple[str, Callable[[Any], object], Any]] = [
        *((f"routes.{i} ({r.name!r})", check_route, r) for i, r in enumerate(doc.routes)),
        *((f"negatives.{i}", check_text, t) for i, t in enumerate(doc.negatives)),
    ]
    for field_name, check, value in checks:
        try:
            check(value)
        except InvalidInputError as exc:
            msg = f"{source}: {field_name}: {exc}"
            raise InvalidInputError(msg) from None


def load_routes_file(path: str | Path) -> RoutesDocument:
    """Read a ``.yaml``/``.yml`` or ``.json`` routes file.

    Raises:
        InvalidInputError: unreadable, malformed or invalid file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # Notepad's BOM is no JSON error
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"cannot read routes file {str(path)!r}: {exc}"
        raise InvalidInputError(msg) from exc
    return parse_routes(text, _format_of(path), source=str(path))


def apply_routes(router: AdaptiveRouter, doc: RoutesDocument) -> ApplyReport:
    """Create or replace the document's routes and add its negative examples in
    ``router``: one encoder call, one storage transaction.

    Validation happens before anything is written; routes identical to the stored
    ones are skipped, and a replaced route re-encodes only its new utterances.
    Blocking: call it from a thread inside an event loop.
    """
    report = ApplyReport()
    changed: list[Route] = []
    for route in doc.routes:
        if route.name not in router:
            report.created.append(route.name)
            changed.append(route)
        elif router.get_route(route.name) != route:
            report.replaced.append(route.name)
            changed.append(route)
        else:
            report.unchanged.append(route.name)
    # The negative examples are the reserved route: merged with the held ones under
    # the router's lock and written with the others.
    if changed or doc.negatives:
        report.negatives_added = router.add_routes(changed, replace=True, negatives=doc.negatives)
    if doc.threshold is not None and doc.threshold != router.threshold:
        report.threshold_before = router.threshold
        router.threshold = doc.threshold
    return report


def dump_routes(router: AdaptiveRouter, routes: Sequence[Route] | None = None) -> dict[str, Any]:
    """The router's routes (or ``routes``) as a routes document that :func:`parse_routes` reads.

    The whole router's document also carries its negative examples, if any.
    """
    out = []
    for route in router.list_routes() if routes is None else routes:
        item: dict[str, Any] = {"name": route.name, "utterances": list(route.utterances)}
        if route.description is not None:
            item["description"] = route.description
        if route.threshold is not None:
            item["threshold"] = route.threshold
        if route.metadata:
            item["metadata"] = route.metadata
        out.append(item)
    doc: dict[str, Any] = {"threshold": router.threshold, "routes": out}
    if routes is None and router.negatives:
        doc["negatives"] = router.negatives
    return doc


# YAML 1.1 line breaks besides "\n". PyYAML writes them raw in a plain or single-quoted
# scalar, and its reader folds U+0085 there into a space (U+2028/U+2029 survive PyYAML
# but not every YAML reader): only a double-quoted scalar escapes them (\N, \L, \P).
_YAML_BREAKS = frozenset("\x85\u2028\u2029")


@functools.cache
def _yaml_dumper() -> Any:
    """PyYAML's safe dumper, writing strings with a YAML-only line break double-quoted."""
    yaml = _yaml()

    def represent_str(dumper: Any, value: str) -> Any:
        if _YAML_BREAKS.isdisjoint(value):
            # The default keeps ordinary text readable (plain, or quoted where it must be).
            return dumper.represent_str(value)
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"')

    class RoutesDumper(yaml.SafeDumper):  # type: ignore[misc,name-defined]
        pass

    RoutesDumper.add_representer(str, represent_str)
    return RoutesDumper


def render_routes(doc: dict[str, Any], fmt: Format) -> str:
    """Serialise a dumped routes document as YAML or JSON text.

    Every string reads back exactly, whichever characters it holds.
    """
    if fmt == "json":
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    text: str = _yaml().dump(doc, Dumper=_yaml_dumper(), sort_keys=False, allow_unicode=True)
    return text

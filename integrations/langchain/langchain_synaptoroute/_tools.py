"""LangChain tools as routes: their example texts, and turning a routed text into arguments.

Shared by :meth:`SynaptorouteRouter.from_tools` and the tool-selector middleware, so
that a tool is described the same way wherever it is routed to.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import typing
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from langchain_core.runnables import Runnable, RunnableLambda
from langchain_core.tools import BaseTool
from pydantic import BaseModel

from synaptoroute import InvalidInputError

__all__ = [
    "ArgsFromText",
    "check_tool_keys",
    "tool_fields",
    "tool_runnable",
    "tool_utterances",
]

#: Turns the routed text into the chosen tool's arguments: ``(text, tool) -> dict``.
ArgsFromText = Callable[[str, BaseTool], dict[str, Any]]


def tool_utterances(tool: BaseTool, extra: Sequence[str] = ()) -> list[str]:
    """The example texts of ``tool``'s route: its name and description, then ``extra``
    (see :func:`named_utterances`)."""
    return named_utterances(tool.name, tool.description or "", extra, what="tool")


def named_utterances(
    name: str, description: str, extra: Sequence[str] = (), *, what: str = "tool"
) -> list[str]:
    """The example texts of a route for something named ``name`` (a tool, a decision
    label): its name and description, then ``extra``.

    The name is spelled as words (``get_weather`` -> ``get weather``) and joined with
    the description, so a query is compared with what the thing is for.

    Raises:
        InvalidInputError: ``extra`` is one str instead of a list of them, or there is
            nothing to route by (a blank name, or one of only ``_`` and ``-``, no
            description and no ``extra``); the message names ``what`` it is.
    """
    if isinstance(extra, str):
        msg = f"{what} {name!r}: pass a list of utterances, not one str"
        raise InvalidInputError(msg)
    if not name.strip():
        msg = f"{what} name {name!r} is blank: a route needs a name"
        raise InvalidInputError(msg)
    words = " ".join(name.replace("_", " ").replace("-", " ").split())
    head = ": ".join(part for part in (words, " ".join(description.split())) if part)
    texts = [head] if head else []
    texts += [text for text in extra if text != head]
    if not texts:
        msg = (
            f"{what} {name!r} has nothing to route by (no words in its name, no "
            "description): give it a description or utterances"
        )
        raise InvalidInputError(msg)
    return texts


def check_tool_keys(
    names: Sequence[str],
    given: Mapping[str, Any] | None,
    what: str,
    absent: str = "do not exist",
    hint: str = "",
) -> None:
    """Fail on a duplicate tool name, or a key of ``given`` that names no tool.

    Args:
        names: the tools' names.
        given: a per-tool setting (``utterances``, ``args_from_text``), or ``None``.
        what: the setting's name, for the message.
        absent: what the message says of the unknown names, and ``hint`` what it adds.

    Raises:
        InvalidInputError: names repeat, or ``given`` has a key that is no tool's name
            (a typo would otherwise be ignored silently).
    """
    duplicates = sorted(name for name, n in Counter(names).items() if n > 1)
    if duplicates:
        msg = f"several tools are named {duplicates}; give each tool a distinct name"
        raise InvalidInputError(msg)
    unknown = sorted(key for key in (given or {}) if key not in names)
    if unknown:
        msg = f"{what} names tools that {absent}: {unknown} (tools: {sorted(names)}){hint}"
        raise InvalidInputError(msg)


def check_offered(names: Sequence[str], given: Sequence[str] | None, what: str) -> None:
    """:func:`check_tool_keys` for a middleware setting naming tools a model call must offer.

    The tools may exist: a middleware listed earlier may have filtered them out, and the
    message says so.
    """
    check_tool_keys(
        names,
        dict.fromkeys(given or ()),
        what,
        absent="this model call does not offer",
        hint="; a middleware listed before this one may have removed them",
    )


def tool_fields(tool: BaseTool) -> dict[str, Any]:
    """The JSON-schema properties of the arguments a model would call ``tool`` with."""
    schema = tool.tool_call_schema
    if isinstance(schema, dict):
        document = schema
    elif issubclass(schema, BaseModel):
        document = schema.model_json_schema()
    else:  # a pydantic v1 model
        document = schema.schema()
    properties = document.get("properties") or {}
    return dict(properties)


def _injected_required(tool: BaseTool) -> list[str]:
    """The required arguments of ``tool`` that a model does not give (they are left
    out of ``tool_call_schema``): LangChain injects them when an agent calls the tool
    (``runtime: ToolRuntime``, ``InjectedToolCallId``, ``InjectedState``)."""
    if isinstance(tool.args_schema, dict):
        # A JSON schema (MCP adapters' tools): its input model is a generated one with
        # a single "root" field. What an agent injects is then read from the
        # function's signature, as LangGraph's ToolNode reads it.
        return _unnamed_parameters(tool)
    schema = tool.get_input_schema()
    fields = getattr(schema, "model_fields", None)
    if not isinstance(fields, Mapping):  # a pydantic v1 model: no check
        return []
    given = tool_fields(tool)
    return [name for name, f in fields.items() if f.is_required() and name not in given]


def _unnamed_parameters(tool: BaseTool) -> list[str]:
    """The required parameters of ``tool``'s function that an agent injects, read as
    LangGraph's ``ToolNode`` reads them: annotated as injected (``ToolRuntime``,
    ``InjectedToolCallId``, ``InjectedState``...) or named ``runtime`` (``[]`` for a
    tool without a function of its own)."""
    function = getattr(tool, "func", None) or getattr(tool, "coroutine", None)
    if not callable(function):
        return []
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a builtin or C function: nothing to read
        return []
    inner = function
    while isinstance(inner, functools.partial):  # its signature is the partial's
        inner = inner.func
    try:
        hints = typing.get_type_hints(inner, include_extras=True)
    except Exception:  # one annotation that does not resolve: each on its own
        hints = _hints_one_by_one(inner)
    loose = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [
        p.name
        for p in parameters
        if p.default is inspect.Parameter.empty
        and p.kind not in loose
        and (p.name == "runtime" or _injected_type(hints.get(p.name, p.annotation)))
    ]


def _hints_one_by_one(function: Any) -> dict[str, Any]:
    """``function``'s annotations, each string one (``from __future__ import
    annotations``) evaluated on its own in the function's module; one that does not
    resolve stays a string (a name imported only for type checkers)."""
    names = getattr(function, "__globals__", {})
    hints: dict[str, Any] = {}
    for name, annotation in getattr(function, "__annotations__", {}).items():
        if isinstance(annotation, str):
            # As typing.get_type_hints evaluates it: the function's own module's code.
            with contextlib.suppress(Exception):  # left as written
                annotation = eval(annotation, names)
        hints[name] = annotation
    return hints


def _injected_type(annotation: Any) -> bool:
    """Whether LangChain injects an argument of this annotation (its own test)."""
    try:
        from langchain_core.tools.base import _is_injected_arg_type
    except ImportError:  # a langchain-core without it: nothing is known to be injected
        return False
    try:
        return bool(_is_injected_arg_type(annotation))
    except Exception:  # an annotation it cannot read
        return False


def _takes_text(spec: Mapping[str, Any]) -> bool:
    """Whether a JSON-schema property accepts a string (``str``, ``Optional[str]``)."""
    if spec.get("type") == "string":
        return True
    options = spec.get("anyOf") or spec.get("oneOf") or ()
    return any(isinstance(o, Mapping) and o.get("type") == "string" for o in options)


def _described(spec: Mapping[str, Any]) -> str:
    options = spec.get("anyOf") or spec.get("oneOf")
    if "type" not in spec and options:
        return " | ".join(str(o.get("type", "any")) for o in options if isinstance(o, Mapping))
    return str(spec.get("type", "any"))


def _single_text_field(tool: BaseTool) -> Callable[[str], dict[str, Any]]:
    """The automatic conversion: ``{field: text}`` for one string field, ``{}`` for none.

    Raises:
        InvalidInputError: the schema has another shape; names the tool and its fields.
    """
    fields = tool_fields(tool)
    if not fields:
        return lambda _text: {}
    if len(fields) == 1:
        (field, spec), *_ = fields.items()
        if _takes_text(spec):
            return lambda text: {field: text}
    described = ", ".join(f"{name}: {_described(spec)}" for name, spec in fields.items())
    msg = (
        f"tool {tool.name!r} takes ({described}), not one text; pass "
        "args_from_text= (a function (text, tool) -> dict of arguments, or a dict of "
        "them by tool name) so the routed text becomes its arguments"
    )
    raise InvalidInputError(msg)


def tool_runnable(
    tool: BaseTool, read: Callable[[Any], str], convert: ArgsFromText | None
) -> Runnable[Any, Any]:
    """A Runnable that reads the text of its input and calls ``tool`` with arguments from it.

    Args:
        tool: the tool to call.
        read: returns the routed text of an input.
        convert: ``(text, tool) -> arguments``; default the automatic conversion.

    Raises:
        InvalidInputError: no ``convert`` and the tool does not take one text.
    """
    injected = _injected_required(tool)
    if injected:
        msg = (
            f"tool {tool.name!r} needs arguments an agent injects ({', '.join(injected)}; "
            "e.g. a ToolRuntime or an InjectedToolCallId), which a routed text cannot "
            "supply, so every call would fail; route to a Runnable that calls it with "
            "them, or give them defaults"
        )
        raise InvalidInputError(msg)
    auto = _single_text_field(tool) if convert is None else None

    def arguments(value: Any) -> dict[str, Any]:
        text = read(value)
        args = auto(text) if auto is not None else convert(text, tool)  # type: ignore[misc]
        if not isinstance(args, dict):
            msg = f"args_from_text must return a dict for tool {tool.name!r}, got {args!r}"
            raise TypeError(msg)
        return args

    return RunnableLambda(arguments, name=f"{tool.name}_arguments") | tool

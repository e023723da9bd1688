"""Route names in URL paths, matched by each route itself, not by a process-wide table.

A route name may contain ``/`` and any non-blank character, so ``/routes/a/b`` names
the route ``a/b``; ``<name>/utterances`` and ``<name>/threshold`` are sub-resources, so
a name may not end in either (:func:`_check_name`). A path declares a route name with
Starlette's built-in ``path`` convertor (``/routes/{name:path}/utterances``) and its
router takes :class:`RouteNameRoute` as ``route_class``: the route recompiles its own
``path_regex``, ``path_format`` and ``param_convertors`` with the two convertors below
and matches requests on them. Nothing is registered in Starlette's ``CONVERTOR_TYPES``,
which every application in the process shares. :data:`RouteName` is the endpoints'
annotation of such a parameter, which OpenAPI documents as ``/routes/{name}``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from re import Pattern
from typing import Annotated, Any
from urllib.parse import unquote_to_bytes

from fastapi import Path
from fastapi.routing import APIRoute
from starlette.convertors import Convertor, PathConvertor
from starlette.routing import Match, Route, compile_path
from starlette.types import Scope

from ..exceptions import InvalidInputError
from .schemas import NAME_PATTERN

__all__ = ["RouteName", "RouteNameRoute"]

#: A route name in the URL: not empty, no surrounding whitespace.
RouteName = Annotated[str, Path(pattern=NAME_PATTERN, description="The route's name.")]


#: Route names in paths may contain "/"; the sub-resources "/utterances" and
#: "/threshold" keep their meaning, so a name may not end in either.
_SUB_RESOURCES = ("utterances", "threshold")


class _RouteNameConvertor(Convertor[str]):
    """A route name in front of a sub-resource: one or more characters, ``/`` included."""

    regex = r"[\s\S]+"  # any character, newlines included (names are any non-blank text)

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


class _RoutePathConvertor(_RouteNameConvertor):
    """A route name that is the whole rest of the path: never ``<name>/<sub-resource>``,
    so an undeclared method on a sub-resource is a 405, not a route named ``x/threshold``."""

    regex = rf"(?![\s\S]*/(?:{'|'.join(_SUB_RESOURCES)})\Z)[\s\S]+"


_IN_FRONT = _RouteNameConvertor()
_TO_THE_END = _RoutePathConvertor()


def _compile(path: str) -> tuple[Pattern[str], str, dict[str, Convertor[Any]]]:
    """Starlette's compilation of ``path``, with each ``path`` parameter a route name."""
    regex, path_format, convertors = compile_path(path)
    pattern = regex.pattern
    for param, convertor in convertors.items():
        if not isinstance(convertor, PathConvertor):
            continue
        ours = _TO_THE_END if path_format.endswith(f"{{{param}}}") else _IN_FRONT
        group = f"(?P<{param}>{convertor.regex})"
        if group not in pattern:  # Starlette changed how it compiles: fail, never guess
            msg = f"cannot find the parameter {param!r} in Starlette's pattern of {path!r}"
            raise RuntimeError(msg)
        pattern = pattern.replace(group, f"(?P<{param}>{ours.regex})")
        convertors[param] = ours
    return re.compile(pattern, regex.flags), path_format, convertors


class RouteNameRoute(APIRoute):
    """An endpoint whose ``{...:path}`` parameters are route names.

    Its router must be included without a prefix of its own (its ``APIRouter`` may
    have one): newer FastAPI adds an inclusion's prefix when requests arrive, and
    this route matches on the pattern it compiled from its own path.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.path_regex, self.path_format, self.param_convertors = _compile(self.path)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        # Newer FastAPI compiles an included route's path again, with Starlette's own
        # convertors, and matches on that copy; this route's pattern is the one to use.
        match, child_scope = Route.matches(self, scope)
        if match is not Match.NONE:
            child_scope["route"] = self
            if "\ufffd" in scope["path"]:
                self._keep_invalid_bytes(scope, child_scope)
        return match, child_scope

    def _keep_invalid_bytes(self, scope: Scope, child_scope: Scope) -> None:
        # The server decodes the path's percent-escapes with errors="replace", so
        # /routes/%FF and /routes/%FE both name the route "\ufffd". The names are
        # taken again from the raw path with the invalid bytes kept as lone
        # surrogates, which _check_name refuses (422) and no stored route can match.
        raw = scope.get("raw_path")
        if not isinstance(raw, bytes):
            return
        path = unquote_to_bytes(raw.split(b"?", 1)[0]).decode("utf-8", "surrogateescape")
        path = within_root(path, scope.get("root_path", ""))
        found = self.path_regex.match(path)
        if found is None or path == scope["path"]:
            return
        params = dict(child_scope.get("path_params", {}))
        for key, value in found.groupdict().items():
            params[key] = self.param_convertors[key].convert(value)
        child_scope["path_params"] = params


def within_root(path: str, root: str) -> str:
    """``path`` inside this app: without the ``root`` (``scope["root_path"]``) that a
    mount in a parent app or uvicorn's ``--root-path`` leaves in front of it."""
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


def _check_name(name: str) -> str:
    if not name.strip() or name != name.strip():
        msg = "route name must be non-empty and without surrounding whitespace"
        raise InvalidInputError(msg)
    if name.rsplit("/", 1)[-1] in _SUB_RESOURCES and "/" in name:
        msg = f"a route name may not end in /{' or /'.join(_SUB_RESOURCES)} (sub-resources)"
        raise InvalidInputError(msg)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        msg = "route name must be valid Unicode"
        raise InvalidInputError(msg) from None
    return name

"""``google.api.http`` path templates, compiled once into a route table.

Template syntax (google/api/http.proto)::

    Template = "/" Segments [ Verb ] ;   Segment = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;   Verb = ":" LITERAL ;

Matching is done on the raw (still percent-encoded) path, so an encoded ``/``
inside a variable stays inside it. Literal segments win over variables
(``/v1/files/usage`` before ``/v1/files/{id}``), and a route with a custom verb is
tried before the same path without one (``/v1/generations/{id}:watch`` before
``/v1/generations/{id}``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Generic, TypeVar
from urllib.parse import unquote

T = TypeVar("T")

_LITERAL = 0
_WILDCARD = 1
_DEEP_WILDCARD = 2


class TemplateError(ValueError):
    """A ``google.api.http`` path that does not follow the template syntax."""


@dataclass(frozen=True, slots=True)
class Variable:
    field_path: tuple[str, ...]
    # index of the variable's first segment and how many segments it spans (-1: ``**``, to the end)
    start: int
    length: int

    @property
    def parameter_name(self) -> str:
        return "_".join(self.field_path)


@dataclass(frozen=True, slots=True)
class PathTemplate:
    template: str
    segments: tuple[str, ...]
    variables: tuple[Variable, ...]
    verb: str

    @property
    def is_literal(self) -> bool:
        return not self.variables and all(segment not in ("*", "**") for segment in self.segments)

    @property
    def openapi_path(self) -> str:
        """The template in OpenAPI's syntax: ``/v1/files/{id}/content``, ``/v1/x/{a_b}:verb``.

        A nested field path is joined with ``_``: tools read ``{a.b}`` as attribute access."""
        parts = list(self.segments)
        for variable in sorted(self.variables, key=lambda v: v.start, reverse=True):
            end = len(parts) if variable.length < 0 else variable.start + variable.length
            parts[variable.start : end] = ["{" + variable.parameter_name + "}"]
        return "/" + "/".join(parts) + (f":{self.verb}" if self.verb else "")

    def precedence(self) -> tuple[tuple[int, ...], int]:
        ranks = tuple(
            _DEEP_WILDCARD if segment == "**" else _WILDCARD if segment == "*" else _LITERAL
            for segment in self.segments
        )
        return ranks, 0 if self.verb else 1

    def regex(self) -> re.Pattern[str]:
        pieces = [
            ".+" if segment == "**" else "[^/]+" if segment == "*" else re.escape(segment)
            for segment in self.segments
        ]
        for variable in sorted(self.variables, key=lambda v: v.start, reverse=True):
            end = len(pieces) if variable.length < 0 else variable.start + variable.length
            pieces[variable.start : end] = ["(" + "/".join(pieces[variable.start : end]) + ")"]
        verb = re.escape(":" + self.verb) if self.verb else ""
        return re.compile("/" + "/".join(pieces) + verb)


def parse_template(template: str) -> PathTemplate:
    if not template.startswith("/"):
        raise TemplateError(f"{template!r}: a path template starts with '/'")
    body, verb = _split_verb(template[1:])
    segments: list[str] = []
    variables: list[Variable] = []
    for part in _split_top_level(body):
        if part.startswith("{"):
            if not part.endswith("}"):
                raise TemplateError(f"{template!r}: unclosed variable {part!r}")
            name, _, pattern = part[1:-1].partition("=")
            sub_segments = pattern.split("/") if pattern else ["*"]
            if not name or any(not piece.isidentifier() for piece in name.split(".")):
                raise TemplateError(f"{template!r}: bad variable name {name!r}")
            length = -1 if "**" in sub_segments else len(sub_segments)
            variables.append(Variable(tuple(name.split(".")), len(segments), length))
            segments.extend(sub_segments)
        elif not part or "{" in part or "}" in part:
            raise TemplateError(f"{template!r}: bad segment {part!r}")
        else:
            segments.append(part)
    if "**" in segments[:-1]:
        raise TemplateError(f"{template!r}: '**' may only be the last segment")
    return PathTemplate(template, tuple(segments), tuple(variables), verb)


def _split_verb(body: str) -> tuple[str, str]:
    depth, colon, slash = 0, -1, -1
    for index, char in enumerate(body):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif depth == 0 and char == ":":
            colon = index
        elif depth == 0 and char == "/":
            slash = index
    if colon > slash:
        return body[:colon], body[colon + 1 :]
    return body, ""


def _split_top_level(body: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for index, char in enumerate(body):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == "/" and depth == 0:
            parts.append(body[start:index])
            start = index + 1
    parts.append(body[start:])
    return parts


PathParams = list[tuple[tuple[str, ...], str]]


@dataclass(slots=True)
class _Compiled(Generic[T]):
    template: PathTemplate
    pattern: re.Pattern[str]
    target: T


@dataclass(slots=True)
class RouteMatch(Generic[T]):
    target: T
    template: PathTemplate
    params: PathParams


@dataclass(slots=True)
class RouteTable(Generic[T]):
    """HTTP method + raw path -> target, path variables; built once, read on every request."""

    _literal: dict[tuple[str, str], tuple[T, PathTemplate]] = field(default_factory=dict)
    _templated: dict[str, list[_Compiled[T]]] = field(default_factory=dict)
    _methods_by_path: dict[str, list[tuple[str, re.Pattern[str] | None]]] = field(default_factory=dict)

    def add(self, verb: str, template: PathTemplate, target: T) -> None:
        verb = verb.upper()
        if template.is_literal:
            key = (verb, template.openapi_path)
            if key in self._literal:
                raise TemplateError(f"{verb} {template.template} is bound twice")
            self._literal[key] = (target, template)
            self._methods_by_path.setdefault(template.openapi_path, []).append((verb, None))
            return
        routes = self._templated.setdefault(verb, [])
        if any(route.template.openapi_path == template.openapi_path for route in routes):
            raise TemplateError(f"{verb} {template.template} is bound twice")
        routes.append(_Compiled(template, template.regex(), target))
        routes.sort(key=lambda route: route.template.precedence())
        self._methods_by_path.setdefault(template.openapi_path, []).append((verb, template.regex()))

    def match(self, verb: str, raw_path: str) -> RouteMatch[T] | None:
        literal = self._literal.get((verb, raw_path))
        if literal is not None:
            return RouteMatch(literal[0], literal[1], [])
        for route in self._templated.get(verb, ()):
            found = route.pattern.fullmatch(raw_path)
            if found is not None:
                values = found.groups()
                params = [
                    (variable.field_path, unquote(value))
                    for variable, value in zip(route.template.variables, values, strict=True)
                ]
                return RouteMatch(route.target, route.template, params)
        return None

    def allowed_methods(self, raw_path: str) -> list[str]:
        """The methods that would match ``raw_path`` (for 405 and CORS preflight)."""
        allowed: list[str] = []
        for path, bindings in self._methods_by_path.items():
            for verb, pattern in bindings:
                if (pattern is None and path == raw_path) or (
                    pattern is not None and pattern.fullmatch(raw_path)
                ):
                    allowed.append(verb)
        return sorted(set(allowed))

"""Request messages checked against their descriptors before any handler runs.

Every field of a request message is checked, nested messages, repeated fields and map
keys and values included, by a walk planned once per message type (a type with nothing
to check costs nothing per call). The rules, from the field's type and its
``(stylestudio.common.v1.input)`` option (protos/stylestudio/common/v1/input.proto):

- strings hold no control character (Unicode Cc: NUL, C0, DEL, C1); ``multiline``
  allows tab, line feed and carriage return; ``raw_text`` opts the field out (text the
  handler cleans itself, such as an uploaded file's name);
- an enum holds one of its declared numbers (proto3 keeps whatever number it is sent);
- integers stay within the field's ``min``/``max``; 64-bit integers that declare no
  bound stay within +-(2^53 - 1), so JSON clients read them exactly and no sum of them
  overflows PostgreSQL's bigint;
- floats are finite; Timestamps and Durations are within the range their types document;
- messages nest at most ``MAX_DEPTH`` levels (protobuf refuses to decode deeper ones).

A refusal is a ``ValidationError`` naming the field by its JSON path
(``parameters.numImages``, ``requests[1].prompt``, ``metadata["source"]``) and quoting
nothing of the value. The kit's server interceptor applies it to every request message
(``checking``), client-streamed ones one by one; the gateway applies it to what it built
from JSON (``check``), so a bad request is refused before any call.
"""

from __future__ import annotations

import json
import logging
import math
import operator
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import descriptor, descriptor_pool, message

from kit.errors import ValidationError, excerpt
from kit.logs import describe_error
from stylestudio.common.v1 import input_pb2

log = logging.getLogger("stylestudio.rpc")

# Nesting levels of messages (map entries count, as protobuf's decoder counts them); the
# decoder's own limit is 100, and a deeper message is refused here before it is sent on.
MAX_DEPTH = 64
SAFE_INTEGER = 2**53 - 1
_MAX_PATH_CHARS = 80

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_LINE_BREAKS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# google.protobuf.Timestamp and Duration, as their .proto files document them.
_TIMESTAMP_SECONDS = (-62135596800, 253402300799)
_DURATION_SECONDS = 315576000000
_NANOS = 999999999
_INTEGER_TYPES = frozenset(
    {
        descriptor.FieldDescriptor.TYPE_INT32,
        descriptor.FieldDescriptor.TYPE_SINT32,
        descriptor.FieldDescriptor.TYPE_SFIXED32,
        descriptor.FieldDescriptor.TYPE_UINT32,
        descriptor.FieldDescriptor.TYPE_FIXED32,
        descriptor.FieldDescriptor.TYPE_INT64,
        descriptor.FieldDescriptor.TYPE_SINT64,
        descriptor.FieldDescriptor.TYPE_SFIXED64,
        descriptor.FieldDescriptor.TYPE_UINT64,
        descriptor.FieldDescriptor.TYPE_FIXED64,
    }
)
_64_BIT_TYPES = frozenset(
    {
        descriptor.FieldDescriptor.TYPE_INT64,
        descriptor.FieldDescriptor.TYPE_SINT64,
        descriptor.FieldDescriptor.TYPE_SFIXED64,
        descriptor.FieldDescriptor.TYPE_UINT64,
        descriptor.FieldDescriptor.TYPE_FIXED64,
    }
)
_FLOAT_TYPES = frozenset({descriptor.FieldDescriptor.TYPE_DOUBLE, descriptor.FieldDescriptor.TYPE_FLOAT})
# JSON has no names for these types' own fields: a path goes straight through them.
_JSON_VALUES = frozenset({"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"})

Problem = Callable[[Any], "str | None"]  # a value -> what is wrong with it, or None
Check = Callable[[Any, int], None]  # (message, depth) -> raises _Refused


class _Refused(Exception):
    """A problem found deep in a message; each level it crosses adds its part of the path."""

    def __init__(self, problem: str, segment: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.segments = [segment]

    def at(self, segment: str) -> _Refused:
        self.segments.append(segment)
        return self

    def path(self) -> str:
        path = ""
        for segment in reversed(self.segments):
            if not segment:
                continue
            path += segment if segment.startswith("[") or not path else "." + segment
        if len(path) > _MAX_PATH_CHARS:  # deep nesting: its start and the field itself
            path = path[: _MAX_PATH_CHARS // 2] + "..." + path[-_MAX_PATH_CHARS // 2 :]
        return path


class _Plan:
    """The checks of one message type (filled after creation, so recursive types can refer to it)."""

    __slots__ = ("checks", "full_name")

    def __init__(self, full_name: str) -> None:
        self.full_name = full_name
        self.checks: list[Check] = []


def _run(plan: _Plan, value: message.Message, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _Refused(f"is nested more than {MAX_DEPTH} levels deep", "")
    for check in plan.checks:
        check(value, depth)


def prepare(message_type: descriptor.Descriptor) -> None:
    """Plans the checks of ``message_type`` now (start-up) rather than on its first request."""
    _plan_for(message_type)


def check(request: message.Message) -> None:
    """Raises ``ValidationError`` naming the first field of ``request`` that breaks a rule."""
    plan = _plan_for(request.DESCRIPTOR)
    if plan is None:
        return
    try:
        _run(plan, request, 1)
    except _Refused as refused:
        path = refused.path() or request.DESCRIPTOR.name
        raise ValidationError(f"{path} {refused.problem}", field=path) from None


# --- the interceptor's side -------------------------------------------------------------------


class _Malformed:
    """What a request that protobuf could not decode becomes, so the handler wrapper refuses it."""


MALFORMED = _Malformed()


def checking(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """``handler`` with every request message checked before (or, streamed, as) the behaviour
    sees it, and undecodable bytes refused as INVALID_ARGUMENT rather than failing in gRPC."""
    try:
        request_type = descriptor_pool.Default().FindMethodByName(method[1:].replace("/", ".")).input_type
    except KeyError:
        return handler  # not a method of our protos (health, reflection, a test's own service)
    plan = _plan_for(request_type)

    def validate(request: Any) -> None:
        if request is MALFORMED:
            raise ValidationError(f"The request is not a valid {request_type.name} message")
        if plan is not None:
            check(request)

    def unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
        def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            validate(request)
            return behavior(request, context)

        return run

    def streamed(behavior: Callable[..., Any]) -> Callable[..., Any]:
        def run(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            return behavior(_each_checked(requests, validate), context)

        return run

    replaced: dict[str, Any] = {"request_deserializer": _tolerant(handler.request_deserializer)}
    for kind, wrap in (
        ("unary_unary", unary),
        ("unary_stream", unary),
        ("stream_unary", streamed),
        ("stream_stream", streamed),
    ):
        behavior = getattr(handler, kind)
        if behavior is not None:
            replaced[kind] = wrap(behavior)
    return handler._replace(**replaced)  # type: ignore[attr-defined, no-any-return]


async def _each_checked(requests: AsyncIterator[Any], validate: Callable[[Any], None]) -> AsyncIterator[Any]:
    async for request in requests:
        validate(request)
        yield request


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:  # bad UTF-8 in a string, nesting past protobuf's limit, garbage bytes
            return MALFORMED

    return parse


# SQLSTATEs of PostgreSQL's "data exception" class that a value sent by a client causes: a
# string or number past its column, text that is not a uuid or a date, a character the
# database cannot hold.
_STORED_VALUE_ERRORS = frozenset({"22001", "22003", "22007", "22008", "22021", "22P02", "22P05"})


def database_refusal(error: Exception) -> Exception:
    """``error``, or the 400 it should have been when the database refused a value that a
    request carried past the checks above (text inside a webhook's JSON, say): the class
    stays closed for what the descriptors cannot see. Logged, scrubbed, as a warning."""
    original = getattr(error, "orig", None)
    if original is None:
        return error
    sqlstate = getattr(original, "sqlstate", None)
    nul_in_text = sqlstate is None and type(original).__name__ == "DataError"  # psycopg's own check
    if sqlstate not in _STORED_VALUE_ERRORS and not nul_in_text:
        return error
    log.warning("the database refused a value of the request", extra={"error": describe_error(error)})
    return ValidationError("A value of the request cannot be stored as it is")


# --- planning ---------------------------------------------------------------------------------

_plans: dict[descriptor.Descriptor, _Plan | None] = {}


def _plan_for(message_type: descriptor.Descriptor) -> _Plan | None:
    """The plan of ``message_type``, or None when none of its fields can break a rule."""
    if message_type not in _plans:
        built: dict[descriptor.Descriptor, _Plan] = {}
        _build(message_type, built)
        useful = _with_checks(built)
        for built_type, plan in built.items():
            plan.checks = [check for check, target in _checks_of(built_type, built) if target in useful]
            _plans.setdefault(built_type, plan if plan.checks else None)
    return _plans[message_type]


def _build(message_type: descriptor.Descriptor, built: dict[descriptor.Descriptor, _Plan]) -> None:
    if message_type in built or message_type in _plans:
        return
    built[message_type] = _Plan(message_type.full_name)
    for field in message_type.fields:
        nested = _nested_type(field)
        if nested is not None:
            _build(nested, built)


def _nested_type(field: descriptor.FieldDescriptor) -> descriptor.Descriptor | None:
    """The message type a field leads into (a map's value type for a map)."""
    message_type = field.message_type
    if message_type is None:
        return None
    if message_type.GetOptions().map_entry:
        return message_type.fields_by_name["value"].message_type
    return message_type


def _with_checks(built: dict[descriptor.Descriptor, _Plan]) -> set[_Plan | None]:
    """The plans that check something (a leaf of their own, or a field into such a plan);
    ``None`` stands for the leaf checks themselves. A fixed point, for recursive types."""
    useful: set[_Plan | None] = {None}
    targets = {plan: [target for _, target in _checks_of(t, built)] for t, plan in built.items()}
    useful.update(plan for plan in _plans.values() if plan is not None)
    changed = True
    while changed:
        changed = False
        for plan, plan_targets in targets.items():
            if plan not in useful and any(target in useful for target in plan_targets):
                useful.add(plan)
                changed = True
    return useful


def _checks_of(
    message_type: descriptor.Descriptor, built: dict[descriptor.Descriptor, _Plan]
) -> list[tuple[Check, _Plan | None]]:
    """Each check of the type's fields, with the plan it descends into (None: a leaf check)."""
    special = _WELL_KNOWN.get(message_type.full_name)
    if special is not None:
        return [(special, None)]
    if message_type.full_name == "google.protobuf.Value":
        return [(_json_value_check(message_type, built), None)]
    transparent = message_type.full_name in _JSON_VALUES
    texts: dict[bool, list[tuple[descriptor.FieldDescriptor, str]]] = {False: [], True: []}
    checks: list[tuple[Check, _Plan | None]] = []
    for field in message_type.fields:
        segment = "" if transparent else field.json_name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            checks.extend(_map_checks(field, segment, built))
        elif field.message_type is not None:
            target = built.get(field.message_type) or _plans.get(field.message_type)
            if target is not None:
                checks.append((_message_check(field, segment, target), target))
        elif field.type == descriptor.FieldDescriptor.TYPE_STRING:
            rules = _rules_of(field)
            if not rules.raw_text:
                texts[rules.multiline].append((field, segment))
        else:
            problem = _problem_of(field)
            if problem is not None:
                checks.append((_leaf_check(field, segment, problem), None))
    for multiline, fields in texts.items():
        if fields:
            checks.insert(0, (_text_check(fields, multiline), None))
    return checks


def _text_check(fields: list[tuple[descriptor.FieldDescriptor, str]], multiline: bool) -> Check:
    """All the string fields of one kind of a message in one regex search (most requests are
    clean: the joined text is searched once, and only a hit looks for the field)."""
    search = (_CONTROL_BUT_LINE_BREAKS if multiline else _CONTROL).search
    singular = [field.name for field, _ in fields if not field.is_repeated]
    repeated = [field.name for field, _ in fields if field.is_repeated]
    get_all = operator.attrgetter(*singular) if len(singular) > 1 else None
    problem_of = _text_problem(multiline)
    segments = {field.name: segment for field, segment in fields}

    def find(value: Any) -> None:
        for name in (*singular, *repeated):
            items = getattr(value, name)
            for index, item in enumerate(items if name in repeated else (items,)):
                problem = problem_of(item)
                if problem is not None:
                    raise _Refused(problem, segments[name] + (f"[{index}]" if name in repeated else ""))

    def check(value: Any, depth: int) -> None:
        if get_all is not None:
            if search(" ".join(get_all(value))):
                find(value)
        elif singular and search(getattr(value, singular[0])):
            find(value)
        for name in repeated:
            items = getattr(value, name)
            if items and search(" ".join(items)):
                find(value)

    return check


def _leaf_check(field: descriptor.FieldDescriptor, segment: str, problem_of: Problem) -> Check:
    name = field.name
    if field.is_repeated:

        def each(value: Any, depth: int) -> None:
            for index, item in enumerate(getattr(value, name)):
                problem = problem_of(item)
                if problem is not None:
                    raise _Refused(problem, f"{segment}[{index}]")

        return each

    def one(value: Any, depth: int) -> None:
        problem = problem_of(getattr(value, name))
        if problem is not None:
            raise _Refused(problem, segment)

    return one


def _message_check(field: descriptor.FieldDescriptor, segment: str, plan: _Plan) -> Check:
    name = field.name
    if field.is_repeated:

        def each(value: Any, depth: int) -> None:
            for index, item in enumerate(getattr(value, name)):
                try:
                    _run(plan, item, depth + 1)
                except _Refused as refused:
                    raise refused.at(f"{segment}[{index}]") from None

        return each

    def one(value: Any, depth: int) -> None:
        if value.HasField(name):
            try:
                _run(plan, getattr(value, name), depth + 1)
            except _Refused as refused:
                raise refused.at(segment) from None

    return one


def _map_checks(
    field: descriptor.FieldDescriptor, segment: str, built: dict[descriptor.Descriptor, _Plan]
) -> list[tuple[Check, _Plan | None]]:
    name = field.name
    key_problem = _problem_of(field.message_type.fields_by_name["key"])
    value_field = field.message_type.fields_by_name["value"]
    value_type = value_field.message_type
    target = (built.get(value_type) or _plans.get(value_type)) if value_type is not None else None
    value_problem = _problem_of(value_field) if value_type is None else None
    if key_problem is None and value_problem is None and target is None:
        return []

    def entries(value: Any, depth: int) -> None:
        for key, item in getattr(value, name).items():
            if key_problem is not None:
                problem = key_problem(key)
                if problem is not None:
                    raise _Refused(f"has a key that {problem}", segment)
            if value_problem is not None:
                problem = value_problem(item)
                if problem is not None:
                    raise _Refused(problem, f"{segment}[{_quoted(key)}]")
            elif target is not None and target.checks:
                try:
                    _run(target, item, depth + 2)  # the entry, then its value
                except _Refused as refused:
                    raise refused.at(f"{segment}[{_quoted(key)}]") from None

    # Kept whatever the value type checks when the keys or scalar values need checking.
    return [(entries, None if key_problem is not None or value_problem is not None else target)]


def _json_value_check(value_type: descriptor.Descriptor, built: dict[descriptor.Descriptor, _Plan]) -> Check:
    """google.protobuf.Value by the one kind it holds (JSON objects hold many of them)."""
    struct_type = value_type.fields_by_name["struct_value"].message_type
    list_type = value_type.fields_by_name["list_value"].message_type
    struct_plan = built.get(struct_type) or _plans[struct_type]
    list_plan = built.get(list_type) or _plans[list_type]
    assert struct_plan is not None and list_plan is not None  # JSON values hold text: always checked
    text_problem = _text_problem(multiline=False)

    def check(value: Any, depth: int) -> None:
        kind = value.WhichOneof("kind")
        if kind == "string_value":
            problem = text_problem(value.string_value)
        elif kind == "number_value":
            problem = _float_problem(value.number_value)
        elif kind == "struct_value":
            _run(struct_plan, value.struct_value, depth + 1)
            return
        elif kind == "list_value":
            _run(list_plan, value.list_value, depth + 1)
            return
        else:
            return
        if problem is not None:
            raise _Refused(problem, "")

    return check


def _quoted(key: object) -> str:
    return json.dumps(excerpt(key) if isinstance(key, str) else key, ensure_ascii=False)


def _rules_of(field: descriptor.FieldDescriptor) -> input_pb2.InputRules:
    return field.GetOptions().Extensions[input_pb2.input] if field.has_options else input_pb2.InputRules()


def _problem_of(field: descriptor.FieldDescriptor) -> Problem | None:
    """What to check in one scalar value of ``field`` (None: nothing can be wrong with it)."""
    rules = _rules_of(field)
    kind = field.type
    if kind == descriptor.FieldDescriptor.TYPE_STRING:
        return None if rules.raw_text else _text_problem(rules.multiline)
    if kind == descriptor.FieldDescriptor.TYPE_ENUM:
        return _enum_problem(field.enum_type)
    if kind in _INTEGER_TYPES:
        default = SAFE_INTEGER if kind in _64_BIT_TYPES else None
        low = rules.min if rules.HasField("min") else (-default if default is not None else None)
        high = rules.max if rules.HasField("max") else default
        return _integer_problem(low, high)
    if kind in _FLOAT_TYPES:
        return _float_problem
    return None  # bool, bytes


def _text_problem(multiline: bool) -> Problem:
    search = (_CONTROL_BUT_LINE_BREAKS if multiline else _CONTROL).search

    def problem(value: str) -> str | None:
        found = search(value) if value else None
        if found is None:
            return None
        return f"contains a control character (U+{ord(found.group()):04X})"

    return problem


def _enum_problem(enum_type: descriptor.EnumDescriptor) -> Problem:
    declared = frozenset(enum_type.values_by_number)
    name = enum_type.name

    def problem(value: int) -> str | None:
        return None if value in declared else f"is not a {name} value (got {value})"

    return problem


def _integer_problem(low: int | None, high: int | None) -> Problem | None:
    if low is None and high is None:
        return None
    if low is None:
        return lambda value: None if value <= high else f"must be at most {high}"  # type: ignore[operator]
    if high is None:
        return lambda value: None if value >= low else f"must be at least {low}"

    def problem(value: int) -> str | None:
        return None if low <= value <= high else f"must be between {low} and {high}"

    return problem


def _float_problem(value: float) -> str | None:
    return None if math.isfinite(value) else "must be a finite number"


def _timestamp(value: Any, depth: int) -> None:
    if not _TIMESTAMP_SECONDS[0] <= value.seconds <= _TIMESTAMP_SECONDS[1] or not 0 <= value.nanos <= _NANOS:
        raise _Refused("must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z", "")


def _duration(value: Any, depth: int) -> None:
    seconds, nanos = value.seconds, value.nanos
    if (
        abs(seconds) > _DURATION_SECONDS
        or abs(nanos) > _NANOS
        or (seconds > 0 and nanos < 0)
        or (seconds < 0 and nanos > 0)
    ):
        raise _Refused(f"must be a duration of at most {_DURATION_SECONDS} seconds either way", "")


_WELL_KNOWN: dict[str, Check] = {
    "google.protobuf.Timestamp": _timestamp,
    "google.protobuf.Duration": _duration,
}

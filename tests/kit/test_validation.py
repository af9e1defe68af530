"""The request checks every service runs before its handlers (kit.validation), rule by rule.

The messages are built here from a descriptor of their own (with the input rules set the way
a .proto would set them), so each rule is shown on its own; the platform-wide test of every
public route is tests/platform/test_malformed_input.py.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    message_factory,
    struct_pb2,
    timestamp_pb2,
)

from kit import validation
from kit.errors import ValidationError
from stylestudio.billing.v1 import billing_pb2
from stylestudio.common.v1 import input_pb2
from stylestudio.generation.v1 import generation_pb2, resources_pb2

FieldProto = descriptor_pb2.FieldDescriptorProto
FORM = ".kitvalidationtest.Form"


def _field(
    name: str, number: int, kind: int, *, repeated: bool = False, type_name: str = "", **rules: Any
) -> descriptor_pb2.FieldDescriptorProto:
    field = FieldProto(
        name=name,
        number=number,
        type=kind,  # type: ignore[arg-type]
        label=FieldProto.LABEL_REPEATED if repeated else FieldProto.LABEL_OPTIONAL,
    )
    if type_name:
        field.type_name = type_name
    if rules:
        field.options.Extensions[input_pb2.input].MergeFrom(input_pb2.InputRules(**rules))
    return field


def _build() -> dict[str, type[Any]]:
    """Form { name, note (multiline), raw (raw_text), tags[], size (enum), count (int64),
    small (int32 -10..10), huge (uint64), ratio (double), at (Timestamp), wait (Duration),
    labels map<string,string>, inner Form, children[] Form, attributes Struct }."""
    file = descriptor_pb2.FileDescriptorProto(
        name="kit_validation_test.proto",
        package="kitvalidationtest",
        syntax="proto3",
        dependency=[
            "google/protobuf/timestamp.proto",
            "google/protobuf/duration.proto",
            "google/protobuf/struct.proto",
            "stylestudio/common/v1/input.proto",
        ],
    )
    file.enum_type.add(name="Size").value.extend(
        [
            descriptor_pb2.EnumValueDescriptorProto(name="SIZE_UNSPECIFIED", number=0),
            descriptor_pb2.EnumValueDescriptorProto(name="SIZE_SMALL", number=1),
        ]
    )
    form = file.message_type.add(name="Form")
    entry = form.nested_type.add(name="LabelsEntry")
    entry.options.map_entry = True
    entry.field.extend([_field("key", 1, FieldProto.TYPE_STRING), _field("value", 2, FieldProto.TYPE_STRING)])
    form.field.extend(
        [
            _field("name", 1, FieldProto.TYPE_STRING),
            _field("note", 2, FieldProto.TYPE_STRING, multiline=True),
            _field("raw", 3, FieldProto.TYPE_STRING, raw_text=True),
            _field("tags", 4, FieldProto.TYPE_STRING, repeated=True),
            _field("size", 5, FieldProto.TYPE_ENUM, type_name=".kitvalidationtest.Size"),
            _field("count", 6, FieldProto.TYPE_INT64),
            _field("small", 7, FieldProto.TYPE_INT32, min=-10, max=10),
            _field("huge", 8, FieldProto.TYPE_UINT64),
            _field("ratio", 9, FieldProto.TYPE_DOUBLE),
            _field("at", 10, FieldProto.TYPE_MESSAGE, type_name=".google.protobuf.Timestamp"),
            _field("wait", 11, FieldProto.TYPE_MESSAGE, type_name=".google.protobuf.Duration"),
            _field(
                "labels",
                12,
                FieldProto.TYPE_MESSAGE,
                repeated=True,
                type_name=".kitvalidationtest.Form.LabelsEntry",
            ),
            _field("inner", 13, FieldProto.TYPE_MESSAGE, type_name=".kitvalidationtest.Form"),
            _field(
                "children", 14, FieldProto.TYPE_MESSAGE, repeated=True, type_name=".kitvalidationtest.Form"
            ),
            _field("attributes", 15, FieldProto.TYPE_MESSAGE, type_name=".google.protobuf.Struct"),
            _field("wide", 16, FieldProto.TYPE_INT64, min=-(2**63), max=2**63 - 1),
        ]
    )
    pool = descriptor_pool.DescriptorPool()
    for dependency in (descriptor_pb2, timestamp_pb2, duration_pb2, struct_pb2, input_pb2):
        pool.AddSerializedFile(dependency.DESCRIPTOR.serialized_pb)
    pool.Add(file)
    return {"Form": message_factory.GetMessageClass(pool.FindMessageTypeByName("kitvalidationtest.Form"))}


Form = _build()["Form"]


def refusal(request: Any) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        validation.check(request)
    return caught.value


@pytest.mark.parametrize("character", ["\x00", "\x01", "\t", "\n", "\r", "\x1b", "\x7f", "\x85", "\x9f"])
def test_a_control_character_in_a_string_is_refused_naming_the_field(character: str) -> None:
    error = refusal(Form(name=f"a{character}b"))
    assert error.details["field"] == "name"
    assert f"U+{ord(character):04X}" in error.message


@pytest.mark.parametrize("text", ["caf\u00e9", "\u4e2d\u6587", "emoji \U0001f600", "a\u200db", "tab-free"])
def test_printable_text_in_any_script_is_accepted(text: str) -> None:
    validation.check(Form(name=text, tags=[text], labels={text: text}))


def test_a_multiline_field_takes_line_breaks_and_tabs_but_no_other_control_character() -> None:
    validation.check(Form(note="line one\r\n\tline two\n"))
    assert refusal(Form(note="line\x00")).details["field"] == "note"
    assert refusal(Form(note="bell\x07")).details["field"] == "note"


def test_a_raw_text_field_is_not_checked() -> None:
    validation.check(Form(raw="\x00\x01\x7f anything"))


def test_repeated_nested_and_map_fields_are_checked_with_their_json_path() -> None:
    assert refusal(Form(tags=["ok", "no\x00"])).details["field"] == "tags[1]"
    assert refusal(Form(inner=Form(inner=Form(name="\x00")))).details["field"] == "inner.inner.name"
    assert refusal(Form(children=[Form(), Form(tags=["\x02"])])).details["field"] == "children[1].tags[0]"
    assert refusal(Form(labels={"colour": "re\x00d"})).details["field"] == 'labels["colour"]'
    bad_key = refusal(Form(labels={"col\x00our": "red"}))
    assert bad_key.details["field"] == "labels" and "key" in bad_key.message


def test_struct_keys_and_values_are_checked_at_any_depth() -> None:
    form = Form()
    form.attributes.update({"outer": {"list": ["fine", {"deep": "bad\x00"}]}})
    assert refusal(form).details["field"] == 'attributes["outer"]["list"][1]["deep"]'
    form = Form()
    form.attributes.update({"bad\x00key": 1})
    assert refusal(form).details["field"] == "attributes"
    form = Form()
    form.attributes.update({"n": math.nan})
    assert refusal(form).details["field"] == 'attributes["n"]'


def test_nesting_past_the_limit_is_refused() -> None:
    deep = Form()
    current = deep
    for _ in range(validation.MAX_DEPTH):
        current = current.inner
        current.name = "x"
    error = refusal(deep)
    assert "nested" in error.message and error.details["field"].startswith("inner.inner")
    shallow = Form()
    shallow.inner.inner.name = "x"
    validation.check(shallow)


@pytest.mark.parametrize("number", [2, 99, -1, 2**31 - 1])
def test_an_enum_number_outside_the_declared_values_is_refused(number: int) -> None:
    error = refusal(Form(size=number))
    assert error.details["field"] == "size" and "Size" in error.message
    validation.check(Form(size=1))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("count", 2**53),
        ("count", -(2**53)),
        ("count", 2**63 - 1),
        ("count", -(2**63)),
        ("huge", 2**64 - 1),
        ("small", 11),
        ("small", -11),
    ],
)
def test_integers_past_their_bounds_are_refused(field: str, value: int) -> None:
    assert refusal(Form(**{field: value})).details["field"] == field


def test_integers_within_their_bounds_and_declared_full_ranges_are_accepted() -> None:
    validation.check(Form(count=2**53 - 1, huge=2**53 - 1, small=10))
    validation.check(Form(count=-(2**53 - 1), small=-10, wide=2**63 - 1))
    validation.check(Form(wide=-(2**63)))


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_floats_are_finite(value: float) -> None:
    assert refusal(Form(ratio=value)).details["field"] == "ratio"


def test_timestamps_and_durations_stay_in_their_documented_range() -> None:
    def form(at: tuple[int, int] = (0, 0), wait: tuple[int, int] = (0, 0)) -> Any:
        built = Form()
        built.at.seconds, built.at.nanos = at
        built.wait.seconds, built.wait.nanos = wait
        return built

    validation.check(form(at=(253402300799, 999999999), wait=(-5, -1)))
    validation.check(form(at=(-62135596800, 0), wait=(315576000000, 0)))
    assert refusal(form(at=(253402300800, 0))).details["field"] == "at"
    assert refusal(form(at=(0, -1))).details["field"] == "at"
    assert refusal(form(wait=(315576000001, 0))).details["field"] == "wait"
    assert refusal(form(wait=(1, -1))).details["field"] == "wait"


def test_a_refusal_quotes_nothing_of_the_value() -> None:
    secret = "s3cret-" + "x" * 100_000
    error = refusal(Form(name=secret + "\x00"))
    assert "s3cret" not in error.message and len(error.message) < 200


def test_the_platforms_own_rules() -> None:
    """What the protos declare: multiline prompts, bounded amounts and seeds, closed enums."""
    validation.check(generation_pb2.CreateGenerationRequest(prompt="a shirt\non a beach"))
    bad_seed = generation_pb2.CreateGenerationRequest(
        parameters=resources_pb2.GenerationParameters(seed=2**32)
    )
    assert refusal(bad_seed).details["field"] == "parameters.seed"
    grant = billing_pb2.AdminGrantTokensRequest(user_id="u", amount=2**63 - 1, reason="r")
    assert refusal(grant).details["field"] == "amount"
    # Without presence, 0 is both "unset" and a value: a bound applies to it too.
    assert refusal(billing_pb2.AdminGrantTokensRequest(reason="r")).details["field"] == "amount"
    assert refusal(billing_pb2.AdminGrantTokensRequest(amount=5, reason="a\x00")).details["field"] == "reason"
    assert refusal(generation_pb2.ListGenerationsRequest(status=99)).details["field"] == "status"  # type: ignore[arg-type]

"""What a JSON log line says about the call it was written in: request and user ids, when known."""

from __future__ import annotations

import json
import logging

from kit.logs import JsonFormatter, request_id_var, user_id_var


def _line(message: str) -> dict[str, object]:
    record = logging.LogRecord("stylestudio.rpc", logging.INFO, __file__, 1, message, (), None)
    entry: dict[str, object] = json.loads(JsonFormatter("users").format(record))
    return entry


def test_a_line_carries_the_user_id_only_inside_a_call_that_knows_it() -> None:
    assert "user_id" not in _line("outside any call")
    request_token, user_token = request_id_var.set("req-1"), user_id_var.set("0b6f9c1e-user")
    try:
        entry = _line("rpc")
    finally:
        user_id_var.reset(user_token)
        request_id_var.reset(request_token)
    assert (entry["request_id"], entry["user_id"], entry["service"]) == ("req-1", "0b6f9c1e-user", "users")
    assert "user_id" not in _line("after the call")

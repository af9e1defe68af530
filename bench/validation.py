"""What the kit's request checks (kit.validation) cost per call, next to decoding the message.

    .venv/bin/python -m bench.validation

Each figure is the best of several rounds of CPU time (the least disturbed by the rest of
the machine), in microseconds of one core: the check of a typical request of each kind, and protobuf's
own decoding of the same bytes, which every call pays anyway.
"""

from __future__ import annotations

import time
import timeit

from google.protobuf import message

from kit import validation
from stylestudio.analytics.v1 import analytics_pb2
from stylestudio.billing.v1 import billing_pb2
from stylestudio.generation.v1 import generation_pb2, resources_pb2

ROUNDS = 15
ROUND_SECONDS = 0.02  # short rounds: some of them run undisturbed on a busy machine


def requests() -> dict[str, message.Message]:
    create = generation_pb2.CreateGenerationRequest(
        product_image_files=["7b0c2a52-3a49-4f57-9d3c-4be3c8d1e0f1"],
        model_image_files=["0d8a7f3e-0b6a-4c1e-9a58-5c9f8f2a9b11"],
        prompt="A linen shirt on a wooden hanger, soft morning light, beach in the background",
        parameters=resources_pb2.GenerationParameters(
            model="stable-diffusion-xl", style="realistic", quality="high", aspect_ratio="1:1", num_images=2
        ),
    )
    usage = analytics_pb2.LogUserActionRequest(action="page_view", session_id="s-1234")
    usage.metadata.update({"page": "/studio", "referrer": "newsletter", "width": 1280, "beta": True})
    return {
        "empty (GetBalance)": billing_pb2.GetBalanceRequest(),
        "ListGenerations (enum, ints, token)": generation_pb2.ListGenerationsRequest(
            status=resources_pb2.COMPLETED, page_size=20, page_token="abc"
        ),
        "AdminGrantTokens": billing_pb2.AdminGrantTokensRequest(
            user_id="7b0c2a52-3a49-4f57-9d3c-4be3c8d1e0f1", amount=50, reason="support"
        ),
        "CreateGeneration": create,
        "BatchCreateGenerations x10": generation_pb2.BatchCreateGenerationsRequest(requests=[create] * 10),
        "LogUserAction (4-key metadata)": usage,
    }


def best_microseconds(statement: object) -> float:
    # CPU time of this process: a round the scheduler interrupts does not count the wait.
    timer = timeit.Timer(statement, timer=time.process_time)  # type: ignore[arg-type]
    calls, seconds = timer.autorange()
    calls = max(10, int(calls * ROUND_SECONDS / seconds))
    return min(timer.repeat(ROUNDS, calls)) / calls * 1e6


def main() -> None:
    print(f"{'request':<38} {'check us':>9} {'decode us':>10}")
    for name, request in requests().items():
        data = request.SerializeToString()
        decode = type(request).FromString
        validation.check(request)  # planned once, as at start-up
        checked = best_microseconds(lambda request=request: validation.check(request))
        decoded = best_microseconds(lambda data=data, decode=decode: decode(data))
        print(f"{name:<38} {checked:>9.2f} {decoded:>10.2f}")


if __name__ == "__main__":
    main()

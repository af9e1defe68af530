"""Another service starts a generation for one of its users and watches it to the end.

    pip install stylestudio-client
    export STYLESTUDIO_SERVICE_IDENTITY=operator                   # as the protos declare it
    export STYLESTUDIO_SERVICE_PRIVATE_KEY=/run/secrets/operator.pem   # or the PEM text
    python start_generation.py --target 127.0.0.1:50054 --user <user id> --file <file id> \\
        --prompt "a model wearing the shirt on a beach"

It prints one line per status (QUEUED, PROCESSING, COMPLETED), then the result files' ids, and
exits 0 when the generation completed, 1 when it failed or was canceled, 2 when it was refused
(the reason and its details, e.g. INSUFFICIENT_TOKENS {'required': '1', 'available': '0'}).
Run it again with the same --idempotency-key and it watches the same generation instead of
starting another. docs/clients.md walks through it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid

import grpc

from stylestudio.generation.v1 import generation_pb2, generation_pb2_grpc, resources_pb2
from stylestudio_client import ServiceIdentity, connect, error_details


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Start a generation for a user and watch it.")
    parser.add_argument("--target", required=True, help="the generation service, host:port")
    parser.add_argument("--user", required=True, help="the id of the user it is for")
    parser.add_argument("--file", required=True, action="append", help="a product image of the user's")
    parser.add_argument("--prompt", default="a model wearing the garment, studio light")
    parser.add_argument("--quality", default="draft", help="draft, standard or high")
    parser.add_argument("--idempotency-key", default=str(uuid.uuid4()), help="repeat to resume")
    return parser.parse_args(argv)


async def start_and_watch(args: argparse.Namespace) -> int:
    identity = ServiceIdentity.from_env()
    async with connect(args.target, identity) as channel:
        # Every call on this stub carries a credential naming both the service and the user:
        # the generation is the user's, paid with their tokens, limited by their plan.
        generations = generation_pb2_grpc.GenerationServiceStub(channel.for_user(args.user))
        request = generation_pb2.CreateGenerationRequest(
            product_image_files=args.file,
            prompt=args.prompt,
            parameters=resources_pb2.GenerationParameters(quality=args.quality),
        )
        try:
            started = await generations.CreateGeneration(
                request, metadata=[("idempotency-key", args.idempotency_key)]
            )
            # The platform's trace of the whole saga (docs/operations.md tells how to read it).
            print(f"started {started.id} trace {started.trace_id}", flush=True)
            last = started
            async for update in generations.WatchGeneration(
                generation_pb2.WatchGenerationRequest(id=started.id)
            ):
                print(f"{update.id} {resources_pb2.GenerationStatus.Name(update.status)}", flush=True)
                last = update
        except grpc.aio.AioRpcError as error:
            details = error_details(error)
            print(f"refused: {details.code.name} {details.reason} {details.metadata}", file=sys.stderr)
            print(f"  {details.message}", file=sys.stderr)
            return 2
    if last.status != resources_pb2.COMPLETED:
        print(f"{last.id} ended {resources_pb2.GenerationStatus.Name(last.status)}: {last.error.reason}")
        return 1
    print("results: " + " ".join(last.result_image_files))
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(start_and_watch(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())

"""Upload and download throughput of the files service: ``python -m bench.files.uploads``.

Starts users and files as real processes on a fresh database (tests/harness), then has
``--concurrency`` users upload ``--count`` JPEGs of about ``--kib`` KiB each over gRPC and
read them back, and prints uploads/s, downloads/s, MiB/s and latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

from kit.infra import resolve_infrastructure
from stylestudio.files.v1 import files_pb2_grpc
from tests.files.conftest import FilesUser
from tests.harness import Platform, TestDatabase

REPO_ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def sample(kib: int) -> bytes:
    import io

    from PIL import Image

    side = max(8, int((kib * 1024 / 3) ** 0.5))
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, "JPEG", quality=95)
    return out.getvalue()


def percentile(values: list[float], p: float) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * p))] * 1000


async def run(count: int, concurrency: int, kib: int) -> None:
    infra = resolve_infrastructure(REPO_ROOT / "data")
    database = TestDatabase(infra.database_url)
    database.create(services=["users", "files"])
    platform = Platform(
        database,
        infra.redis_url,
        Path(tempfile.mkdtemp(prefix="bench-files-")),
        extra_env={"STYLESTUDIO_LOG_LEVEL": "WARNING"},
    )
    try:
        for service in ("users", "files"):
            platform.start(service)
        for service in ("users", "files"):
            await platform.wait_serving(service)
        content = sample(kib)
        channel = platform.user_channel("files")
        users = [
            FilesUser(*platform.user_token(plan="enterprise"), files_pb2_grpc.FilesServiceStub(channel))
            for _ in range(concurrency)
        ]
        await users[0].upload(content)  # warm-up
        per_user = count // concurrency
        latencies: list[float] = []

        async def upload_all(user: FilesUser) -> list[str]:
            return [(await timed_call(latencies, user.upload(content))).id for _ in range(per_user)]

        started = time.perf_counter()
        uploaded = await asyncio.gather(*(upload_all(user) for user in users))
        report("upload", latencies, time.perf_counter() - started, len(content), concurrency)

        latencies = []

        async def download_all(user: FilesUser, file_ids: list[str]) -> None:
            for file_id in file_ids:
                await timed_call(latencies, user.download(file_id))

        started = time.perf_counter()
        await asyncio.gather(*(download_all(user, ids) for user, ids in zip(users, uploaded, strict=True)))
        report("download", latencies, time.perf_counter() - started, len(content), concurrency)
        await channel.close()
    finally:
        await platform.close()
        database.drop()
        infra.close()


async def timed_call(latencies: list[float], call: Awaitable[T]) -> T:
    started = time.perf_counter()
    result = await call
    latencies.append(time.perf_counter() - started)
    return result


def report(phase: str, latencies: list[float], elapsed: float, size: int, concurrency: int) -> None:
    total = len(latencies)
    print(
        f"{phase:8s} {total} files of {size / 1024:.0f} KiB, concurrency {concurrency}: "
        f"{total / elapsed:7.1f}/s  {total * size / elapsed / 2**20:6.1f} MiB/s  "
        f"p50 {percentile(latencies, 0.5):6.1f} ms  p95 {percentile(latencies, 0.95):6.1f} ms  "
        f"mean {statistics.mean(latencies) * 1000:6.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--kib", type=int, default=500)
    args = parser.parse_args()
    asyncio.run(run(args.count, args.concurrency, args.kib))


if __name__ == "__main__":
    main()

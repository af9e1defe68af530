"""GetMyStats: totals from billing, generation and files, degrading per source."""

from __future__ import annotations

import time

from stylestudio.users.v1 import auth_pb2_grpc, users_pb2, users_pb2_grpc
from tests.harness import Platform
from tests.users.conftest import signup


async def test_stats_name_the_sources_that_did_not_answer_and_keep_the_rest(
    users_platform: Platform, auth: auth_pb2_grpc.AuthServiceStub, users: users_pb2_grpc.UsersServiceStub
) -> None:
    # This package's platform runs the users service alone (billing only while its own test runs).
    down = sorted({"billing", "files", "generation"} - set(users_platform.processes))
    signed_up = await signup(auth)
    started = time.monotonic()
    stats = await users.GetMyStats(
        users_pb2.GetMyStatsRequest(), metadata=Platform.bearer(signed_up.access_token)
    )
    assert time.monotonic() - started < 5
    assert sorted(stats.missing_sources) == down and down
    assert stats.member_since.ToDatetime() == signed_up.user.created_at.ToDatetime()
    assert (stats.total_generations, stats.tokens_spent, stats.storage_bytes) == (0, 0, 0)

"""The invariant checker is proven before it is trusted (issue 13, section 5).

One real platform goes through a short real flow over REST (sign-up, login and logout,
purchases confirmed by signed webhooks and one refunded, an admin grant, uploads and a delete,
generations that complete, fail and are canceled): the checker reports nothing. Then each kind
of violation is planted straight into the databases or the store, the checker must report it
(right kind, right subject, and nothing else), and the plant is undone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection

from bench.soak.invariants import check
from bench.soak.invariants.violations import (
    ANALYTICS_DUPLICATE,
    ANALYTICS_MISSING,
    EVENT_UNDELIVERED,
    FILE_WITHOUT_BYTES,
    FILE_WITHOUT_ROW,
    GENERATION_CHARGE,
    GENERATION_NOT_TERMINAL,
    HTTP_NO_ANSWER,
    HTTP_SERVER_ERROR,
    PURCHASE_CREDIT,
    RESULT_OF_UNFINISHED_GENERATION,
    WALLET_UNRECONCILED,
)
from services.analytics.usage_log import BATCH_COMPLETED, SERVICE_ACTIONS
from services.billing.models import PURCHASES_ACCOUNT, SPEND_ACCOUNT
from tests.harness.platform import REPO_ROOT
from tests.soak.flow import Flow, png

Found = set[tuple[str, str]]

# --- planting -----------------------------------------------------------------------------------


@asynccontextmanager
async def _sql(flow: Flow) -> AsyncIterator[AsyncConnection]:
    """A transaction as the admin, with triggers off (billing's transfers refuse UPDATE and DELETE:
    only a plant's undo may remove what it added)."""
    async with flow.engine.connect() as connection, connection.begin():
        await connection.execute(sa.text("SET LOCAL session_replication_role = replica"))
        yield connection


async def _found(flow: Flow, **changes: Any) -> Found:
    target = dataclasses.replace(flow.target, **changes)
    return {(v.kind, v.subject) for v in await check(target)}


async def _wallet(connection: AsyncConnection, user_id: str) -> sa.Row[Any]:
    query = "SELECT id, balance FROM billing.accounts WHERE user_id = :user_id AND kind = 'wallet'"
    return (await connection.execute(sa.text(query), {"user_id": user_id})).one()


async def _add_transfer(connection: AsyncConnection, **values: Any) -> uuid.UUID:
    transfer_id = uuid.uuid4()
    values = {
        "id": transfer_id,
        "key": f"planted:{transfer_id}",
        "hold_id": None,
        "generation_id": None,
        "purchase_id": None,
    } | values
    await connection.execute(
        sa.text(
            """
            INSERT INTO billing.transfers (id, kind, debit_account_id, credit_account_id, amount,
                idempotency_key, user_id, balance_after, hold_id, generation_id, purchase_id, reason)
            VALUES (:id, :kind, :debit, :credit, :amount, :key, :user_id, :balance_after,
                    CAST(:hold_id AS uuid), :generation_id, CAST(:purchase_id AS uuid), 'planted')
            """
        ),
        values,
    )
    return transfer_id


async def _remove_transfer(flow: Flow, transfer_id: uuid.UUID) -> None:
    async with _sql(flow) as connection:
        await connection.execute(sa.text("DELETE FROM billing.transfers WHERE id = :id"), {"id": transfer_id})


# --- the checker ---------------------------------------------------------------------------------


async def test_a_real_flow_breaks_no_invariant(flow: Flow) -> None:
    violations = await check(flow.target, settle_seconds=30.0)
    assert violations == [], "\n".join(map(str, violations))


async def test_a_double_capture_is_reported(flow: Flow) -> None:
    generation = flow.completed
    async with _sql(flow) as connection:
        wallet = await _wallet(connection, flow.user_id)
        hold_id = (
            await connection.execute(
                sa.text("SELECT hold_id FROM generation.generations WHERE id = :id"), {"id": generation["id"]}
            )
        ).scalar_one()
        planted = await _add_transfer(
            connection,
            kind="CAPTURE",
            debit=wallet.id,
            credit=SPEND_ACCOUNT,
            amount=int(generation["tokenCost"]),
            user_id=flow.user_id,
            balance_after=wallet.balance,
            hold_id=hold_id,
            generation_id=generation["id"],
        )
    try:
        # Captured twice, and the wallet no longer matches its transfers either.
        assert await _found(flow) == {
            (GENERATION_CHARGE, generation["id"]),
            (WALLET_UNRECONCILED, flow.user_id),
        }
    finally:
        await _remove_transfer(flow, planted)


async def test_a_charged_failure_is_reported(flow: Flow) -> None:
    """A FAILED generation captured: charged for nothing (here, with its wallet kept in balance)."""
    generation = flow.failed
    async with _sql(flow) as connection:
        wallet = await _wallet(connection, flow.user_id)
        planted = await _add_transfer(
            connection,
            kind="CAPTURE",
            debit=wallet.id,
            credit=SPEND_ACCOUNT,
            amount=1,
            user_id=flow.user_id,
            balance_after=wallet.balance - 1,
            generation_id=generation["id"],
        )
        await connection.execute(
            sa.text("UPDATE billing.accounts SET balance = balance - 1 WHERE id = :id"), {"id": wallet.id}
        )
    try:
        assert await _found(flow) == {(GENERATION_CHARGE, generation["id"])}
    finally:
        await _remove_transfer(flow, planted)
        async with _sql(flow) as connection:
            await connection.execute(
                sa.text("UPDATE billing.accounts SET balance = balance + 1 WHERE id = :id"), {"id": wallet.id}
            )


async def test_a_wallet_off_by_one_is_reported(flow: Flow) -> None:
    update = (
        "UPDATE billing.accounts SET balance = balance + :delta WHERE user_id = :user_id AND kind = 'wallet'"
    )
    async with _sql(flow) as connection:
        await connection.execute(sa.text(update), {"delta": 1, "user_id": flow.user_id})
    try:
        assert await _found(flow) == {(WALLET_UNRECONCILED, flow.user_id)}
    finally:
        async with _sql(flow) as connection:
            await connection.execute(sa.text(update), {"delta": -1, "user_id": flow.user_id})


async def test_a_purchase_credited_twice_is_reported(flow: Flow) -> None:
    """A second PURCHASE credit, with the wallet's balance moved to match (so only the purchase is wrong)."""
    async with _sql(flow) as connection:
        wallet = await _wallet(connection, flow.user_id)
        tokens = (
            await connection.execute(
                sa.text("SELECT tokens FROM billing.purchases WHERE id = :id"), {"id": flow.purchase_id}
            )
        ).scalar_one()
        planted = await _add_transfer(
            connection,
            kind="PURCHASE",
            debit=PURCHASES_ACCOUNT,
            credit=wallet.id,
            amount=tokens,
            user_id=flow.user_id,
            balance_after=wallet.balance + tokens,
            purchase_id=flow.purchase_id,
        )
        await connection.execute(
            sa.text("UPDATE billing.accounts SET balance = balance + :tokens WHERE id = :id"),
            {"tokens": tokens, "id": wallet.id},
        )
    try:
        assert await _found(flow) == {(PURCHASE_CREDIT, flow.purchase_id)}
    finally:
        await _remove_transfer(flow, planted)
        async with _sql(flow) as connection:
            await connection.execute(
                sa.text("UPDATE billing.accounts SET balance = balance - :tokens WHERE id = :id"),
                {"tokens": tokens, "id": wallet.id},
            )


async def test_a_generation_left_running_past_the_deadline_is_reported(flow: Flow) -> None:
    """A QUEUED generation an hour old (its analytics record there, so only the status is wrong);
    its updated_at and deadline in the future keep the platform's sweeper away from it."""
    stuck = str(uuid.uuid4())
    source = flow.completed["id"]
    async with _sql(flow) as connection:
        await connection.execute(
            sa.text(
                """
                INSERT INTO generation.generations (id, user_id, status, prompt, enhanced_prompt, model,
                    style, quality, aspect_ratio, num_images, seed, product_image_files,
                    model_image_files, token_cost, provider, deadline, created_at, updated_at)
                SELECT CAST(:id AS uuid), user_id, 'QUEUED', prompt, enhanced_prompt, model, style,
                       quality, aspect_ratio, num_images, seed, product_image_files, model_image_files,
                       token_cost, provider, now() + interval '1 hour', now() - interval '1 hour',
                       now() + interval '1 hour'
                  FROM generation.generations WHERE id = :source
                """
            ),
            {"id": stuck, "source": source},
        )
        await connection.execute(
            sa.text(
                """
                INSERT INTO analytics.usage_records (id, created_at, user_id, action, source, metadata)
                SELECT gen_random_uuid(), created_at, user_id, action, source,
                       jsonb_set(metadata, '{generationId}', to_jsonb(CAST(:id AS text)))
                  FROM analytics.usage_records
                 WHERE action = 'generation_started' AND metadata->>'generationId' = :source
                """
            ),
            {"id": stuck, "source": source},
        )
    try:
        assert await _found(flow) == {(GENERATION_NOT_TERMINAL, stuck)}
    finally:
        async with _sql(flow) as connection:
            await connection.execute(
                sa.text("DELETE FROM generation.generations WHERE id = :id"), {"id": stuck}
            )
            await connection.execute(
                sa.text("DELETE FROM analytics.usage_records WHERE metadata->>'generationId' = :id"),
                {"id": stuck},
            )


async def test_an_event_delivered_twice_to_analytics_is_reported(flow: Flow) -> None:
    """The same event ingested twice (same id), and the same fact published twice (two ids)."""
    async with _sql(flow) as connection:
        event_id = (
            await connection.execute(
                sa.text("SELECT id FROM analytics.usage_records WHERE action = 'signup' AND user_id = :u"),
                {"u": flow.user_id},
            )
        ).scalar_one()
    copy = """
        INSERT INTO analytics.usage_records (id, created_at, user_id, action, source, metadata)
        SELECT {id}, created_at + interval '1 millisecond', user_id, action, source, metadata
          FROM analytics.usage_records WHERE id = :event_id
    """
    remove = "DELETE FROM analytics.usage_records WHERE {which} AND action = 'signup' AND user_id = :u"
    for new_id, subject in (("id", str(event_id)), ("gen_random_uuid()", flow.user_id)):
        async with _sql(flow) as connection:
            await connection.execute(sa.text(copy.format(id=new_id)), {"event_id": event_id})
        try:
            assert await _found(flow) == {(ANALYTICS_DUPLICATE, subject)}
        finally:
            async with _sql(flow) as connection:
                which = "created_at > (SELECT min(created_at) FROM analytics.usage_records WHERE id = :e)"
                await connection.execute(
                    sa.text(remove.format(which=which)), {"u": flow.user_id, "e": event_id}
                )


# The fact each action's record names: the record's own column, or a key of its metadata.
_FACT_OF_ACTION = {
    "signup": "user_id",
    "login": "session_id",
    "logout": "session_id",
    "file_upload": "fileId",
    "file_delete": "fileId",
    "generation_started": "generationId",
    "generation_completed": "generationId",
    "generation_failed": "generationId",
    "generation_canceled": "generationId",
    "token_purchase": "purchaseId",
    "tokens_granted": "transactionId",
    "tokens_refunded": "purchaseId",
}


# A batch's summary is one record per batch, not a fact of one source row: the soak's checker
# does not cover it (tests/analytics/test_real_flow.py checks it is written once).
@pytest.mark.parametrize("action", sorted(SERVICE_ACTIONS - {BATCH_COMPLETED}))
async def test_an_event_that_never_reached_analytics_is_reported(flow: Flow, action: str) -> None:
    """Every action of the usage log is checked against its source's facts: the flow did each one,
    and a record taken away is missed, named by the fact it recorded."""
    async with _sql(flow) as connection:
        taken = (
            await connection.execute(
                sa.text(
                    """
                    DELETE FROM analytics.usage_records r
                     WHERE id = (SELECT id FROM analytics.usage_records
                                  WHERE action = :action AND user_id = :u LIMIT 1)
                    RETURNING to_jsonb(r)
                    """
                ),
                {"action": action, "u": flow.user_id},
            )
        ).scalar_one()
    name = _FACT_OF_ACTION[action]
    fact = taken[name] if name in ("user_id", "session_id") else taken["metadata"][name]
    try:
        assert await _found(flow) == {(ANALYTICS_MISSING, fact)}
    finally:
        async with _sql(flow) as connection:
            await connection.execute(
                sa.text(
                    """
                    INSERT INTO analytics.usage_records
                    SELECT * FROM jsonb_populate_record(NULL::analytics.usage_records, CAST(:row AS jsonb))
                    """
                ),
                {"row": json.dumps(taken)},
            )


async def test_an_event_a_consumer_gave_up_on_is_reported(flow: Flow) -> None:
    """An event in an events stream's dead letters never reached its consumer."""
    event_id = str(uuid.uuid4())
    key = f"{flow.target.redis_prefix}:events.files.dead"
    redis = Redis.from_url(flow.target.redis_url)
    try:
        await redis.xadd(key, {"id": event_id, "type": "files.file_uploaded", "event": b"planted"})
        assert await _found(flow) == {(EVENT_UNDELIVERED, event_id)}
    finally:
        await redis.delete(key)
        await redis.aclose()


def _stored_path(flow: Flow, storage_key: str) -> Path:
    return flow.target.data_dir / "files" / storage_key


async def test_a_file_row_without_its_bytes_is_reported(flow: Flow) -> None:
    async with _sql(flow) as connection:
        key = (
            await connection.execute(
                sa.text("SELECT storage_key FROM files.files WHERE id = :id"), {"id": flow.spare_file_id}
            )
        ).scalar_one()
    path = _stored_path(flow, key)
    content = path.read_bytes()
    path.unlink()
    try:
        assert await _found(flow) == {(FILE_WITHOUT_BYTES, flow.spare_file_id)}
    finally:
        path.write_bytes(content)


async def test_a_stored_file_without_a_row_is_reported(flow: Flow) -> None:
    stray = uuid.uuid4()
    key = f"{stray.hex[:2]}/{stray.hex[2:4]}/{stray}"
    path = _stored_path(flow, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png("white"))
    try:
        assert await _found(flow) == {(FILE_WITHOUT_ROW, key)}
    finally:
        path.unlink()


async def test_a_result_file_of_a_failed_generation_is_reported(flow: Flow) -> None:
    """The completed generation's result handed to the failed one."""
    result = flow.completed["resultImageFiles"][0]
    move = "UPDATE files.files SET generation_id = :generation WHERE id = :id"
    async with _sql(flow) as connection:
        await connection.execute(sa.text(move), {"generation": flow.failed["id"], "id": result})
    try:
        assert await _found(flow) == {(RESULT_OF_UNFINISHED_GENERATION, result)}
    finally:
        async with _sql(flow) as connection:
            await connection.execute(sa.text(move), {"generation": flow.completed["id"], "id": result})


async def test_server_errors_and_unanswered_requests_outside_fault_windows_are_reported(
    flow: Flow, tmp_path: Path
) -> None:
    now = time.time()

    def failed(t: float, status: int | None, route: str) -> dict[str, Any]:
        return {"t": t, "method": "POST", "route": route, "status": status, "reason": "", "error": "planted"}

    requests = [
        failed(now - 100, 500, "/v1/generations"),  # no fault then: a violation
        failed(now - 50, 503, "/v1/files"),  # PostgreSQL down: allowed
        failed(now - 43, 503, "/v1/files"),  # within the grace after it came back: allowed
        failed(now - 30, 503, "/v1/billing/balance"),  # nothing down: a violation
        failed(now - 50, None, "/v1/auth/login"),  # only PostgreSQL down: the gateway must answer
        failed(now - 20, None, "/v1/dashboard"),  # the gateway was killed: allowed
    ]
    faults = [
        {
            "kind": "restart_postgres",
            "target": "postgres",
            "started": now - 55,
            "ended": now - 45,
            "dependency_down": True,
        },
        {
            "kind": "kill",
            "target": "gateway",
            "started": now - 22,
            "ended": now - 18,
            "dependency_down": True,
        },
        {
            "kind": "slow_provider",
            "target": "provider",
            "started": now - 35,
            "ended": now - 25,
            "dependency_down": False,
        },
    ]
    (tmp_path / "requests.jsonl").write_text("".join(json.dumps(line) + "\n" for line in requests))
    (tmp_path / "faults.jsonl").write_text("".join(json.dumps(line) + "\n" for line in faults))

    found = await _found(flow, requests=tmp_path / "requests.jsonl", faults=tmp_path / "faults.jsonl")

    assert found == {
        (HTTP_SERVER_ERROR, f"POST /v1/generations @{now - 100:.3f}"),
        (HTTP_SERVER_ERROR, f"POST /v1/billing/balance @{now - 30:.3f}"),
        (HTTP_NO_ANSWER, f"POST /v1/auth/login @{now - 50:.3f}"),
    }


async def test_the_command_prints_each_violation_and_the_count_last(flow: Flow, tmp_path: Path) -> None:
    requests = tmp_path / "requests.jsonl"
    requests.write_text(
        json.dumps(
            {
                "t": time.time(),
                "method": "GET",
                "route": "/v1/files",
                "status": 502,
                "reason": "",
                "error": "planted",
            }
        )
        + "\n"
    )
    command = [
        "--database-url",
        flow.target.database_url,
        "--redis-url",
        flow.target.redis_url,
        "--redis-prefix",
        flow.target.redis_prefix,
        "--data-dir",
        str(flow.target.data_dir),
        "--requests",
        str(requests),
    ]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.soak.invariants", *command, cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    lines = out.decode().splitlines()
    assert process.returncode == 1
    assert lines[-1] == "violations: 1"
    assert lines[0].startswith(f"{HTTP_SERVER_ERROR} GET /v1/files @")


async def test_every_plant_undone_the_checker_is_clean_again(flow: Flow) -> None:
    """Each plant above is asserted as the exact set of what is found, so one left behind would
    already show in the next; and once all are undone, nothing is."""
    assert await _found(flow) == set()

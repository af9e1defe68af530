"""The reconciliation command finds any wallet that differs from its transfers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from services.billing.reconcile import reconcile
from tests.billing.conftest import fund
from tests.harness.platform import REPO_ROOT


async def run_command(billing) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STYLESTUDIO_")} | {
        "STYLESTUDIO_SERVICE_DATABASE_URL": billing.settings.service_database_url,
    }
    command = [sys.executable, "-m", "services.billing.reconcile"]
    return await asyncio.to_thread(
        subprocess.run, command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )


async def test_a_tampered_wallet_is_reported_and_a_clean_ledger_passes(billing) -> None:
    user_id = await fund(billing.service_stub(), 5)
    clean = await run_command(billing)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "0 out of balance" in clean.stdout

    engine = create_async_engine(billing.settings.service_database_url)
    tamper = sa.text("UPDATE billing.accounts SET balance = balance + :d WHERE user_id = :u")
    try:
        async with engine.begin() as connection:
            await connection.execute(tamper, {"d": 1, "u": user_id})
        report = await reconcile(billing.service.runtime.db)
        assert [(d.user_id, d.balance, d.transfers_balance) for d in report.differences] == [(user_id, 6, 5)]
        dirty = await run_command(billing)
        assert dirty.returncode == 1 and user_id in dirty.stdout
    finally:
        async with engine.begin() as connection:
            await connection.execute(tamper, {"d": -1, "u": user_id})
        await engine.dispose()
    assert (await reconcile(billing.service.runtime.db)).balanced

"""Reconciliation: every wallet against its transfers and holds.

    stylestudio reconcile        (or: python -m services.billing.reconcile)

For each wallet, the stored balance must equal the sum of its posted transfers and
the last transfer's ``balance_after``; the stored reservation must equal both its
pending holds and what its HOLD/RELEASE/CAPTURE transfers say. Prints every
difference and the system accounts' derived balances; exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from kit.db import Database
from kit.server import command_database
from services.billing import store
from services.billing.settings import BillingSettings


@dataclass(frozen=True)
class Difference:
    user_id: str
    balance: int
    transfers_balance: int
    last_balance_after: int
    reserved: int
    transfers_reserved: int
    pending_holds: int


@dataclass(frozen=True)
class Report:
    wallets: int
    differences: list[Difference]
    system_balances: dict[str, int]

    @property
    def balanced(self) -> bool:
        # Double entry: the system accounts mirror the wallets, so everything sums to zero.
        return not self.differences


async def reconcile(db: Database) -> Report:
    async with db.transaction() as session:
        # One snapshot, so wallets, holds and transfers are compared at the same instant.
        await store.use_one_snapshot(session)
        return await reconcile_in(session)


async def reconcile_in(session: AsyncConnection) -> Report:
    """The reconciliation inside the caller's transaction (its snapshot; billing's tables on its
    search_path): for a checker that compares billing with other services at one instant."""
    rows = await store.wallet_discrepancies(session)
    wallets = await store.wallet_count(session)
    system = await store.system_balances(session)
    differences = [
        Difference(
            user_id=row["user_id"],
            balance=row["balance"],
            transfers_balance=int(row["transfers_balance"]),
            last_balance_after=int(row["last_balance_after"]),
            reserved=row["reserved"],
            transfers_reserved=int(row["transfers_reserved"]),
            pending_holds=int(row["pending_holds"]),
        )
        for row in rows
    ]
    return Report(wallets=wallets, differences=differences, system_balances=system)


async def main(argv: list[str] | None = None) -> int:
    """`stylestudio reconcile` (or `python -m services.billing.reconcile`)."""
    argparse.ArgumentParser(
        prog="stylestudio reconcile",
        description="Check every wallet against its transfers and holds; exit 1 on any difference.",
    ).parse_args(argv)
    settings = BillingSettings()
    db = command_database(settings, "billing")
    try:
        report = await reconcile(db)
    finally:
        await db.dispose()
    for d in report.differences:
        print(
            f"wallet {d.user_id}: balance {d.balance}, transfers say {d.transfers_balance} "
            f"(last balance_after {d.last_balance_after}); reserved {d.reserved}, "
            f"transfers say {d.transfers_reserved}, pending holds {d.pending_holds}"
        )
    for code, balance in sorted(report.system_balances.items()):
        print(f"system account {code}: {balance}")
    print(f"{report.wallets} wallets checked, {len(report.differences)} out of balance")
    return 0 if report.balanced else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""Billing's invariants: wallets reconcile, generations are charged once or not at all,
paid purchases are credited once.

Wallets are checked by billing's own reconciliation (services/billing/reconcile.py), run in
the checker's snapshot; the rest compares billing's holds and transfers with the generation
and purchase rows they belong to.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bench.soak.invariants.generations import GenerationFacts
from bench.soak.invariants.violations import (
    GENERATION_CHARGE,
    PURCHASE_CREDIT,
    WALLET_NEGATIVE,
    WALLET_UNRECONCILED,
    Violation,
)
from services.billing import reconcile
from services.billing.models import accounts, holds, purchases, stripe_events, transfers
from services.generation.lifecycle import Status


async def wallets(connection: AsyncConnection) -> list[Violation]:
    """Every wallet against its transfers and holds (billing's reconciliation), and none below zero."""
    # billing's queries name its tables unqualified, as its own role's search_path allows.
    await connection.execute(sa.text("SET LOCAL search_path TO billing"))
    report = await reconcile.reconcile_in(connection)
    await connection.execute(sa.text("SET LOCAL search_path TO DEFAULT"))
    found = [
        Violation(
            WALLET_UNRECONCILED,
            d.user_id,
            f"balance {d.balance}, transfers say {d.transfers_balance} (last balance_after "
            f"{d.last_balance_after}); reserved {d.reserved}, transfers say {d.transfers_reserved}, "
            f"pending holds {d.pending_holds}",
        )
        for d in report.differences
    ]
    negative = await connection.execute(
        sa.select(accounts.c.user_id, accounts.c.balance, accounts.c.reserved).where(
            accounts.c.kind == "wallet",
            sa.or_(accounts.c.balance < 0, accounts.c.reserved < 0, accounts.c.balance < accounts.c.reserved),
        )
    )
    found += [
        Violation(WALLET_NEGATIVE, row.user_id, f"balance {row.balance}, reserved {row.reserved}")
        for row in negative
    ]
    return found


async def charges(connection: AsyncConnection, generations: Sequence[GenerationFacts]) -> list[Violation]:
    """A COMPLETED generation: one capture of its hold for its cost. FAILED or CANCELED: no
    capture, no hold left pending. A capture for a generation that does not exist is one too many."""
    captures: dict[str, list[int]] = defaultdict(list)
    rows = await connection.execute(
        sa.select(transfers.c.generation_id, transfers.c.amount).where(transfers.c.kind == "CAPTURE")
    )
    for row in rows:
        captures[row.generation_id or ""].append(int(row.amount))
    holds_of: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for hold in await connection.execute(sa.select(holds.c.id, holds.c.generation_id, holds.c.status)):
        holds_of[hold.generation_id].append((str(hold.id), hold.status))

    found: list[Violation] = []
    known = set()
    for generation in generations:
        known.add(generation.id)
        problem = _charge_problem(
            generation, captures.get(generation.id, []), holds_of.get(generation.id, [])
        )
        if problem:
            found.append(Violation(GENERATION_CHARGE, generation.id, problem))
    for generation_id, amounts in captures.items():
        if generation_id not in known:
            found.append(
                Violation(
                    GENERATION_CHARGE,
                    generation_id or "(none)",
                    f"{len(amounts)} capture(s) of {sum(amounts)} tokens for no generation",
                )
            )
    return found


def _charge_problem(
    generation: GenerationFacts, captured: Sequence[int], its_holds: Iterable[tuple[str, str]]
) -> str:
    if generation.status not in (Status.COMPLETED, Status.FAILED, Status.CANCELED):
        return ""  # still running: charged or not when it ends (the deadline check covers the rest)
    pending = [hold_id for hold_id, status in its_holds if status == "pending"]
    if generation.status is Status.COMPLETED:
        if len(captured) != 1:
            return f"COMPLETED and captured {len(captured)} times ({sum(captured)} tokens)"
        if captured[0] != generation.token_cost:
            return f"COMPLETED for {generation.token_cost} tokens but captured {captured[0]}"
        if pending:
            return f"COMPLETED with hold(s) still pending: {', '.join(pending)}"
        return ""
    if captured:
        return f"{generation.status.value} but captured {len(captured)} times ({sum(captured)} tokens)"
    if pending:
        return f"{generation.status.value} with its hold still pending (not released): {', '.join(pending)}"
    return ""


async def purchases_credited(connection: AsyncConnection) -> list[Violation]:
    """Every purchase whose payment succeeded credited once with its package's tokens; no other
    purchase credited at all; no PURCHASE transfer outside a purchase."""
    credits: dict[uuid.UUID | None, list[tuple[str, int]]] = defaultdict(list)
    rows = await connection.execute(
        sa.select(transfers.c.id, transfers.c.purchase_id, transfers.c.amount).where(
            transfers.c.kind == "PURCHASE"
        )
    )
    for row in rows:
        credits[row.purchase_id].append((str(row.id), int(row.amount)))
    # Succeeded: COMPLETED now, or credited by a recorded payment_intent.succeeded and refunded since.
    paid = set(
        (
            await connection.execute(
                sa.select(stripe_events.c.purchase_id).where(
                    stripe_events.c.type == "payment_intent.succeeded", stripe_events.c.outcome == "credited"
                )
            )
        ).scalars()
    )
    found: list[Violation] = []
    listed = await connection.execute(sa.select(purchases.c.id, purchases.c.status, purchases.c.tokens))
    seen = set()
    for purchase in listed:
        seen.add(purchase.id)
        succeeded = purchase.status == "COMPLETED" or purchase.id in paid
        problem = _credit_problem(
            succeeded, purchase.status, int(purchase.tokens), credits.get(purchase.id, [])
        )
        if problem:
            found.append(Violation(PURCHASE_CREDIT, str(purchase.id), problem))
    for purchase_id, stray in credits.items():
        if purchase_id not in seen:
            for transfer_id, amount in stray:
                found.append(
                    Violation(PURCHASE_CREDIT, transfer_id, f"a PURCHASE credit of {amount} for no purchase")
                )
    return found


def _credit_problem(succeeded: bool, status: str, tokens: int, credited: Sequence[tuple[str, int]]) -> str:
    if not succeeded:
        return f"{status} (not paid) but credited {len(credited)} times" if credited else ""
    if len(credited) != 1:
        return f"paid ({status}) and credited {len(credited)} times"
    if credited[0][1] != tokens:
        return f"paid for {tokens} tokens but credited {credited[0][1]}"
    return ""

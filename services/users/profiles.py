"""Profiles and their administration: reading and editing an account, plan and role changes."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncConnection

from kit import audit
from kit.db import Database
from kit.errors import NotFound
from kit.events import Outbox
from services.users import accounts, events, store
from services.users.credentials import Credentials


def parse_user_id(raw: str, field: str = "userId") -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFound("User not found", details={"field": field}) from None


class Profiles:
    def __init__(self, db: Database, outbox: Outbox, credentials: Credentials) -> None:
        self._db = db
        self._outbox = outbox
        self._credentials = credentials

    async def get(self, user_id: uuid.UUID) -> store.Row:
        async with self._db.autocommit() as session:
            user = await store.get_user(session, user_id)
        if user is None:
            raise NotFound("User not found")
        return user

    async def update(self, user_id: uuid.UUID, *, name: str | None, image_url: str | None) -> store.Row:
        changes: dict[str, object] = {}
        if name is not None:
            changes["name"] = accounts.validate_name(name)
        if image_url is not None:
            changes["image_url"] = accounts.validate_image_url(image_url)
        async with self._db.transaction() as session:
            user = await store.get_user(session, user_id, for_update=True)
            if user is None:
                raise NotFound("User not found")
            return await store.update_user(session, user_id, **changes) if changes else user

    async def set_plan_and_role(
        self, user_id: uuid.UUID, *, plan: str | None, role: str | None, changed_by: str
    ) -> store.Row:
        """An admin's change; publishes user.plan_changed when the plan really changes."""
        changes: dict[str, object] = {}
        if plan is not None:
            changes["plan"] = accounts.validate_plan(plan)
        if role is not None:
            changes["role"] = accounts.validate_role(role)
        async with self._db.transaction() as session:
            before = await store.get_user(session, user_id, for_update=True)
            if before is None:
                raise NotFound("User not found")
            if not changes:
                return before
            after = await store.update_user(session, user_id, **changes)
            if after.plan != before.plan:
                await events.user_plan_changed(
                    self._outbox, session, user_id, before.plan, after.plan, changed_by
                )
            await audit_plan_and_role(self._outbox, session, before, after)
            state = await self._credentials.changed(session, user_id)
        # Every service honours the new plan and role from here on, tokens signed before included.
        await self._credentials.publish(user_id, state)
        return after


async def audit_plan_and_role(
    outbox: Outbox,
    session: AsyncConnection,
    before: store.Row,
    after: store.Row,
    actor: audit.Actor | None = None,
) -> None:
    """The audit log's record of a plan or role change (nothing when neither changed)."""
    target = audit.user_target(after.id)
    if after.plan != before.plan:
        details = {"previousPlan": before.plan, "plan": after.plan}
        await audit.record(outbox, session, audit.PLAN_CHANGED, target=target, details=details, actor=actor)
    if after.role != before.role:
        details = {"previousRole": before.role, "role": after.role}
        await audit.record(outbox, session, audit.ROLE_CHANGED, target=target, details=details, actor=actor)


async def promote_by_email(db: Database, outbox: Outbox, credentials: Credentials, email: str) -> store.Row:
    """Make the account with this email an admin (the command line's first-admin path)."""
    email = accounts.email_for_lookup(email)
    async with db.transaction() as session:
        user = await store.get_user_by_email(session, email)
        if user is None:
            raise NotFound("No account with this email")
        promoted = await store.update_user(session, user.id, role="admin")
        await audit_plan_and_role(outbox, session, user, promoted, audit.Actor(service=audit.OPERATOR))
        state = await credentials.changed(session, user.id)
    await credentials.publish(user.id, state)
    return promoted

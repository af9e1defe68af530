"""What the users service publishes (stream ``events.users``); it consumes nothing.

Each event is written to the outbox inside the transaction of the change it reports.
Ids and facts only: never an email or a name.
"""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncConnection

from kit.events import Outbox
from stylestudio.users.v1 import events_pb2

USER_CREATED = "user.created"
USER_LOGGED_IN = "user.logged_in"
USER_LOGGED_OUT = "user.logged_out"
USER_PLAN_CHANGED = "user.plan_changed"


async def user_created(
    outbox: Outbox, session: AsyncConnection, user_id: uuid.UUID, plan: str, method: str, network: str
) -> None:
    """``network``: the sign-up's address truncated (origins.analytics_network), never the address."""
    data = events_pb2.UserCreated(
        user_id=str(user_id), plan=plan, signup_method=method, signup_network=network
    )
    await outbox.add(session, USER_CREATED, data, user_id=str(user_id))


async def user_logged_in(
    outbox: Outbox, session: AsyncConnection, user_id: uuid.UUID, session_id: uuid.UUID, method: str
) -> None:
    data = events_pb2.UserLoggedIn(user_id=str(user_id), session_id=str(session_id), method=method)
    await outbox.add(session, USER_LOGGED_IN, data, user_id=str(user_id))


async def user_logged_out(
    outbox: Outbox, session: AsyncConnection, user_id: uuid.UUID, session_id: uuid.UUID
) -> None:
    data = events_pb2.UserLoggedOut(user_id=str(user_id), session_id=str(session_id))
    await outbox.add(session, USER_LOGGED_OUT, data, user_id=str(user_id))


async def user_plan_changed(
    outbox: Outbox, session: AsyncConnection, user_id: uuid.UUID, previous: str, plan: str, changed_by: str
) -> None:
    data = events_pb2.UserPlanChanged(
        user_id=str(user_id), previous_plan=previous, plan=plan, changed_by=changed_by
    )
    await outbox.add(session, USER_PLAN_CHANGED, data, user_id=str(user_id))

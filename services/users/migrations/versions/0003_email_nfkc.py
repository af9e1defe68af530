"""Stored emails in the form sign-in now looks them up in.

Sign-up stored an email trimmed, NFC and lower-cased; it now stores it NFKC (compatibility forms
folded: full-width letters, ligatures) in email-validator's normalised form (an IDNA domain in
Unicode), and sign-in looks an address up in that form. Printable ASCII without "xn--" is the
same in both, so only the other rows are read and, where the form differs, rewritten, so that
their owners still find their accounts. An address the validator refuses (the old rule was
looser) keeps its canonical form, which sign-in still looks up. A rewrite that would take
another account's address is left out and counted in the log (no address is logged): the two
accounts now stand for one address, for an operator to settle.

Revision ID: users_0003
Revises: users_0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import logging
import unicodedata

import sqlalchemy as sa
from alembic import op
from email_validator import EmailNotValidError, validate_email

revision = "users_0003"
down_revision = "users_0002"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")


def _lookup_form(email: str) -> str:
    """services.users.accounts.email_for_lookup as of this revision (migrations do not import
    the service's code, which moves on)."""
    canonical = unicodedata.normalize("NFKC", email.strip()).lower()
    try:
        return str(validate_email(canonical, check_deliverability=False).normalized).lower()
    except EmailNotValidError:
        return canonical


def upgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(
        sa.text("SELECT id, email FROM users.users WHERE email !~ '^[ -~]*$' OR email LIKE '%xn--%'")
    ).all()
    rewritten = left = 0
    for user_id, email in rows:
        wanted = _lookup_form(email)
        if wanted == email:
            continue
        changed = bind.execute(
            sa.text(
                "UPDATE users.users SET email = :wanted WHERE id = :id"
                " AND NOT EXISTS (SELECT 1 FROM users.users WHERE email = :wanted)"
            ),
            {"wanted": wanted, "id": user_id},
        ).rowcount
        rewritten, left = rewritten + changed, left + (1 - changed)
    if rewritten or left:
        log.warning("emails rewritten to their NFKC form: %d; left as they were (taken): %d", rewritten, left)


def downgrade() -> None:
    # The earlier form is not kept; the rewritten addresses stay valid for the older code,
    # which finds them when typed in their plain (NFKC) form.
    pass

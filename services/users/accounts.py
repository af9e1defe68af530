"""The rules of an account: plans and what they include, roles, and what a valid profile is."""

from __future__ import annotations

import functools
import re
import unicodedata
from urllib.parse import urlsplit

from email_validator import EmailNotValidError, validate_email

from kit.errors import FeatureNotInPlan, ValidationError
from kit.plans import FEATURES_BY_PLAN, PLANS, Feature

ROLES = ("user", "admin")
DEFAULT_PLAN = "free"
DEFAULT_ROLE = "user"
NAME_MAX_LENGTH = 100
EMAIL_MAX_LENGTH = 254
IMAGE_URL_MAX_LENGTH = 2048

# What sign-up accepted before email-validator: one "@", a dot in the domain, no spaces. Such
# an address can still sign in (it is looked up), though a new account cannot be made with it.
_LEGACY_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
# Longer input is refused before any Unicode work (NFKC can only grow a string so much).
_EMAIL_INPUT_MAX_LENGTH = 4 * EMAIL_MAX_LENGTH


def plan_includes(plan: str, feature: Feature) -> bool:
    return feature in FEATURES_BY_PLAN.get(plan, frozenset())


def require_feature(plan: str, feature: Feature) -> None:
    if not plan_includes(plan, feature):
        raise FeatureNotInPlan(
            f"Your plan ({plan or 'none'}) does not include {feature.value.replace('_', ' ')}",
            details={"feature": feature.value, "plan": plan},
        )


def canonical_email(raw: str) -> str:
    """The comparable form of what someone typed: trimmed, NFKC (full-width letters, ligatures
    and other compatibility forms folded into their plain letters), lower case."""
    return unicodedata.normalize("NFKC", raw.strip()).lower()


def normalize_email(raw: str) -> str:
    """The form an address is stored and looked up in, for a new account or any address taken
    in (OAuth, the admin's promote): canonical, then checked by email-validator (syntax only:
    no DNS look-up) and in its normalised form (the domain's IDNA form, e.g. xn-- as Unicode)."""
    if not raw.strip():
        raise ValidationError("Email is required", field="email")
    email = canonical_email(raw) if len(raw) <= _EMAIL_INPUT_MAX_LENGTH else raw
    if len(email) > EMAIL_MAX_LENGTH:
        raise ValidationError(f"Email must be at most {EMAIL_MAX_LENGTH} characters", field="email")
    try:
        checked = validate_email(email, check_deliverability=False)
    except EmailNotValidError as error:
        raise ValidationError(f"Email is not a valid address: {error}", field="email") from None
    return str(checked.normalized).lower()


def email_for_lookup(raw: str) -> str:
    """The address to look an existing account up by (sign-in, promote): a valid address in its
    stored form; one only the old, looser rule accepted in its canonical form, so that an account
    made before can still be found (see migration users_0003); anything else is refused."""
    try:
        return normalize_email(raw)
    except ValidationError:
        email = canonical_email(raw) if len(raw) <= _EMAIL_INPUT_MAX_LENGTH else raw
        if len(email) <= EMAIL_MAX_LENGTH and _LEGACY_EMAIL.match(email) and email.isprintable():
            return email
        raise


def validate_name(raw: str) -> str:
    name = raw.strip()
    if not name:
        raise ValidationError("Name is required", field="name")
    if len(name) > NAME_MAX_LENGTH or not name.isprintable():
        raise ValidationError(f"Name must be 1 to {NAME_MAX_LENGTH} printable characters", field="name")
    return name


def validate_image_url(raw: str) -> str:
    """An https URL, or empty to remove the avatar."""
    url = raw.strip()
    if not url:
        return ""
    parts = urlsplit(url)
    if len(url) > IMAGE_URL_MAX_LENGTH or parts.scheme != "https" or not parts.netloc or " " in url:
        raise ValidationError("Image URL must be an https URL", field="imageUrl")
    return url


def validate_plan(plan: str) -> str:
    if plan not in PLANS:
        raise ValidationError(f"Plan must be one of {', '.join(PLANS)}", field="plan")
    return plan


def validate_role(role: str) -> str:
    if role not in ROLES:
        raise ValidationError(f"Role must be one of {', '.join(ROLES)}", field="role")
    return role


def check_password_policy(password: str, *, min_length: int, max_length: int, email: str = "") -> None:
    """Long enough, not absurdly long (hashing cost), not the email, not a common password."""
    if len(password) < min_length:
        raise ValidationError(f"Password must be at least {min_length} characters", field="password")
    if len(password) > max_length:
        raise ValidationError(f"Password must be at most {max_length} characters", field="password")
    if not password.strip():
        raise ValidationError("Password cannot be only spaces", field="password")
    if email and password.strip().lower() == email:
        raise ValidationError("Password cannot be your email address", field="password")
    if is_common_password(password):
        raise ValidationError(
            "This password is one of the most common ones, which are tried first; choose another",
            field="password",
        )


def is_common_password(password: str) -> bool:
    """In the list of common passwords, whatever its case, width or surrounding spaces."""
    return unicodedata.normalize("NFKC", password.strip()).casefold() in common_passwords()


@functools.cache
def common_passwords() -> frozenset[str]:
    """The 30,000 most common passwords of leaked lists, as zxcvbn ships them (lower case);
    loaded once per process (about 50 ms), at start-up (see service.py)."""
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(FREQUENCY_LISTS["passwords"])

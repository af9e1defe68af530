"""The rules of an account: plans and what they include, roles, and what a valid profile is."""

from __future__ import annotations

import enum
import re
import unicodedata
from urllib.parse import urlsplit

from kit.errors import FeatureNotInPlan, ValidationError

PLANS = ("free", "basic", "pro", "enterprise")
ROLES = ("user", "admin")
DEFAULT_PLAN = "free"
DEFAULT_ROLE = "user"
NAME_MAX_LENGTH = 100
EMAIL_MAX_LENGTH = 254
IMAGE_URL_MAX_LENGTH = 2048

# Deliberately simple: one "@", a dot in the domain, no spaces or control characters. Whether
# the mailbox exists is for a verification mail to find out, not for a regular expression.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")


class Feature(enum.StrEnum):
    BATCH_PROCESSING = "batch_processing"
    API_ACCESS = "api_access"
    ADVANCED_ANALYTICS = "advanced_analytics"


# The seed's feature flags: batch and API access from pro up, advanced analytics for enterprise.
FEATURES_BY_PLAN: dict[str, frozenset[Feature]] = {
    "free": frozenset(),
    "basic": frozenset(),
    "pro": frozenset({Feature.BATCH_PROCESSING, Feature.API_ACCESS}),
    "enterprise": frozenset({Feature.BATCH_PROCESSING, Feature.API_ACCESS, Feature.ADVANCED_ANALYTICS}),
}


def plan_includes(plan: str, feature: Feature) -> bool:
    return feature in FEATURES_BY_PLAN.get(plan, frozenset())


def require_feature(plan: str, feature: Feature) -> None:
    if not plan_includes(plan, feature):
        raise FeatureNotInPlan(
            f"Your plan ({plan or 'none'}) does not include {feature.value.replace('_', ' ')}",
            details={"feature": feature.value, "plan": plan},
        )


def normalize_email(raw: str) -> str:
    """The form an email is stored and looked up in: trimmed, NFC, lower case."""
    email = unicodedata.normalize("NFC", raw.strip()).lower()
    if not email:
        raise ValidationError("Email is required", field="email")
    if len(email) > EMAIL_MAX_LENGTH or not _EMAIL.match(email) or not email.isprintable():
        raise ValidationError("Email is not a valid address", field="email")
    return email


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
    """The minimum policy: long enough, not absurdly long (hashing cost), not the email itself."""
    if len(password) < min_length:
        raise ValidationError(f"Password must be at least {min_length} characters", field="password")
    if len(password) > max_length:
        raise ValidationError(f"Password must be at most {max_length} characters", field="password")
    if not password.strip():
        raise ValidationError("Password cannot be only spaces", field="password")
    if email and password.strip().lower() == email:
        raise ValidationError("Password cannot be your email address", field="password")

"""The plans and the features each includes: one table for every service.

Users decides with it (API keys need API access) and shows it (the entitlements); the
generation service's batch plans and analytics' advanced-analytics plans default to what it
says. The plans' numeric limits stay with the service that counts them (hourly generations:
generation's settings; storage quotas: files' settings), which the entitlements ask.
"""

from __future__ import annotations

import enum

PLANS = ("free", "basic", "pro", "enterprise")


class Feature(enum.StrEnum):
    BATCH = "batch"
    API_ACCESS = "api_access"
    ADVANCED_ANALYTICS = "advanced_analytics"


# The seed's feature flags: batch and API access from pro up, advanced analytics for enterprise.
FEATURES_BY_PLAN: dict[str, frozenset[Feature]] = {
    "free": frozenset(),
    "basic": frozenset(),
    "pro": frozenset({Feature.BATCH, Feature.API_ACCESS}),
    "enterprise": frozenset({Feature.BATCH, Feature.API_ACCESS, Feature.ADVANCED_ANALYTICS}),
}


def features_of(plan: str) -> list[str]:
    """The plan's features, in the table's order (an unknown plan has none)."""
    included = FEATURES_BY_PLAN.get(plan, frozenset())
    return [feature.value for feature in Feature if feature in included]


def plans_with(feature: Feature) -> list[str]:
    return [plan for plan in PLANS if feature in FEATURES_BY_PLAN[plan]]

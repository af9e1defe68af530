"""The analytics service: The usage log fed by every service's events, metrics and system analytics."""

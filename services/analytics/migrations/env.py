from kit.migrations import run_migrations
from services.analytics.models import metadata

run_migrations(metadata)

from kit.migrations import run_migrations
from services.generation.models import metadata

run_migrations(metadata)

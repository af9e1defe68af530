from kit.migrations import run_migrations
from services.users.models import metadata

run_migrations(metadata)

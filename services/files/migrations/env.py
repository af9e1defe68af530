from kit.migrations import run_migrations
from services.files.models import metadata

run_migrations(metadata)

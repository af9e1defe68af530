#!/bin/sh
# Writes PgBouncer's auth file from each service role's password (the same variables provisioning
# reads), then runs pgbouncer with the given arguments (the ini file).
set -eu
userlist=${PGBOUNCER_AUTH_FILE:-/run/pgbouncer/userlist.txt}
umask 077
: >"$userlist"
for service in users billing files generation analytics; do
    variable="STYLESTUDIO_$(printf '%s' "$service" | tr '[:lower:]' '[:upper:]')_DB_PASSWORD"
    password=$(printenv "$variable" || true)
    if [ -z "$password" ]; then
        echo "pgbouncer: $variable is not set (docs/operations.md)" >&2
        exit 78
    fi
    # The file's format: "name" "password", a double quote doubled.
    printf '"stylestudio_%s" "%s"\n' "$service" "$(printf '%s' "$password" | sed 's/"/""/g')" >>"$userlist"
done
exec pgbouncer "$@"

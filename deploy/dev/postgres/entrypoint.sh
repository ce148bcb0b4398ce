#!/bin/sh
# The part of the official postgres image's entrypoint deploy/dev relies on: on a first start
# (no $PGDATA/PG_VERSION) initdb with POSTGRES_USER as superuser and POSTGRES_PASSWORD, password
# logins (scram-sha-256) from the network, and POSTGRES_DB created; then run postgres listening
# on every address.
set -eu
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
POSTGRES_USER="${POSTGRES_USER:-postgres}"
POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"

if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
	mkdir -p "$PGDATA"
	chmod 0700 "$PGDATA"
	pwfile="$(mktemp)"
	printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
	initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust \
		--auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
	rm -f "$pwfile"
	echo 'host all all all scram-sha-256' >>"$PGDATA/pg_hba.conf"
	if [ "$POSTGRES_DB" != postgres ]; then
		# Only the socket while the database is made: nothing connects before it exists.
		pg_ctl --wait --silent -o "-c listen_addresses=''" start
		# From stdin: psql quotes the name (:"db") there, not in -c.
		echo 'CREATE DATABASE :"db"' | psql --no-psqlrc --quiet -v ON_ERROR_STOP=1 \
			--username="$POSTGRES_USER" --dbname=postgres --set=db="$POSTGRES_DB"
		pg_ctl --wait --silent -m fast stop
	fi
	echo "entrypoint: initialised $PGDATA (superuser $POSTGRES_USER, database $POSTGRES_DB)"
fi

if [ "${1:-}" = postgres ]; then
	shift
	exec postgres -c listen_addresses='*' "$@"
fi
exec "$@"

#!/bin/sh
# Entrypoint of the local PostgreSQL image (switchboard_testkit::node::images):
# the official `postgres` image's env contract, which the operator's
# StatefulSet relies on (it sets no command), on a read-only root
# filesystem with emptyDirs at /tmp and /var/run/postgresql.
#
#   POSTGRES_PASSWORD  required: the superuser's password
#   POSTGRES_USER      superuser (default postgres)
#   POSTGRES_DB        database created at initialisation (default: the user)
#   PGDATA             data directory (default /var/lib/postgresql/data)
#
# On an empty PGDATA: initdb (UTF8, locale C, scram-sha-256), trust only on
# the local socket, password logins from any host; then
# `exec postgres -c listen_addresses=*`, so SIGTERM reaches postgres.
# Other commands (`psql`, …) run as given. Needs only dash and rm.
set -eu

die() {
  echo "postgres-entrypoint: $*" >&2
  exit 1
}

[ "$#" -gt 0 ] || set -- postgres
[ "$1" = postgres ] || exec "$@"

: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
export PGDATA

# Names go into SQL unquoted: lower-case letters, digits, underscore.
for v in POSTGRES_USER POSTGRES_DB; do
  eval "val=\$$v"
  case $val in
    '' | [0-9]* | *[!a-z0-9_]*) die "$v='$val': use 1-63 lower-case letters, digits or _, not starting with a digit" ;;
  esac
  [ "${#val}" -le 63 ] || die "$v: at most 63 characters"
done

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  [ -n "${POSTGRES_PASSWORD:-}" ] ||
    die "POSTGRES_PASSWORD is empty or unset: refusing to initialise $PGDATA without a superuser password"
  pwdir=${TMPDIR:-/tmp}
  pwfile="$pwdir/postgres-entrypoint.pw.$$"
  (umask 077 && printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile") ||
    die "cannot write the password file in $pwdir (mount a writable volume there)"
  # Never leave the password behind, whatever happens.
  trap 'rm -f "$pwfile"' EXIT
  initdb --username="$POSTGRES_USER" --pwfile="$pwfile" \
    --encoding=UTF8 --locale=C \
    --auth-local=trust --auth-host=scram-sha-256 >&2
  rm -f "$pwfile"
  trap - EXIT
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  if [ "$POSTGRES_DB" != postgres ]; then
    echo "CREATE DATABASE $POSTGRES_DB OWNER $POSTGRES_USER;" |
      postgres --single -D "$PGDATA" -c listen_addresses= postgres >/dev/null
  fi
  echo "postgres-entrypoint: initialised $PGDATA (user $POSTGRES_USER, database $POSTGRES_DB)" >&2
fi

exec "$@" -c listen_addresses='*'

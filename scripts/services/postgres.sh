# shellcheck shell=bash
# PostgreSQL for the tests of the outbox's PostgresStore (resilient_smtp.outbox).
#
# Sourced by scripts/test (with `set -euo pipefail` in effect): installs
# Debian's postgresql if missing (its own cluster on 5432 is left alone),
# starts a throw-away cluster owned by the postgres user in a temp dir on
# 127.0.0.1:15432 (trust authentication on loopback only), waits until it
# accepts connections, creates the database resilient_smtp and exports
# RESILIENT_SMTP_PG_URL.  A server already answering on the port is reused,
# so sourcing this twice is harmless.  It is left running; with
# service_action=stop (bash scripts/test --stop) it is stopped instead.  Not
# root and no PostgreSQL: says so and exports nothing, and the PostgreSQL
# tests skip with the reason.

_pg_port=${RESILIENT_SMTP_PG_PORT:-15432}
_pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
_pg_dir="${TMPDIR:-/tmp}/resilient_smtp-pg-$_pg_port"

# PostgreSQL refuses to run as root: as root, run it as the postgres user.
_pg_as() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

if [ "${service_action:-start}" = stop ]; then
  if [ -n "$_pg_bin" ] && [ -s "$_pg_dir/postmaster.pid" ]; then
    _pg_as "$_pg_bin/pg_ctl" -D "$_pg_dir" -m fast -w stop >/dev/null
    echo "PostgreSQL on 127.0.0.1:$_pg_port stopped"
  else
    echo "no PostgreSQL of ours running on 127.0.0.1:$_pg_port ($_pg_dir)"
  fi
  unset _pg_port _pg_bin _pg_dir
  unset -f _pg_as
  return 0 2>/dev/null || exit 0
fi

if [ -z "$_pg_bin" ] || [ ! -x "$_pg_bin/initdb" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing postgresql"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    _pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  else
    echo "PostgreSQL not found: the PostgreSQL tests will be skipped (as root: apt-get install postgresql)" >&2
    unset _pg_port _pg_bin _pg_dir
    unset -f _pg_as
    return 0 2>/dev/null || exit 0
  fi
fi

if ! "$_pg_bin/pg_isready" -q -h 127.0.0.1 -p "$_pg_port"; then
  if [ ! -s "$_pg_dir/PG_VERSION" ]; then
    rm -rf "$_pg_dir"
    mkdir -p "$_pg_dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$_pg_dir"
    _pg_as "$_pg_bin/initdb" -D "$_pg_dir" -U postgres -A trust --no-sync >/dev/null
  fi
  # The socket goes in the data dir: /var/run/postgresql may not exist.
  _pg_as "$_pg_bin/pg_ctl" -D "$_pg_dir" -l "$_pg_dir/log" -w -t 30 \
    -o "-h 127.0.0.1 -p $_pg_port -k $_pg_dir -c fsync=off" start >/dev/null
  _pg_ok=0
  for _ in $(seq 1 100); do
    if "$_pg_bin/pg_isready" -q -h 127.0.0.1 -p "$_pg_port"; then
      _pg_ok=1
      break
    fi
    sleep 0.1
  done
  if [ "$_pg_ok" != 1 ]; then
    echo "PostgreSQL did not answer on 127.0.0.1:$_pg_port within 10 s" >&2
    return 1 2>/dev/null || exit 1
  fi
fi
if ! "$_pg_bin/psql" -h 127.0.0.1 -p "$_pg_port" -U postgres -tAc \
  "SELECT 1 FROM pg_database WHERE datname = 'resilient_smtp'" | grep -q 1; then
  "$_pg_bin/createdb" -h 127.0.0.1 -p "$_pg_port" -U postgres resilient_smtp
fi
echo "PostgreSQL answering on 127.0.0.1:$_pg_port"
export RESILIENT_SMTP_PG_URL="postgresql://postgres@127.0.0.1:$_pg_port/resilient_smtp"
services_running+=("PostgreSQL on 127.0.0.1:$_pg_port")
unset _pg_port _pg_bin _pg_dir _pg_ok
unset -f _pg_as

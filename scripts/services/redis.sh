# shellcheck shell=bash
# Redis for the tests of resilient_smtp.redis (shared limits and health).
#
# Sourced by scripts/test (with `set -euo pipefail` in effect): installs
# Debian's redis-server if missing (as root), starts it on 127.0.0.1:16379
# with no persistence (nothing to keep between runs), waits until it answers
# PING, and exports RESILIENT_SMTP_REDIS_URL for the tests.  A server already
# answering on that port is reused, so sourcing this twice is harmless.  It
# is left running; with service_action=stop (bash scripts/test --stop) it is
# shut down instead.  Not root and no redis-server: says so and exports
# nothing, and the Redis tests skip with the reason.

_rs_port=${RESILIENT_SMTP_REDIS_PORT:-16379}

if [ "${service_action:-start}" = stop ]; then
  if command -v redis-cli >/dev/null 2>&1 &&
    redis-cli -h 127.0.0.1 -p "$_rs_port" ping 2>/dev/null | grep -q PONG; then
    redis-cli -h 127.0.0.1 -p "$_rs_port" shutdown nosave >/dev/null 2>&1 || true
    echo "redis-server on 127.0.0.1:$_rs_port stopped"
  else
    echo "no redis-server answering on 127.0.0.1:$_rs_port"
  fi
  unset _rs_port
  return 0 2>/dev/null || exit 0
fi

_rs_bin=$(command -v redis-server 2>/dev/null || true)
if [ -z "$_rs_bin" ] || [ ! -x "$_rs_bin" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing redis-server"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
    # Debian may start its own instance on 6379; ours runs on its own port.
  else
    echo "redis-server not found: the Redis tests will be skipped (as root: apt-get install redis-server)" >&2
    unset _rs_port _rs_bin
    return 0 2>/dev/null || exit 0
  fi
fi

if ! redis-cli -h 127.0.0.1 -p "$_rs_port" ping 2>/dev/null | grep -q PONG; then
  redis-server --port "$_rs_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --logfile "${TMPDIR:-/tmp}/resilient_smtp-redis-$_rs_port.log" >/dev/null
  # Wait until it answers (at most 10 s).
  _rs_ok=0
  for _ in $(seq 1 100); do
    if redis-cli -h 127.0.0.1 -p "$_rs_port" ping 2>/dev/null | grep -q PONG; then
      _rs_ok=1
      break
    fi
    sleep 0.1
  done
  if [ "$_rs_ok" != 1 ]; then
    echo "redis-server did not answer on 127.0.0.1:$_rs_port within 10 s" >&2
    return 1 2>/dev/null || exit 1
  fi
fi
echo "redis-server answering on 127.0.0.1:$_rs_port"
services_running+=("Redis on 127.0.0.1:$_rs_port")
export RESILIENT_SMTP_REDIS_URL="redis://127.0.0.1:$_rs_port/0"
unset _rs_port _rs_ok _rs_bin

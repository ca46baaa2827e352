# shellcheck shell=bash
# Postfix for the pushback tests and benchmarks: the package only.
#
# Sourced by scripts/test (with `set -euo pipefail` in effect).  Installs
# Debian's postfix package when it is missing and we are root, without
# configuring or starting the system's Postfix ("No configuration"); the
# tests and bench/bench_pushback.py start private instances of their own
# (tests/_postfix_server.py: own config_directory and queue under a temporary
# directory, smtpd on a 127.0.0.1 port, mail discarded).  The package also
# brings smtp-sink.  Nothing is started here, so `--stop` has nothing to do.

if [ "${service_action:-start}" != stop ] && ! command -v postfix >/dev/null 2>&1 && [ ! -x /usr/sbin/postfix ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing postfix (not configured, not started)"
    echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postfix >/dev/null
  else
    echo "postfix not found: the private-Postfix tests will be skipped (as root: apt-get install postfix)" >&2
  fi
fi
if command -v postconf >/dev/null 2>&1 || [ -x /usr/sbin/postconf ]; then
  echo "postfix $(/usr/sbin/postconf -dh mail_version 2>/dev/null || echo '?') available for private instances"
fi

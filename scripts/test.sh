#!/usr/bin/env bash
# The whole test suite, on a fresh machine or in CI: starts (installing if missing) every
# service the tests use, then runs formatting, lint and all tests of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Redis on 127.0.0.1:6379 for the example API's shared cache and rate limits.
if ! (command -v redis-cli >/dev/null && redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG); then
  command -v redis-server >/dev/null || apt_install redis-server
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/redline-ci-redis.log
  for _ in $(seq 1 50); do
    redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG && break
    sleep 0.1
  done
  redis-cli -h 127.0.0.1 -p 6379 ping | grep -q PONG
fi

# The example API's PostgreSQL tests start their own primary and standby (initdb, pg_ctl,
# pg_basebackup) from Debian's server packages.
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || apt_install postgresql

# The alert e-mail tests: a real SMTP server (Python aiosmtpd), openssl for its test
# certificate, and a font for the text of the inline PNG charts (resvg).
python3 -c 'import aiosmtpd' 2>/dev/null || python3 -m pip install -q aiosmtpd
command -v openssl >/dev/null || apt_install openssl
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || apt_install fonts-dejavu-core

# RED in Prometheus form: the tests start Debian's Prometheus themselves (remote-write receiver
# and scraping /metrics/red).
command -v prometheus >/dev/null || apt_install --no-install-recommends prometheus

# The dashboard's browser tests: Debian's headless Chromium and its WebDriver.
[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || apt_install chromium chromium-driver

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace

#!/bin/sh
# Installs Debian's redis-server (and redis-cli) for the shared-state tests (tests/test_redis_state.py,
# tests/test_scale_envoy.py): from apt, never downloaded from elsewhere.
# Installs only what is missing; as non-root it prints the apt-get command and fails instead.
set -eu

command -v redis-server >/dev/null 2>&1 && exit 0

cmd="apt-get install -y --no-install-recommends redis-server"
if [ "$(id -u)" -ne 0 ]; then
    echo "redis-server is missing (the Redis tests need it); run: sudo apt-get update && sudo $cmd" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "redis-server is missing and this is not a Debian-family system: install Redis 7 (or Valkey) so that" \
         "redis-server is on PATH" >&2
    exit 1
fi
echo "installing: redis-server" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive $cmd >/dev/null

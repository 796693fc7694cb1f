#!/usr/bin/env bash
# Run the whole test suite: PostgreSQL is started on loopback for the integration tests,
# functional tests boot real QEMU guests through libvirt.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${STRATUS_TEST_POSTGRES_URL:-}" ]; then
  STRATUS_TEST_POSTGRES_URL=$(scripts/postgres.sh start)
  export STRATUS_TEST_POSTGRES_URL
  trap 'scripts/postgres.sh stop' EXIT
fi
.venv/bin/pytest --cov --cov-report=term --cov-fail-under=${STRATUS_COV_MIN:-70} -p no:cacheprovider "$@"

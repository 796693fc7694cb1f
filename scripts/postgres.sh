#!/usr/bin/env bash
# Start a PostgreSQL cluster on loopback for the tests and print its URL.
# Usage: scripts/postgres.sh start|stop
set -euo pipefail
PORT=${STRATUS_TEST_PG_PORT:-55432}
DIR=${STRATUS_TEST_PG_DIR:-/var/tmp/stratus-test-pg}
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
case "${1:-start}" in
  start)
    if [ ! -f "$DIR/PG_VERSION" ]; then
      mkdir -p "$DIR"; chown postgres "$DIR"
      su postgres -s /bin/sh -c "$BIN/initdb -D $DIR -A trust -U postgres >/dev/null"
    fi
    if ! su postgres -s /bin/sh -c "$BIN/pg_ctl -D $DIR status" >/dev/null 2>&1; then
      su postgres -s /bin/sh -c "$BIN/pg_ctl -D $DIR -l $DIR/server.log -w -o '-k /tmp -h 127.0.0.1 -p $PORT' start" >/dev/null
    fi
    echo "postgresql://postgres@127.0.0.1:$PORT/postgres"
    ;;
  stop)
    su postgres -s /bin/sh -c "$BIN/pg_ctl -D $DIR -m fast stop" >/dev/null 2>&1 || true
    ;;
esac

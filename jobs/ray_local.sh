#!/usr/bin/env bash
# Start or stop a local single-node Ray cluster on loopback, token authentication on.
#   jobs/ray_local.sh start [NUM_CPUS]   |   jobs/ray_local.sh stop
# Prints nothing secret: the token lives in ~/.ray/auth_token (ray get-auth-token --generate).
set -euo pipefail
export RAY_AUTH_MODE=token
case "${1:-start}" in
  start)
    ray get-auth-token --generate >/dev/null
    ray start --head --node-ip-address=127.0.0.1 --port="${RAY_PORT:-6379}" \
      --dashboard-host=127.0.0.1 --dashboard-port="${RAY_DASHBOARD_PORT:-8265}" \
      --num-cpus="${2:-$(nproc)}" --disable-usage-stats >/dev/null
    echo "[ray] local head up: dashboard and job API at http://127.0.0.1:${RAY_DASHBOARD_PORT:-8265}" ;;
  stop)
    ray stop --force >/dev/null 2>&1 || true
    echo "[ray] stopped" ;;
  *) echo "usage: $0 start [NUM_CPUS] | stop" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# A local single-node Ray head on loopback, token authentication on, that minds its own business
# (other Ray clusters may run on the same machine):
#   jobs/ray_local.sh start [NUM_CPUS]   |   jobs/ray_local.sh stop   |   jobs/ray_local.sh address
# start: every port the head listens on is a free one (RAY_PORT / RAY_DASHBOARD_PORT pin the GCS and
#   dashboard ports; a busy one is refused, naming it), Ray's files go to a temp dir of its own (Ray's
#   machine-wide /tmp/ray/ray_current_cluster, what other users' `ray.init()` joins, is left alone), and
#   the job API address is recorded in runs/.ray-local/address (jobs/submit.sh reads it).
# stop: stops that head only. The head runs as `ray start --block`, whose own SIGTERM handler stops the
#   processes of that node; never `ray stop`, which stops every Ray process on the machine.
# Needs: `ray` and `python` of .venv on PATH (source .venv/bin/activate). Prints nothing secret: the
# token lives in ~/.ray/auth_token (ray get-auth-token --generate) or RAY_AUTH_TOKEN.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_AUTH_MODE=token
state=${RAY_LOCAL_STATE:-runs/.ray-local}

running() { [ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null; }

case "${1:-start}" in
  start)
    if running; then
      echo "[ray] local head already up: job API at $(cat "$state/address")"
      exit 0
    fi
    rm -f "$state/pid" "$state/address" "$state/gcs_address"
    mkdir -p "$state"
    # Free ports (kept bound together while chosen, so they differ), or the pinned ones if free.
    ports=$(python - <<'EOF'
import os, socket, sys
held, out = [], []
for env in ["RAY_PORT", "RAY_DASHBOARD_PORT"] + [None] * 7:
    s = socket.socket()
    want = int(os.environ[env]) if env and os.environ.get(env) else 0
    try:
        s.bind(("127.0.0.1", want))
    except OSError:
        sys.exit(f"[ray] port {want} ({env}) is busy: another process (another Ray?) listens there; "
                 f"unset {env} for a free one")
    held.append(s)
    out.append(str(s.getsockname()[1]))
print(" ".join(out))
EOF
)
    read -r gcs dash client agent agent_grpc metrics env_agent node_manager object_manager <<< "$ports"
    temp_dir=$(mktemp -d /tmp/ssagan-ray-XXXXXX)  # short: Ray's socket paths live under it
    echo "$temp_dir" > "$state/temp_dir"
    ray get-auth-token --generate >/dev/null
    setsid ray start --head --block --node-ip-address=127.0.0.1 --port="$gcs" \
      --dashboard-host=127.0.0.1 --dashboard-port="$dash" --ray-client-server-port="$client" \
      --dashboard-agent-listen-port="$agent" --dashboard-agent-grpc-port="$agent_grpc" \
      --metrics-export-port="$metrics" --runtime-env-agent-port="$env_agent" \
      --node-manager-port="$node_manager" --object-manager-port="$object_manager" \
      --temp-dir="$temp_dir" --num-cpus="${2:-$(nproc)}" --disable-usage-stats \
      >"$state/head.log" 2>&1 </dev/null &
    echo $! > "$state/pid"
    echo "[ray] starting a local head (GCS 127.0.0.1:$gcs, dashboard $dash; log $state/head.log)"
    for _ in $(seq 180); do
      if ! running; then
        echo "[ray] the head exited while starting; the end of $state/head.log:" >&2
        tail -n 20 "$state/head.log" >&2
        exit 1
      fi
      if [ -f "$temp_dir/ray_current_cluster" ] && (exec 3<>"/dev/tcp/127.0.0.1/$dash") 2>/dev/null; then
        echo "127.0.0.1:$gcs" > "$state/gcs_address"
        echo "http://127.0.0.1:$dash" > "$state/address"
        echo "[ray] local head up: dashboard and job API at http://127.0.0.1:$dash (recorded in $state/address)"
        exit 0
      fi
      sleep 1
    done
    echo "[ray] the head did not come up in 180 s; stopping it (log: $state/head.log)" >&2
    "$0" stop >&2
    exit 1 ;;
  stop)
    if ! running; then
      echo "[ray] no local head of this repository is running ($state)"
    else
      pid=$(cat "$state/pid")
      kill -TERM "$pid"
      for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      # `ray start` led its own process group (setsid): whatever is left in that group is this head's.
      kill -TERM -- "-$pid" 2>/dev/null && sleep 2 && kill -KILL -- "-$pid" 2>/dev/null || true
      echo "[ray] local head stopped (pid $pid; other Ray clusters on this machine untouched)"
    fi
    [ -f "$state/temp_dir" ] && rm -rf "$(cat "$state/temp_dir")"
    rm -f "$state/pid" "$state/address" "$state/gcs_address" "$state/temp_dir" ;;
  address)
    running && cat "$state/address" || { echo "[ray] no local head running: jobs/ray_local.sh start" >&2; exit 1; } ;;
  *) echo "usage: $0 start [NUM_CPUS] | stop | address" >&2; exit 2 ;;
esac

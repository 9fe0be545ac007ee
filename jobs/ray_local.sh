#!/usr/bin/env bash
# A local single-node Ray head on loopback, token authentication on, that minds its own business
# (other Ray clusters may run on the same machine):
#   jobs/ray_local.sh start [NUM_CPUS] | stop | address | status
# start: every port the head listens on is a free one (RAY_PORT / RAY_DASHBOARD_PORT pin the GCS and
#   dashboard ports; a busy one is refused, naming it), Ray's files go to a temp dir of its own (Ray's
#   machine-wide /tmp/ray/ray_current_cluster, what other users' `ray.init()` joins, is left alone), and
#   the job API address is recorded in runs/.ray-local/address (jobs/submit.sh reads it).
# stop: stops that head only. The head runs as `ray start --block`, whose own SIGTERM handler stops the
#   processes of that node; never `ray stop`, which stops every Ray process on the machine. The state
#   files are not trusted: the recorded pid is signalled only while /proc/PID/cmdline is this head's
#   (`ray start --head` with the recorded --port and --temp-dir; after a reboot or pid reuse it is some
#   other process, left alone), and the only folder ever deleted is a temp dir of the pattern this
#   script makes (/tmp/ssagan-ray-XXXXXX, a real folder of this user) that no live process uses.
# Needs: `ray` and `python` of .venv on PATH (source .venv/bin/activate). Prints nothing secret: the
# token lives in ~/.ray/auth_token (ray get-auth-token --generate) or RAY_AUTH_TOKEN.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_AUTH_MODE=token
state=${RAY_LOCAL_STATE:-runs/.ray-local}

TEMP_PATTERN='^/tmp/ssagan-ray-[A-Za-z0-9]{6}$'  # what `mktemp -d /tmp/ssagan-ray-XXXXXX` below makes

recorded() { [ -f "$state/$1" ] && head -c 4096 "$state/$1" | head -n 1; }
cmdline() { tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null; }
our_temp_dir() {  # the recorded temp dir, if it has the shape this script gives it and is this user's folder
  local dir
  dir=$(recorded temp_dir) || return 1
  [[ $dir =~ $TEMP_PATTERN ]] && [ -d "$dir" ] && [ ! -L "$dir" ] && [ -O "$dir" ] && echo "$dir"
}
# True while the recorded pid is this repository's head: a `ray start --head` whose command line
# carries the recorded temp dir (unique to one head) and GCS port (a pid alone may be anyone's now).
running() {
  local pid port dir cmd
  pid=$(recorded pid) && [[ $pid =~ ^[1-9][0-9]*$ ]] || return 1
  dir=$(our_temp_dir) || return 1
  cmd=" $(cmdline "$pid") " || return 1
  [[ $cmd == *" start "* && $cmd == *" --head "* && $cmd == *" --temp-dir=$dir "* ]] || return 1
  if port=$(recorded port); then  # (state written before the port was recorded has none)
    [[ $port =~ ^[1-9][0-9]*$ && $cmd == *" --port=$port "* ]] || return 1
  fi
}
alive() {  # pid $1 exists and is not a zombie (exited, not yet reaped by its parent)
  kill -0 "$1" 2>/dev/null && [ "$(sed -E 's/.*\) (.).*/\1/' "/proc/$1/stat" 2>/dev/null)" != Z ]
}
in_use() {  # a live process has folder $1 (or a path in it) as an argument: its head or an orphan of it
  # (-z: one argument per record; the pattern does not match grep's own argument, which holds "(")
  grep -qszE -- "(^|=)$1(/.*)?$" /proc/[0-9]*/cmdline
}

case "${1:-start}" in
  start)
    if running; then
      echo "[ray] local head already up: job API at $(cat "$state/address")"
      exit 0
    fi
    rm -f "$state/pid" "$state/address" "$state/gcs_address" "$state/port" "$state/temp_dir"
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
    echo "$gcs" > "$state/port"
    ray get-auth-token --generate >/dev/null
    setsid ray start --head --block --node-ip-address=127.0.0.1 --port="$gcs" \
      --dashboard-host=127.0.0.1 --dashboard-port="$dash" --ray-client-server-port="$client" \
      --dashboard-agent-listen-port="$agent" --dashboard-agent-grpc-port="$agent_grpc" \
      --metrics-export-port="$metrics" --runtime-env-agent-port="$env_agent" \
      --node-manager-port="$node_manager" --object-manager-port="$object_manager" \
      --temp-dir="$temp_dir" --num-cpus="${2:-$(nproc)}" --disable-usage-stats \
      >"$state/head.log" 2>&1 </dev/null &
    pid=$!  # our own child: trusted here, in the invocation that started it
    echo "$pid" > "$state/pid"
    echo "[ray] starting a local head (GCS 127.0.0.1:$gcs, dashboard $dash; log $state/head.log)"
    for _ in $(seq 180); do
      if ! kill -0 "$pid" 2>/dev/null; then
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
    if running; then
      pid=$(recorded pid)
      kill -TERM "$pid"
      for _ in $(seq 60); do alive "$pid" || break; sleep 1; done
      # `ray start` led its own process group (setsid): whatever is left in that group is this head's.
      kill -TERM -- "-$pid" 2>/dev/null && sleep 2 && kill -KILL -- "-$pid" 2>/dev/null || true
      echo "[ray] local head stopped (pid $pid; other Ray clusters on this machine untouched)"
    elif pid=$(recorded pid) && [ -n "$pid" ]; then
      echo "[ray] no local head of this repository is running ($state): recorded pid $pid is not its" \
           "ray head (exited, or the pid now belongs to another process); nothing signalled"
    else
      echo "[ray] no local head of this repository is running ($state)"
    fi
    if dir=$(our_temp_dir) && ! in_use "$dir"; then
      rm -rf -- "$dir"
    elif dir=$(recorded temp_dir) && [ -n "$dir" ] && [ -e "$dir" ]; then
      echo "[ray] left $dir alone: not a temp dir of this script's pattern and this user, or still in use" >&2
    fi
    rm -f "$state/pid" "$state/address" "$state/gcs_address" "$state/temp_dir" "$state/port" ;;
  status)  # exit 0 while this repository's head runs (make clean keeps its state then)
    running ;;
  address)
    running && cat "$state/address" || { echo "[ray] no local head running: jobs/ray_local.sh start" >&2; exit 1; } ;;
  *) echo "usage: $0 start [NUM_CPUS] | stop | address | status" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Submit a module of this project as a Ray job to a cluster, with the repository as working dir.
#   RAY_ADDRESS=http://HEAD:8265 jobs/submit.sh ssagan_dist.train --config paper/ssagan_sky128 scaling.ranks=16
#   jobs/submit.sh ssagan_dist.evaluate --checkpoint s3://ssagan-runs/ssagan_sky128 --data s3://sky-timelapse/test
# The cluster: RAY_ADDRESS (its job API, http://HEAD:8265) if set, else the local head that
# jobs/ray_local.sh started (its address recorded in runs/.ray-local/address); never an assumed
# port, which another cluster on the machine may hold. Token auth: RAY_AUTH_MODE=token and the
# cluster's token in ~/.ray/auth_token (or RAY_AUTH_TOKEN). RUNTIME_ENV picks the runtime-env file;
# SSAGAN_SHARED_STORAGE, when set here, is passed on to the job (docs/training.md, "Where runs are
# stored").
# The console holds the job's own output between one [submit] line and a last one saying how the
# job ended; exit status 0 when it succeeded, 1 otherwise. SSAGAN_SUBMIT_VERBOSE=1 runs plain
# `ray job submit` instead, with Ray's own lines (packaging the working dir, "Next steps", ...).
# Ctrl-C detaches, as `ray job submit` does: the job keeps running (`ray job stop ID` stops it).
# Needs: `ray` and `python` of .venv on PATH (source .venv/bin/activate).
set -euo pipefail
cd "$(dirname "$0")/.."
module=${1:?usage: jobs/submit.sh MODULE [ARGS...]}; shift
export RAY_AUTH_MODE=token
address=${RAY_ADDRESS:-}
if [ -z "$address" ]; then
  if ! address=$(jobs/ray_local.sh address); then
    echo "jobs/submit.sh: no cluster to submit to: set RAY_ADDRESS=http://HEAD:8265 or start a local head (jobs/ray_local.sh start)" >&2
    exit 2
  fi
fi
echo "[submit] $module to $address"
# The runtime-env file lists Ray's default excludes (.git, .venv, venv, __pycache__) itself, so Ray
# is told not to add them again, and does not warn on every submit that it now does by default.
export RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES=""
runtime_env=$(python - "${RUNTIME_ENV:-jobs/runtime_env.yaml}" <<'EOF'
import json, os, sys
import yaml
env = yaml.safe_load(open(sys.argv[1])) or {}
if os.environ.get("SSAGAN_SHARED_STORAGE"):  # the user's declaration of shared storage reaches the job's driver
    env.setdefault("env_vars", {})["SSAGAN_SHARED_STORAGE"] = os.environ["SSAGAN_SHARED_STORAGE"]
print(json.dumps(env))
EOF
)
if [ "${SSAGAN_SUBMIT_VERBOSE:-0}" = 1 ]; then
  exec ray job submit --address "$address" --working-dir . --runtime-env-json "$runtime_env" \
    -- python -m "$module" "$@"
fi
exec python - "$address" "$runtime_env" "$module" "$@" <<'EOF'
import asyncio, json, logging, re, shlex, sys
from ray.job_submission import JobStatus, JobSubmissionClient
for name in ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk"):  # set to INFO on import
    logging.getLogger(name).setLevel(logging.WARNING)  # Ray's INFO lines: packaging the working dir, the log stream

address, runtime_env, module, args = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4:]
client = JobSubmissionClient(address)
job = client.submit_job(entrypoint=shlex.join(["python", "-m", module, *args]),
                        runtime_env={**runtime_env, "working_dir": "."})
print(f"[submit] job {job} (ray job logs|status|stop {job} --address {address})", flush=True)
# The job manager's own first lines in the job's log: the runtime env being set up, the entrypoint.
ray_header = re.compile(r"^(\S+ \S+\s+INFO job_manager\.py:\d+ -- |Running entrypoint for job )")


async def tail() -> None:
    async for chunk in client.tail_job_logs(job):
        sys.stdout.write("".join(line for line in chunk.splitlines(keepends=True) if not ray_header.match(line)))
        sys.stdout.flush()

try:
    asyncio.run(tail())
except KeyboardInterrupt:
    print(f"\n[submit] detached: job {job} keeps running (ray job stop {job} --address {address})", file=sys.stderr)
    sys.exit(130)
info = client.get_job_info(job)
# (a failed job's message repeats the end of its log, shown above)
why = f": {info.message.split(', last available logs')[0]}" if info.status != JobStatus.SUCCEEDED and info.message else ""
print(f"[submit] job {job} {str(info.status.value).lower()}{why}", flush=True)
sys.exit(0 if info.status == JobStatus.SUCCEEDED else 1)
EOF

#!/usr/bin/env bash
# Submit a module of this project as a Ray job to a cluster, with the repository as working dir.
#   RAY_ADDRESS=http://HEAD:8265 jobs/submit.sh ssagan_dist.train --config ssagan_sky128 trainer.num_workers=16
#   jobs/submit.sh ssagan_dist.evaluate --checkpoint s3://ssagan-runs/ssagan_sky128 --data s3://sky-timelapse/test
# The cluster: RAY_ADDRESS (its job API, http://HEAD:8265) if set, else the local head that
# jobs/ray_local.sh started (its address recorded in runs/.ray-local/address); never an assumed
# port, which another cluster on the machine may hold. Token auth: RAY_AUTH_MODE=token and the
# cluster's token in ~/.ray/auth_token (or RAY_AUTH_TOKEN). RUNTIME_ENV picks the runtime-env file.
# Needs: `ray` of .venv on PATH (source .venv/bin/activate).
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
exec ray job submit --address "$address" \
  --working-dir . --runtime-env "${RUNTIME_ENV:-jobs/runtime_env.yaml}" \
  -- python -m "$module" "$@"

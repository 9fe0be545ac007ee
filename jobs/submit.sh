#!/usr/bin/env bash
# Submit a module of this project as a Ray job to a cluster, with the repository as working dir.
#   RAY_ADDRESS=http://HEAD:8265 jobs/submit.sh ssagan_dist.train --config ssagan_sky128 trainer.num_workers=16
#   jobs/submit.sh ssagan_dist.evaluate --checkpoint s3://ssagan-runs/ssagan_sky128 --data s3://sky-timelapse/test
# Default address: the local head of jobs/ray_local.sh. Token auth: RAY_AUTH_MODE=token and the
# cluster's token in ~/.ray/auth_token (or RAY_AUTH_TOKEN). RUNTIME_ENV picks the runtime-env file.
set -euo pipefail
cd "$(dirname "$0")/.."
module=${1:?usage: jobs/submit.sh MODULE [ARGS...]}; shift
export RAY_AUTH_MODE=token
exec ray job submit --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" \
  --working-dir . --runtime-env "${RUNTIME_ENV:-jobs/runtime_env.yaml}" \
  -- python -m "$module" "$@"

#!/usr/bin/env bash
# The demo, end to end on this machine: environment, synthetic sky shards, a local Ray head,
# `ray job submit` of the tiny SSA-GAN training, an evaluation and a predicted GIF.
#   jobs/demo.sh [extra key=value overrides for the training config]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source .venv/bin/activate
export RAY_AUTH_MODE=token
root=$PWD
data=$root/data/synth_sky
# Held-out clips come from another seed. Kept between runs: `make clean` removes them.
[ -f "$data/train/index.json" ] || python -m data_tools.synth --out "$data/train" --clips 2048 --size 32 --frames 8 --seed 0
[ -f "$data/val/index.json" ] || python -m data_tools.synth --out "$data/val" --clips 64 --size 32 --frames 8 --seed 1 --split val
# Our own head on free ports, stopped at the end; other Ray clusters on this machine are left alone.
jobs/ray_local.sh start 2
trap 'jobs/ray_local.sh stop' EXIT
RAY_ADDRESS=$(jobs/ray_local.sh address) jobs/submit.sh ssagan_dist.train --config tiny_cpu \
  data.train_urls="$data/train" data.val_urls="$data/val" run.storage_path="$root/runs" run.name=tiny_cpu "$@"
run=$root/runs/tiny_cpu
python -m ssagan_dist.evaluate --checkpoint "$run" --data "$data/val"
python -m ssagan_dist.predict --checkpoint "$run" --from-data "$data/val" --out "$run/demo_prediction.gif"
echo
echo "Run folder:   $run"
echo "Checkpoints:  $(ls -d "$run"/checkpoint_*/ | tr "\n" " ")"
echo "Metrics:      $run/metrics.jsonl"
echo "Samples:      $run/samples/ (strips and GIFs per validation; psnr_per_frame.png)"
echo "Prediction:   $run/demo_prediction.gif (first held-out clip: prediction | truth)"

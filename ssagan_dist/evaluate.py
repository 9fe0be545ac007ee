"""Score a checkpoint on held-out shards: MSE, PSNR, SSIM per future frame and averaged, beside baselines.

    python -m ssagan_dist.evaluate --checkpoint runs/tiny_cpu --data data/synth_sky/.../val \
        [--pick latest|best] [--weights ema|raw] [--train-data URL] [--out DIR] [--json]

A run folder is scored at its latest checkpoint, or with ``--pick best`` at the checkpoint whose
validation metric (the run's ``checkpoint.best_metric``, default val/psnr, as recorded in its
metrics.jsonl) is highest: model selection on the run's *validation* data, so that ``--data`` can
be a test set that nothing was chosen on. A checkpoint directory is scored as given.
A run trained with ``ema.decay`` > 0 is scored with its moving average of G unless
``--weights raw`` asks for G as trained; ``weights`` in the result says which was scored.

Every held-out clip is scored exactly once, whatever the batch size and the number of ranks (the
last batches are padded and masked); ``count`` says how many were scored. Beside the model, on the
same clips and with the same metric code:

- ``baseline_*``: copy-frame, every future frame = the input photo;
- ``mean_change_*``: the input photo plus the mean change (x_t - x_0, per frame and pixel) of the
  *training* clips (``--train-data``, default the checkpoint's ``data.train_urls``): a
  prediction that knows the average motion of the data but nothing of this clip.

On synthetic skies (``data_tools.synth``; the dataset's index.json names it) four oracles,
each clip rendered again from the parameters it was made with (``--no-oracles`` leaves them out):

- ``oracle_drift_*``: the true colour drift, the clouds held still where they are in the photo;
- ``oracle_motion_*``: the true cloud motion, the sky's colour held at the photo's;
- ``oracle_seen_*``: the clip itself wherever its cloud was in view in the photo; a cloud that was
  not (it enters the frame, or comes from behind the skyline) is guessed, as its mean colour: what
  a prediction can reach that knows the motion and the drift exactly but not the unseen clouds;
- ``oracle_exact_*``: the clip itself, unlike the stored clip by its JPEG error only.

Motion (``ssagan_dist.motion``; ``--no-motion`` leaves it out): how far the clouds moved from the
input frame to the last, measured by phase correlation over the sky band, in the truth and in
every series: ``true_displacement``, and per series ``pred_displacement``,
``direction_agreement`` (share of clips within 45° of the true displacement and at least half
its length), ``magnitude_ratio``, ``along_ratio``, ``pred_frame_change`` (see ``score``). PSNR
over copy-frame mostly measures colour drift and blur on the skies; these measure the task.

``--out`` writes ``scores.json``, ``per_frame.png`` (PSNR, SSIM and cloud displacement per future
frame) and ``extremes.png`` (the held-out clips where the model gains least and most over
copy-frame, with the true and predicted displacement drawn as arrows); ``--per-clip`` adds every
clip's values (``per_clip.json``). Conventions: docs/metrics.md; what the numbers mean for
quality: docs/quality.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

import torch

from ssagan_dist import cli
from ssagan_dist.scoring import PICKS, evaluate, format_table
from ssagan_dist.trainers.base import WEIGHTS


@cli.command
def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ssagan_dist.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory or run folder (latest), local or s3://")
    p.add_argument("--data", required=True, help="dataset URL (folder with index.json), brace pattern or list")
    p.add_argument("--pick", choices=PICKS, default="latest",
                   help="in a run folder: its latest checkpoint (default) or the best by the run's validation "
                        "metric (checkpoint.best_metric, recorded in metrics.jsonl)")
    p.add_argument("--weights", choices=WEIGHTS, default=None,
                   help="ema: G's moving average (the default when the run kept one, ema.decay > 0); "
                        "raw: G as trained")
    p.add_argument("--train-data", default=None,
                   help="training clips for the mean-change baseline (default: the run's data.train_urls; '' = none)")
    p.add_argument("--out", default=None, help="folder for scores.json, per_frame.png and extremes.png")
    p.add_argument("--extremes", type=int, default=4, help="worst and best clips each in extremes.png (default 4)")
    p.add_argument("--no-motion", action="store_true", help="leave out the cloud-motion measures")
    p.add_argument("--no-oracles", action="store_true",
                   help="synthetic skies: leave out the oracles re-rendered from each clip's parameters")
    p.add_argument("--per-clip", action="store_true",
                   help="every clip's scores too (in --json's output; per_clip.json in --out)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-batches", type=int, default=0, help="0 = the whole dataset")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--s3-endpoint", default=None, help="S3 endpoint URL (else AWS_ENDPOINT_URL)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    cli.add_debug_flag(p)
    a = p.parse_args(argv)
    r = evaluate(a.checkpoint, a.data, batch_size=a.batch_size, max_batches=a.max_batches, device=a.device,
                 endpoint_url=a.s3_endpoint, progress=not a.json, train_data=a.train_data, out=a.out,
                 extremes=a.extremes, pick=a.pick, weights=a.weights, measure_motion=not a.no_motion,
                 oracles=not a.no_oracles, per_clip=a.per_clip)
    if a.json:
        print(json.dumps(r, sort_keys=True))
        return 0
    how = {"best": f", the best {r.get('pick_metric')} ({r.get('pick_value', 0):.6g}) of the run", "latest": ", the latest"}
    print(f"{r['model']} ({r['flavor']}, output {r['output']}, {r['weights']} G) at step {r['step']}"
          f"{how.get(r['pick'], '')} "
          f"on {r['data']}")
    print(format_table(r))
    if a.out:
        print(f"report: {a.out}/scores.json, per_frame.png" + (", extremes.png" if a.extremes else "")
              + (", per_clip.json" if a.per_clip else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

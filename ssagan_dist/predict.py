"""One photo in, a time-lapse out.

    python -m ssagan_dist.predict --checkpoint runs/tiny_cpu --image sky.jpg --out sky.gif

The photo is resized (squashed, as in training) to the model's frame size; the output is a GIF
or an MP4 (by extension) of the clip the model predicts, the photo being its first frame.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ssagan_dist import checkpointing, visualize


def load_photo(path: str, size: int) -> torch.Tensor:
    """(3, size, size) float in [-1, 1]."""
    try:
        img = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
    except (FileNotFoundError, UnidentifiedImageError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None
    return torch.from_numpy(np.asarray(img)).permute(2, 0, 1).float().div(127.5).sub(1.0)


@torch.no_grad()
def predict(checkpoint: str, image: str, out: str, *, fps: int = 8, device: str = "cpu",
            endpoint_url: Optional[str] = None, seed: int = 0) -> torch.Tensor:
    trainer, cfg, state = checkpointing.load_trainer(checkpoint, device, endpoint_url)
    channels, frames, height, _ = state["clip_shape"]
    photo = load_photo(image, height)
    # Image-conditioned models read frame 0; the rest of the clip is only a placeholder.
    clip = photo[:, None].expand(channels, frames, height, height).unsqueeze(0).contiguous().to(device)
    torch.manual_seed(seed)  # noise-driven models
    pred = trainer.predict({"video": clip, "label": torch.zeros(1, dtype=torch.long, device=device)})[0].cpu()
    visualize.save_video(pred, out, fps=fps)
    return pred


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ssagan_dist.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory or run folder (latest), local or s3://")
    p.add_argument("--image", required=True, help="the input photo (any size; resized to the model's)")
    p.add_argument("--out", required=True, help="output .gif or .mp4")
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="noise seed for noise-driven models")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--s3-endpoint", default=None)
    a = p.parse_args(argv)
    if Path(a.out).suffix.lower() not in (".gif", ".mp4"):
        print(f"error: --out {a.out}: use a .gif or .mp4 file name", file=sys.stderr)
        return 2
    try:
        pred = predict(a.checkpoint, a.image, a.out, fps=a.fps, device=a.device, endpoint_url=a.s3_endpoint,
                       seed=a.seed)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.out}: {pred.shape[1]} frames of {pred.shape[2]}x{pred.shape[3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

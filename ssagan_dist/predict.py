"""One photo in, a time-lapse out.

    python -m ssagan_dist.predict --checkpoint runs/tiny_cpu --image sky.jpg --out sky.gif

    python -m ssagan_dist.predict --checkpoint runs/tiny_cpu --from-data data/synth_sky/val --out pred.gif

The photo is resized (squashed, as in training) to the model's frame size; the output is a GIF
or an MP4 (by extension) of the clip the model predicts, the photo being its first frame. With
``--from-data`` the photo is frame 0 of a held-out clip, and the GIF shows prediction | truth.
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
from ssagan_dist.data import ClipLoader, resolve_urls


def load_photo(path: str, size: int) -> torch.Tensor:
    """(3, size, size) float in [-1, 1]."""
    try:
        img = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
    except (FileNotFoundError, UnidentifiedImageError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div(127.5).sub(1.0)


def held_out_clip(data: str, index: int, endpoint_url: Optional[str] = None) -> dict[str, torch.Tensor]:
    """Clip number ``index`` of a dataset (in its stored order), as a batch of one."""
    loader = ClipLoader(resolve_urls(data, endpoint_url=endpoint_url), 1, shuffle=False, endpoint_url=endpoint_url)
    for i, batch in enumerate(loader):
        if i == index:
            return {k: v for k, v in batch.items() if torch.is_tensor(v)}
    raise ValueError(f"--index {index}: {data} has only {len(loader)} clips")


@torch.no_grad()
def predict(checkpoint: str, out: str, *, image: Optional[str] = None, data: Optional[str] = None, index: int = 0,
            fps: int = 8, device: str = "cpu", endpoint_url: Optional[str] = None, seed: int = 0) -> torch.Tensor:
    """Write the predicted clip for a photo (``image``) or a held-out clip's first frame (``data``)."""
    trainer, cfg, state = checkpointing.load_trainer(checkpoint, device, endpoint_url)
    channels, frames, height, _ = state["clip_shape"]
    if data is not None:
        batch = held_out_clip(data, index, endpoint_url)
        if list(batch["video"].shape[1:]) != list(state["clip_shape"]):
            raise ValueError(f"{data}: clips of shape {list(batch['video'].shape[1:])}, "
                             f"the model makes {state['clip_shape']}")
    else:
        photo = load_photo(image, height)
        # Image-conditioned models read frame 0; the rest of the clip is only a placeholder.
        batch = {"video": photo[:, None].expand(channels, frames, height, height).unsqueeze(0).contiguous(),
                 "label": torch.zeros(1, dtype=torch.long)}
    torch.manual_seed(seed)  # noise-driven models
    pred = trainer.predict({k: v.to(device) for k, v in batch.items()})[0].cpu()
    if data is not None and out.lower().endswith(".gif"):
        visualize.save_gif(pred, out, fps=fps, real=batch["video"][0])
    else:
        visualize.save_video(pred, out, fps=fps)
    return pred


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ssagan_dist.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory or run folder (latest), local or s3://")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="the input photo (any size; resized to the model's)")
    source.add_argument("--from-data", metavar="URL", help="use frame 0 of a held-out clip of this dataset")
    p.add_argument("--index", type=int, default=0, help="with --from-data: which clip")
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
        pred = predict(a.checkpoint, a.out, image=a.image, data=a.from_data, index=a.index, fps=a.fps,
                       device=a.device, endpoint_url=a.s3_endpoint, seed=a.seed)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.out}: {pred.shape[1]} frames of {pred.shape[2]}x{pred.shape[3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

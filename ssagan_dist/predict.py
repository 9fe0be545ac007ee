"""One photo in, a time-lapse out.

    python -m ssagan_dist.predict --checkpoint runs/tiny_cpu --image sky.jpg --out sky.gif

    python -m ssagan_dist.predict --checkpoint runs/tiny_cpu --from-data data/synth_sky/val --out pred.gif

The photo is resized (squashed, as in training) to the model's frame size; the output is a GIF
or an MP4 (by extension) of the clip the model predicts, the photo being its first frame. With
``--from-data`` the photo is frame 0 of a held-out clip, and the GIF shows prediction | truth.
A run trained with ``ema.decay`` > 0 predicts with its moving average of G unless
``--weights raw`` asks for G as trained.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ssagan_dist import cli, experiment, visualize
from ssagan_dist.data import ClipLoader, resolve_urls
from ssagan_dist.trainers.base import WEIGHTS

MAX_PIXELS = 64 * 2**20  # larger photos are refused before decoding (decompression bombs)
SMALL_FACTOR = 4  # warn when the photo's shorter side is this many times below the model's frame size


def _to_rgb(img: Image.Image) -> np.ndarray:
    """float32 (H, W, 3) in [0, 1] from any PIL mode: 8/16/32-bit and float grey, palette,
    alpha (composited over white, as viewers show it), CMYK, bilevel."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # high bit depth, one channel
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            top = 1.0 if arr.max(initial=0.0) <= 1.0 else arr.max()
        else:  # 16-bit PNG/TIFF (PIL keeps these as I;16 or 32-bit I holding 0..65535)
            top = 65535.0 if arr.max(initial=0.0) > 255 or img.mode.startswith("I;16") else 255.0
        grey = np.clip(arr / top, 0.0, 1.0).astype(np.float32)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (img.mode in ("P", "L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def load_photo(path: str, size: int) -> torch.Tensor:
    """(3, size, size) float in [-1, 1]; raises ValueError naming the file when it cannot be used."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:  # reads the header only
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise ValueError(f"image {path} is {w}x{h} = {w * h / 2**20:.0f} megapixels, more than the "
                                     f"{MAX_PIXELS // 2**20}-megapixel limit (a decompression bomb?): downscale it "
                                     "first, e.g. to a few times the model's frame size")
                img = ImageOps.exif_transpose(img)  # phone photos store their rotation in EXIF
                rgb = _to_rgb(img)
    except FileNotFoundError:
        raise FileNotFoundError(f"--image {path}: no such file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # PIL's own, larger limit
        raise ValueError(f"image {path} is too large to decode safely ({e}); the limit here is "
                         f"{MAX_PIXELS // 2**20} megapixels: downscale it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:  # PIL raises SyntaxError for some malformed headers
        raise ValueError(f"cannot read image {path}: {type(e).__name__}: {e}") from None
    if min(w, h) * SMALL_FACTOR <= size:
        print(f"warning: image {path} is {w}x{h}, far below the model's {size}x{size} frames: it is upscaled "
              "and the prediction will be blurry", file=sys.stderr)
    resized = Image.fromarray((rgb * 255.0 + 0.5).astype(np.uint8))
    frame = np.asarray(resized.resize((size, size), Image.BICUBIC), dtype=np.float32)
    return torch.from_numpy(frame.copy()).permute(2, 0, 1).div(127.5).sub(1.0)


def held_out_clip(data: str, index: int, endpoint_url: Optional[str] = None) -> dict[str, torch.Tensor]:
    """Clip number ``index`` of a dataset (in its stored order), as a batch of one."""
    loader = ClipLoader(resolve_urls(data, endpoint_url=endpoint_url), 1, shuffle=False, endpoint_url=endpoint_url)
    for i, batch in enumerate(loader):
        if i == index:
            return {k: v for k, v in batch.items() if torch.is_tensor(v)}
    raise ValueError(f"--index {index}: {data} has only {len(loader)} clips")


@torch.no_grad()
def predict(checkpoint: str, out: str, *, image: Optional[str] = None, data: Optional[str] = None, index: int = 0,
            fps: int = 8, device: str = "cpu", endpoint_url: Optional[str] = None, seed: int = 0,
            weights: Optional[str] = None) -> torch.Tensor:
    """Write the predicted clip for a photo (``image``) or a held-out clip's first frame (``data``);
    ``weights``: "ema", "raw" or None (G's moving average when the checkpoint keeps one)."""
    trainer, cfg, state = experiment.load_trainer(checkpoint, device, endpoint_url)
    try:
        weights = trainer.weights_for(weights)
    except ValueError as e:
        raise ValueError(f"--weights for checkpoint {checkpoint}: {e}") from None
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
    with trainer.generator_weights(weights):
        pred = trainer.predict({k: v.to(device) for k, v in batch.items()})[0].cpu()
    if data is not None and out.lower().endswith(".gif"):
        visualize.save_gif(pred, out, fps=fps, real=batch["video"][0])
    else:
        visualize.save_video(pred, out, fps=fps)
    return pred


@cli.command
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
    p.add_argument("--weights", choices=WEIGHTS, default=None,
                   help="ema: G's moving average (the default when the run kept one, ema.decay > 0); "
                        "raw: G as trained")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--s3-endpoint", default=None)
    cli.add_debug_flag(p)
    a = p.parse_args(argv)
    if Path(a.out).suffix.lower() not in (".gif", ".mp4"):
        raise ValueError(f"--out {a.out}: use a .gif or .mp4 file name")
    pred = predict(a.checkpoint, a.out, image=a.image, data=a.from_data, index=a.index, fps=a.fps,
                   device=a.device, endpoint_url=a.s3_endpoint, seed=a.seed, weights=a.weights)
    print(f"wrote {a.out}: {pred.shape[1]} frames of {pred.shape[2]}x{pred.shape[3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""data_tools.synth re-renders a stored clip from (seed, index, size, frames): exactly, and with one
factor frozen (the oracles evaluate scores); normal rendering is unchanged by the refactor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_tools import synth
from data_tools.synth import DRIFT, _FLAG, _HORIZON, _SKYLINE, _ZENITH, _cloud_field, _palette, _sample_periodic
from ssagan_dist import metrics, motion
from ssagan_dist.data import ClipLoader, read_index

_SKYLINE_U8 = (_SKYLINE * 255 + 0.5).astype(np.uint8)
_FLAG_U8 = (_FLAG * 255 + 0.5).astype(np.uint8)


def render_clip_before_oracles(params, size, frames):
    """data_tools.synth.render_clip as it was before freeze_motion / freeze_drift (commit 082e754),
    verbatim: the datasets made with it must stay byte-identical."""
    s, t = size, np.arange(frames, dtype=np.float32)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    vx, vy = params["wind"]
    field = _cloud_field(params["noise"], params["wind"], params["travel"])
    n = _sample_periodic(field, xx[None] - vx * t[:, None, None], yy[None] - vy * t[:, None, None])  # (T, H, W)
    density = np.clip((n - params["coverage"]) / 0.8, 0.0, 1.0)
    density = density * density * (3 - 2 * density)  # smoothstep: soft cloud edges

    tau = params["tau0"] + DRIFT * t / max(frames - 1, 1)  # (T,)
    height = (yy / (s - 1))[None, :, :, None]  # 0 at the top
    sky = _palette(tau, _ZENITH)[:, None, None] * (1 - height) + _palette(tau, _HORIZON)[:, None, None] * height
    lit = 0.7 * np.ones(3, np.float32) + 0.3 * _palette(tau, _HORIZON)  # clouds take the horizon's tint
    shade = (1.05 - 0.25 * density)[..., None]  # thick cloud is darker underneath
    clouds = lit[:, None, None] * shade
    img = sky * (1 - 0.9 * density[..., None]) + clouds * 0.9 * density[..., None]

    # static foreground: skyline and a flag on the tallest roof pointing downwind
    heights = params["skyline"]
    ground = yy >= (s - heights)[None, :]
    img[:, ground] = _SKYLINE
    roof_x = int(np.argmax(heights))
    roof_y = s - int(heights[roof_x])
    pole = max(2, s // 8)
    top = max(0, roof_y - pole)
    img[:, top:roof_y, roof_x] = _SKYLINE
    length = s * (0.08 + 0.5 * (params["travel"] - 0.15))
    thick = max(1.0, s / 20)
    direction = np.sign(vx) if vx != 0 else 1.0
    along = (xx - roof_x) * direction  # distance downwind of the pole
    tilt = vy / (abs(vx) + 1e-6)
    across = yy - (top + thick / 2 + along * tilt)
    flag = (along >= 1) & (along <= length) & (np.abs(across) <= thick * (1 - along / (length + 1)) + 0.5)
    img[:, flag & ~ground] = _FLAG
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


@pytest.mark.parametrize("seed, size, frames", [(0, 32, 8), (99, 32, 8), (3, 64, 16), (7, 16, 4), (1, 9, 2)])
def test_normal_rendering_is_unchanged(seed, size, frames):
    for i in range(6):
        params = synth._clip_params(np.random.default_rng([seed, i]), size, frames)
        before = render_clip_before_oracles(params, size, frames)
        assert np.array_equal(synth.render_clip(params, size, frames), before), (seed, i)
        assert np.array_equal(synth.rerender(seed, i, size, frames), before), (seed, i)


def test_lossless_dataset_is_rerendered_bit_for_bit(tmp_path):
    synth.generate(str(tmp_path), 6, size=16, frames=4, seed=5, frame_format="npy", progress=False)
    batch = next(iter(ClipLoader(str(tmp_path), 6, shuffle=False)))
    for key, clip in zip(batch["key"], batch["video"]):
        seed, index = synth.parse_key(key)
        again = torch.from_numpy(synth.rerender(seed, index, 16, 4)).permute(3, 0, 1, 2).float() / 127.5 - 1
        assert torch.equal(again, clip), key


def _as_clips(videos) -> torch.Tensor:
    return torch.stack([torch.from_numpy(v).permute(3, 0, 1, 2).float() / 127.5 - 1 for v in videos])


def test_exact_rerender_matches_the_stored_jpeg_clip_within_its_compression_error(tmp_path):
    """generate writes JPEG (quality 95, 4:2:0 chroma); read back through the loader, every frame
    of every clip is within 35 dB of its re-render (measured over 64 clips of seed 99: 37.5 dB
    the lowest frame, 39.8 dB the mean; the red flag's edges under chroma subsampling cost the
    most), while the re-render of any other clip is far off (< 25 dB)."""
    synth.generate(str(tmp_path), 16, size=32, frames=8, seed=99, progress=False)
    index = read_index(str(tmp_path))
    assert index["source"]["tool"] == synth.TOOL and index["jpeg_quality"] == 95
    batch = next(iter(ClipLoader(str(tmp_path), 16, shuffle=False)))
    keys = batch["key"]
    assert [synth.parse_key(k) for k in keys] == [(99, i) for i in range(16)]
    exact = _as_clips([synth.rerender(99, i, 32, 8) for i in range(16)])
    psnr = metrics.clip_metrics(exact, batch["video"], from_frame=0)["psnr_per_frame"]
    assert psnr.min() > 35, psnr.min()
    other = _as_clips([synth.rerender(99, (i + 1) % 16, 32, 8) for i in range(16)])
    assert metrics.clip_metrics(other, batch["video"])["psnr"].max() < 25


def test_oracles_freeze_one_factor():
    size, frames = 32, 8
    params = [synth.clip_params(99, i, size, frames) for i in range(16)]
    exact = [synth.rerender(99, i, size, frames) for i in range(16)]
    drift = [synth.rerender(99, i, size, frames, "drift_only") for i in range(16)]
    moving = [synth.rerender(99, i, size, frames, "motion_only") for i in range(16)]
    for p, e, d, m in zip(params, exact, drift, moving):
        assert np.array_equal(e[0], d[0]) and np.array_equal(e[0], m[0])  # the same photo
        ground = np.arange(size)[:, None] >= (size - p["skyline"])[None, :]
        assert (d[:, ground] == e[:, ground]).all() and (m[:, ground] == e[:, ground]).all()
        # colour: drift_only follows the true drift; motion_only keeps frame 0's, as the clouds move
        mean_colour = lambda v: v[:, : size // 2].reshape(frames, -1, 3).mean(1)  # noqa: E731
        drift_error = np.abs(mean_colour(d)[-1] - mean_colour(e)[-1]).max()
        assert drift_error < np.abs(mean_colour(m)[-1] - mean_colour(e)[-1]).max()
    truth = np.arange(frames)[None, :, None] * np.array([p["wind"] for p in params])[:, None, :]
    d_drift = motion.displacement(_as_clips(drift)).numpy()
    d_moving = motion.displacement(_as_clips(moving)).numpy()
    assert np.abs(d_drift).max() < 0.5  # the clouds stay put (the colour drifts)
    assert motion.agreement(d_moving[:, -1], truth[:, -1]).mean() == 1.0
    assert np.median(np.hypot(*(d_moving - truth)[:, 1:].reshape(-1, 2).T)) < 0.25


def test_keys_and_variants():
    assert synth.clip_key(7, 12) == "sky0007_0000012" and synth.parse_key("sky0007_0000012") == (7, 12)
    assert synth.parse_key(synth.clip_key(12345, 0)) == (12345, 0)
    assert synth.parse_key("vtest_000016") is None and synth.parse_key("sky7_12") is None
    assert set(synth.VARIANTS) == {"exact", "drift_only", "motion_only", "seen_only"}
    with pytest.raises(ValueError, match="variant"):
        synth.rerender(0, 0, 16, 4, "frozen")


def test_seen_only_guesses_the_clouds_frame_0_does_not_show():
    """seen_only is the clip itself wherever the pixel's cloud was in view at frame 0; elsewhere
    (it enters the frame, or comes from behind the skyline or flag) one colour per frame and row:
    the mean of the composite over frame 0's visible cloud densities, worked out here by averaging
    the composite itself. On average it is closer to the clip than the true-motion oracle (which
    renders the entering clouds, in frame 0's colours), and it is not the clip."""
    size, frames = 32, 8
    t = np.arange(frames, dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    scores = []
    for i in range(8):
        p = synth.clip_params(99, i, size, frames)
        exact = synth.rerender(99, i, size, frames)
        seen = synth.rerender(99, i, size, frames, "seen_only")
        assert np.array_equal(seen[0], exact[0])
        vx, vy = p["wind"]
        field = _cloud_field(p["noise"], p["wind"], p["travel"])
        n = _sample_periodic(field, xx[None] - vx * t[:, None, None], yy[None] - vy * t[:, None, None])
        d = np.clip((n - p["coverage"]) / 0.8, 0.0, 1.0)
        d = d * d * (3 - 2 * d)
        background = (exact[0] != _SKYLINE_U8).any(-1) & (exact[0] != _FLAG_U8).any(-1)
        sx, sy = np.rint(xx[None] - vx * t[:, None, None]), np.rint(yy[None] - vy * t[:, None, None])
        inside = (sx >= 0) & (sx < size) & (sy >= 0) & (sy < size)
        was_seen = np.zeros_like(inside)
        was_seen[inside] = background[sy[inside].astype(int), sx[inside].astype(int)]
        now_sky = np.broadcast_to(background, was_seen.shape)
        assert np.array_equal(seen[was_seen | ~now_sky], exact[was_seen | ~now_sky])
        unseen = ~was_seen & now_sky
        assert unseen[1:].sum() > 0 and unseen[-1].sum() >= unseen[1].sum()
        # the guess: the composite averaged over frame 0's visible densities, per frame and row
        tau = p["tau0"] + DRIFT * t / (frames - 1)
        height = (yy / (size - 1))[:, :1]  # (H, 1)
        sky = _palette(tau, _ZENITH)[:, None] * (1 - height) + _palette(tau, _HORIZON)[:, None] * height  # (T, H, 3)
        lit = (0.7 + 0.3 * _palette(tau, _HORIZON))[:, None]  # (T, 1, 3)
        dens = d[0][background][:, None, None, None]  # (K, 1, 1, 1)
        guess = (sky * (1 - 0.9 * dens) + lit * (1.05 - 0.25 * dens) * 0.9 * dens).mean(0)  # (T, H, 3)
        expected = (np.clip(guess, 0, 1) * 255 + 0.5).astype(np.uint8)
        frame, row, _ = np.nonzero(unseen)
        assert np.abs(seen[unseen].astype(int) - expected[frame, row].astype(int)).max() <= 1
        clips = _as_clips([exact, seen, synth.rerender(99, i, size, frames, "motion_only")])
        psnr = metrics.clip_metrics(clips[1:], clips[:1].expand(2, -1, -1, -1, -1))["psnr"]
        scores.append(psnr)
        assert psnr[0] < 60  # not the clip
    seen_psnr, motion_psnr = torch.stack(scores).mean(0)
    assert seen_psnr > motion_psnr + 1, (seen_psnr, motion_psnr)

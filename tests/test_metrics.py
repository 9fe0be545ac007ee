import math

import numpy as np
import pytest
import torch
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from ssagan_dist.metrics import (
    PSNR_CAP,
    MetricSums,
    clip_metrics,
    copy_frame_baseline,
    ssim,
    ssim_window,
    to_unit_range,
)


def skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """The scikit-image reference on (H, W, C) images in [0, 1]."""
    h, w = a.shape[:2]
    return structural_similarity(
        a, b, data_range=1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        channel_axis=-1, win_size=ssim_window(h, w),
    )


def structured_pair(h: int, w: int, channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Smooth gradients, stripes and a checkerboard; the second image is shifted and blurred."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = [x / max(w - 1, 1), 0.5 + 0.5 * np.sin(x / 3 + y / 5), ((x // 4 + y // 4) % 2)]
    a = np.stack(planes[:channels], axis=-1)
    b = np.roll(a, shift=(1, 2), axis=(0, 1))
    b = 0.25 * (b + np.roll(b, 1, 0) + np.roll(b, 1, 1) + np.roll(b, (1, 1), (0, 1)))
    return a, b


def random_pair(rng: np.random.Generator, h: int, w: int, channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    a = rng.random((h, w, channels))
    return a, np.clip(a + 0.15 * rng.standard_normal(a.shape), 0, 1)


def to_torch(*images: np.ndarray, dtype=torch.float32) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(i)).permute(2, 0, 1)[None].to(dtype) for i in images]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [(64, 64), (32, 48), (11, 11), (8, 8), (5, 9), (1, 1)])
def test_ssim_matches_skimage(size, dtype):
    rng = np.random.default_rng(sum(size))
    for a, b in (random_pair(rng, *size), structured_pair(*size), structured_pair(*size, channels=1)):
        got = ssim(*to_torch(a, b, dtype=dtype)).item()
        assert got == pytest.approx(skimage_ssim(a, b), abs=1e-4 if dtype == torch.float32 else 1e-10)


def test_small_images_use_the_largest_odd_window():
    sizes = [(128, 128), (11, 40), (10, 10), (8, 8), (7, 30), (2, 2)]
    assert [ssim_window(h, w) for h, w in sizes] == [11, 11, 9, 7, 7, 1]


def random_clips(n=3, c=3, t=5, h=24, w=20, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    real = torch.rand(n, c, t, h, w, generator=g) * 2 - 1
    pred = (real + 0.3 * torch.randn(real.shape, generator=g)).clamp(-1, 1)
    return pred, real


def test_clip_metrics_match_skimage_per_frame():
    pred, real = random_clips()
    out = clip_metrics(pred, real)
    p01, r01 = (to_unit_range(v).permute(0, 2, 3, 4, 1).double().numpy() for v in (pred, real))  # N T H W C
    for i in range(pred.shape[0]):
        for t in range(pred.shape[2]):
            a, b = r01[i, t], p01[i, t]
            assert out["mse_per_frame"][i, t].item() == pytest.approx(mean_squared_error(a, b), rel=1e-5)
            want_psnr = peak_signal_noise_ratio(a, b, data_range=1)
            assert out["psnr_per_frame"][i, t].item() == pytest.approx(want_psnr, abs=1e-4)
            assert out["ssim_per_frame"][i, t].item() == pytest.approx(skimage_ssim(a, b), abs=1e-4)
    for name in ("mse", "psnr", "ssim"):  # per-video values: frame means over t >= 1
        assert out[name].shape == (3,)
        torch.testing.assert_close(out[name], out[f"{name}_per_frame"][:, 1:].mean(1))
    torch.testing.assert_close(clip_metrics(pred, real, from_frame=0)["psnr"], out["psnr_per_frame"].mean(1))


def test_identical_clips():
    _, real = random_clips()
    out = clip_metrics(real, real)
    assert torch.all(out["mse_per_frame"] == 0)
    assert torch.all(out["psnr_per_frame"] == PSNR_CAP)
    torch.testing.assert_close(out["ssim_per_frame"], torch.ones(3, 5), atol=1e-6, rtol=0)


def test_psnr_of_a_known_noise_level():
    g = torch.Generator().manual_seed(1)
    real = torch.rand(2, 3, 4, 16, 16, generator=g) - 0.5  # mid-range: no clamping below
    signs = torch.randint(0, 2, real.shape, generator=g) * 2 - 1
    out = clip_metrics(real + 0.1 * signs, real)  # error 0.05 everywhere in [0, 1] units
    torch.testing.assert_close(out["mse"], torch.full((2,), 0.0025), rtol=1e-5, atol=0)
    torch.testing.assert_close(out["psnr"], torch.full((2,), 10 * math.log10(400)), rtol=0, atol=1e-4)
    noisy = clip_metrics(real + 0.1 * torch.randn(real.shape, generator=g), real)  # sigma 0.05 in [0, 1]
    assert noisy["psnr"].mean().item() == pytest.approx(26.02, abs=0.15)


def test_copy_frame_baseline():
    pred, real = random_clips()
    base = copy_frame_baseline(real)
    assert base.shape == real.shape
    assert torch.equal(base, real[:, :, :1].repeat(1, 1, real.shape[2], 1, 1))
    out = clip_metrics(base, real)
    assert torch.all(out["psnr_per_frame"][:, 0] == PSNR_CAP)  # exact on the input frame, which is left out
    torch.testing.assert_close(out["psnr"], out["psnr_per_frame"][:, 1:].mean(1))


def test_metric_sums_merge_halves_like_an_all_reduce():
    pred, real = random_clips(n=5, t=4)
    whole = MetricSums(num_frames=4)
    halves = [MetricSums(num_frames=4) for _ in range(3)]  # the third rank saw no clips
    for sums, sl in ((whole, slice(0, 5)), (halves[0], slice(0, 2)), (halves[1], slice(2, 5))):
        sums.add(clip_metrics(pred[sl], real[sl]))
        sums.add(clip_metrics(copy_frame_baseline(real[sl]), real[sl]), prefix="baseline_")
    reduced = sum(h.to_tensor() for h in halves)
    merged, expected = halves[2].means(reduced), whole.means()
    assert merged.keys() == expected.keys()
    names = {"psnr", "ssim", "mse", "psnr_curve", "count"}
    assert names | {"baseline_" + name for name in names} <= merged.keys()
    assert merged["count"] == 5 and len(merged["psnr_curve"]) == 4
    for key, value in expected.items():
        assert merged[key] == pytest.approx(value, rel=1e-12)
    direct = clip_metrics(pred, real)
    assert expected["psnr"] == pytest.approx(direct["psnr"].double().mean().item(), rel=1e-6)
    assert expected["psnr_curve"] == pytest.approx(direct["psnr_per_frame"].double().mean(0).tolist(), rel=1e-6)
    assert math.isnan(halves[2].means()["psnr"])


def test_bad_inputs_name_the_problem():
    pred, real = random_clips()
    with pytest.raises(ValueError, match="one shape"):
        clip_metrics(pred, real[:, :, :2])
    with pytest.raises(ValueError, match="from_frame"):
        clip_metrics(pred, real, from_frame=5)
    with pytest.raises(KeyError, match="prefix"):
        MetricSums(5).add(clip_metrics(pred, real), prefix="model_")
    with pytest.raises(ValueError, match="frames"):
        MetricSums(4).add(clip_metrics(pred, real))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_matches_cpu():
    pred, real = random_clips(n=4, t=6, h=64, w=64)
    cpu = clip_metrics(pred, real)
    gpu = clip_metrics(pred.cuda(), real.cuda())
    for key, value in cpu.items():
        assert gpu[key].is_cuda
        torch.testing.assert_close(gpu[key].cpu(), value, rtol=1e-4, atol=1e-4)
    sums = MetricSums(6)
    sums.add(gpu)
    assert sums.to_tensor("cuda").is_cuda

"""Multiscale datasets (``--multiscale``): every image also at 1/2, 1/4 and 1/8 (mip-NeRF's
convention), ray batches that draw and weigh the scales (balanced, mip-NeRF's area weights,
PyNeRF's per-image draws), and PSNR per scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from tests.synthetic import write_synthetic_scene

    return write_synthetic_scene(tmp_path_factory.mktemp("ms") / "scene", n_views=9, width=48, height=32, points=False)


def test_every_image_comes_at_four_scales_with_divided_intrinsics_and_area_averaged_pixels(scene):
    from scene3d.data import load_dataset
    from scene3d.data.config import DataConfig

    one = load_dataset(scene, DataConfig(test_every=3))
    ms = load_dataset(scene, DataConfig(test_every=3, multiscale=True))
    n = len(one)
    assert len(ms) == 4 * n and ms.scale_factors == [f for f in (1, 2, 4, 8) for _ in range(n)]
    assert ms.train_indices == [k * n + i for k in range(4) for i in one.train_indices]
    assert ms.test_indices == [k * n + i for k in range(4) for i in one.test_indices]
    for k, f in enumerate((1, 2, 4, 8)):
        i = k * n + 1
        assert (int(ms.cameras.width[i]), int(ms.cameras.height[i])) == (48 // f, 32 // f)
        for a, b in ((ms.cameras.fx, one.cameras.fx), (ms.cameras.fy, one.cameras.fy), (ms.cameras.cx, one.cameras.cx), (ms.cameras.cy, one.cameras.cy)):
            assert float(a[i]) == pytest.approx(float(b[1]) / f, rel=1e-6)
        torch.testing.assert_close(ms.cameras.world_to_cam[i], one.cameras.world_to_cam[1])
        # the pixels: the full image averaged over f x f blocks (to within 8-bit rounding)
        full = one.image_uint8(1).astype(np.float64)
        want = full.reshape(32 // f, f, 48 // f, f, 3).mean(axis=(1, 3))
        assert np.abs(ms.image_uint8(i).astype(np.float64) - want).max() <= 1.0, f
        assert ms.scale_factor(i) == f and ms.names[i] == (one.names[1] if f == 1 else one.names[1].replace(".png", f"_d{k}.png"))
    assert one.scale_factors is None and one.scale_factor(0) == 1


def test_pool_sampling_draws_images_by_their_pixel_count_and_weighs_pixels_by_area(scene):
    from scene3d.data import load_dataset
    from scene3d.data.config import DataConfig
    from scene3d.data.training import TrainingData, step_generator
    from scene3d.renderers.rays import sample_pixels

    ms = load_dataset(scene, DataConfig(test_every=3, multiscale=True, scale_sampling="area"))
    cam, x, y = sample_pixels(ms.cameras, ms.train_indices, 200_000, torch.Generator().manual_seed(0), by_pixel=True)
    assert bool((x >= 0).all() and (x < ms.cameras.width[cam]).all() and (y >= 0).all() and (y < ms.cameras.height[cam]).all())
    factors = torch.tensor(ms.scale_factors)[cam]
    share = torch.stack([(factors == f).float().mean() for f in (1, 2, 4, 8)])
    want = torch.tensor([1, 1 / 4, 1 / 16, 1 / 64]) / (1 + 1 / 4 + 1 / 16 + 1 / 64)
    torch.testing.assert_close(share, want, atol=0.004, rtol=0)  # 200k draws: about 0.001 standard error
    # within an image, every pixel alike (the first image at full size: columns and rows spread evenly)
    first = cam == ms.train_indices[0]
    assert abs(float(x[first].float().mean()) - 23.5) < 0.6 and abs(float(y[first].float().mean()) - 15.5) < 0.4
    data = TrainingData(ms, torch.device("cpu"), seed=1, progress=False)
    b = data.ray_batch(3, 4096, step_generator(1, 3))
    torch.testing.assert_close(b.weights, torch.tensor(ms.scale_factors, dtype=torch.float32)[b.ray_cameras] ** 2)
    cam, x, y = sample_pixels(ms.cameras, ms.train_indices, 4096, step_generator(1, 3), by_pixel=True)  # the same draws
    assert torch.equal(b.ray_cameras, cam)
    want = torch.stack([ms.image(c)[yy, xx] for c, xx, yy in zip(cam[:200].tolist(), x[:200].tolist(), y[:200].tolist())])
    torch.testing.assert_close(b.target[:200], want, atol=1e-6, rtol=0)
    single = TrainingData(load_dataset(scene, DataConfig(test_every=3)), torch.device("cpu"), seed=1, progress=False)
    assert single.ray_batch(3, 64, step_generator(1, 3)).weights is None


def test_balanced_and_per_image_sampling_give_each_scale_a_quarter_of_the_rays(scene):
    from scene3d.data import load_dataset
    from scene3d.data.config import DataConfig
    from scene3d.data.training import TrainingData, step_generator

    for mode in ("balanced", "image"):
        ms = load_dataset(scene, DataConfig(test_every=3, multiscale=True, scale_sampling=mode))
        data = TrainingData(ms, torch.device("cpu"), seed=2, progress=False)
        b = data.ray_batch(0, 100_000, step_generator(2, 0))
        factors = torch.tensor(ms.scale_factors)[b.ray_cameras]
        share = torch.stack([(factors == f).float().mean() for f in (1, 2, 4, 8)])
        torch.testing.assert_close(share, torch.full((4,), 0.25), atol=0.006, rtol=0)  # 100k draws: about 0.0014 standard error
        # every training image of a scale alike (all have the same size here)
        counts = torch.bincount(b.ray_cameras, minlength=len(ms))[ms.train_indices].float()
        assert float(counts.min()) > 0.85 * float(counts.mean()) and float(counts.max()) < 1.15 * float(counts.mean())
        if mode == "balanced":  # the same expected loss as area weighting, so no weights
            assert b.weights is None
        else:  # PyNeRF's: images alike, pixels weighed by area
            torch.testing.assert_close(b.weights, factors.float() ** 2)
    with pytest.raises(ValueError, match="area, balanced or image"):
        ms.scale_sampling = "uniform"
        TrainingData(ms, torch.device("cpu"), progress=False)


def test_the_weighted_loss_is_the_area_weighted_mean():
    from scene3d.metrics import weighted_mean
    from scene3d.renderers.rays.proposal import charbonnier_loss

    values = torch.tensor([[1.0, 3.0], [10.0, 10.0], [0.0, 2.0]])
    assert float(weighted_mean(values, None)) == pytest.approx(26 / 6)
    assert float(weighted_mean(values, torch.tensor([1.0, 4.0, 16.0]))) == pytest.approx((2 + 40 + 16) / 21)
    pred, target = torch.zeros(3, 3), torch.tensor([[0.5] * 3, [0.0] * 3, [1.0] * 3])
    w = torch.tensor([4.0, 1.0, 0.0])
    assert float(charbonnier_loss(pred, target, 1e-3, weights=w)) == pytest.approx((4 * (0.25 + 1e-6) ** 0.5 + (1e-6) ** 0.5) / 5, rel=1e-6)


def test_evaluation_reports_psnr_per_scale_and_their_mean(scene):
    from scene3d.data import load_dataset
    from scene3d.data.config import DataConfig
    from scene3d.train.evaluation import evaluate_model

    ms = load_dataset(scene, DataConfig(test_every=3, multiscale=True))

    class Flat:  # renders a grey image of the camera's size: its PSNR differs per scale, as each scale's pixels do
        def render(self, cams, background=None):
            h, w = int(cams.height[0]), int(cams.width[0])
            return type("Out", (), {"rgb": torch.full((1, h, w, 3), 0.3)})()

        def stats(self):
            return {}

    result = evaluate_model(Flat(), ms, torch.device("cpu"))
    per = result["psnr_per_scale"]
    assert list(per) == ["1", "2", "4", "8"] and result["num_images"] == len(ms.test_indices)
    assert result["psnr"] == pytest.approx(np.mean(list(per.values())))
    from scene3d.metrics import psnr

    for f in (1, 2, 4, 8):
        idx = [i for i in ms.test_indices if ms.scale_factor(i) == f]
        want = np.mean([float(psnr(torch.full((1, *ms.image(i).shape), 0.3), ms.image(i)[None])) for i in idx])
        assert per[str(f)] == pytest.approx(want, rel=1e-6)
    assert len({round(v, 3) for v in per.values()}) == 4


def _multiscale_blender(src, dst):
    """mip-NeRF's multiscale Blender layout (metadata.json) made from a synthetic scene's images."""
    import json

    from PIL import Image

    meta = json.loads((src / "transforms.json").read_text())
    out = {}
    for split, frames in (("train", meta["frames"][:6]), ("test", meta["frames"][6:8])):
        lists = {k: [] for k in ("file_path", "cam2world", "width", "height", "focal", "lossmult", "near", "far")}
        (dst / split).mkdir(parents=True, exist_ok=True)
        for k, frame in enumerate(frames):
            img = Image.open(src / frame["file_path"]).convert("RGB")
            for j in range(4):
                name = f"{split}/r_{k}_d{j}.png" if j else f"{split}/r_{k}.png"
                img.save(dst / name)
                lists["file_path"].append(name)
                lists["cam2world"].append(frame["transform_matrix"][:3])
                lists["width"].append(img.width)
                lists["height"].append(img.height)
                lists["focal"].append(meta["fl_x"] / 2**j)
                lists["lossmult"].append(4**j)
                lists["near"].append(2.0)
                lists["far"].append(6.0)
                img = img.resize((img.width // 2, img.height // 2), Image.Resampling.BOX)
        out[split] = lists
    (dst / "metadata.json").write_text(json.dumps(out))
    return dst


def test_the_multiscale_blender_layout_reads_with_its_scales(scene, tmp_path):
    import json

    from scene3d.data import load_dataset
    from scene3d.data.config import DataConfig
    from scene3d.errors import DataError

    root = _multiscale_blender(scene, tmp_path / "ms")
    ds = load_dataset(root, DataConfig(multiscale=True))  # --multiscale adds nothing to a scene that ships its scales
    assert ds.format == "blender" and len(ds) == 32
    assert ds.scale_factors == [1, 2, 4, 8] * 8
    assert ds.train_indices == list(range(24)) and ds.test_indices == list(range(24, 32))
    assert [int(ds.cameras.width[i]) for i in range(4)] == [48, 24, 12, 6]
    for i in range(4):
        assert float(ds.cameras.fx[i]) == pytest.approx(float(ds.cameras.fx[0]) / 2**i, rel=1e-6)
    assert ds.names[1] == "train/r_0_d1.png"
    # a scale that is no power of two is one sentence naming the file
    meta = json.loads((root / "metadata.json").read_text())
    meta["train"]["lossmult"][1] = 3
    (root / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"metadata.json.*train image 1 has lossmult 3"):
        load_dataset(root)
    meta["train"]["lossmult"] = meta["train"]["lossmult"][:5]
    (root / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="lossmult"):
        load_dataset(root)

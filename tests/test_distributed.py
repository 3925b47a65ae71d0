"""Tests of zsvss_nb.run.distributed: the Ray Data recipe equals the single-process runner.

A local Ray instance on 2 CPUs runs the per-video function over three tiny synthetic videos
(frame folders, the "tiny" model); every label PNG must equal run_dataset's byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zsvss_nb import SegmentConfig
from zsvss_nb.datasets import Dataset, open_dataset
from zsvss_nb.errors import LabelError, MissingDependencyError, ModelNotFoundError
from zsvss_nb.io.outputs import DONE_FILE
from zsvss_nb.run.runner import run_dataset

REPO = Path(__file__).resolve().parents[1]
H, W = 128, 160
LENGTHS = {"clip1": 4, "clip2": 5, "clip10": 4}
CFG = SegmentConfig.tiny().replace(method="bilinear", max_side=128, window=3)


def write_videos(root: Path) -> Path:
    """Frame folders root/<clip>/<t>.png with two moving rectangles and a little noise."""
    rng = np.random.default_rng(7)
    for v, (name, n) in enumerate(LENGTHS.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for t in range(n):
            img = np.empty((H, W, 3), np.uint8)
            img[:] = (40 + 30 * v, 80, 120)
            img[20 + 3 * v : 70 + 3 * v, 10 + 8 * t : 60 + 8 * t] = (220, 40, 30)
            img[75:115, 100 - 6 * t : 150 - 6 * t] = (30, 200, 60)
            noisy = img.astype(np.int16) + rng.integers(0, 16, img.shape)
            Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(root / name / f"{t:03d}.png")
    return root


def png_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("*/*.png"))}


@pytest.fixture(scope="module")
def ray():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    # Workers are fresh interpreters: give them this checkout on their path.
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=100 * 2**20,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Dataset:
    return open_dataset("folder", write_videos(tmp_path_factory.mktemp("videos")))


def test_ray_equals_single_process_runner(ray, dataset, tmp_path):
    from zsvss_nb.run.distributed import run_dataset_ray

    single, distributed = tmp_path / "single", tmp_path / "ray"
    run_dataset(dataset, single, "tiny", CFG, shard=(0, 1), progress=False)
    rows = run_dataset_ray(dataset, distributed, "tiny", CFG.to_dict(), concurrency=2)
    assert [r["video"] for r in rows] == ["clip1", "clip2", "clip10"]
    assert [r["frames"] for r in rows] == [4, 5, 4]
    assert not any(r["skipped"] for r in rows)
    assert len({r["config_hash"] for r in rows}) == 1
    files = png_bytes(distributed)
    assert len(files) == sum(LENGTHS.values())
    assert files == png_bytes(single)
    for name in LENGTHS:
        done = json.loads((distributed / name / DONE_FILE).read_text())
        assert done["config_hash"] == rows[0]["config_hash"]
    manifest = json.loads((distributed / "run_manifest_ray.json").read_text())
    assert manifest["frames_done"] == 13 and manifest["versions"]["ray"] == ray.__version__
    assert SegmentConfig.from_dict(manifest["config"]) == CFG
    assert ray.is_initialized()  # a Ray the caller started is left running

    # Resume: every video is finished with this config, so nothing is recomputed or rewritten.
    before = {p: p.stat().st_mtime_ns for p in distributed.glob("*/*.png")}
    again = run_dataset_ray(dataset, distributed, "tiny", CFG, concurrency=1, resume=True)
    assert [r["skipped"] for r in again] == [True, True, True]
    assert {p: p.stat().st_mtime_ns for p in distributed.glob("*/*.png")} == before


def test_ray_video_errors_propagate_with_their_type(ray, dataset, tmp_path):
    from zsvss_nb.run.distributed import run_dataset_ray

    # Only clip2 has a first-frame label: the first-frame protocol must fail loudly, typed, on
    # clip1 and clip10, while clip2 (already sent to a worker) is still finished.
    root = shutil.copytree(dataset.root, tmp_path / "data")
    label = np.zeros((H, W), np.uint8)
    label[75:115] = 1
    (root / "labels" / "clip2").mkdir(parents=True)
    Image.fromarray(label).save(root / "labels" / "clip2" / "000.png")
    ds = open_dataset("folder", root)
    out = tmp_path / "pred"
    with pytest.raises(LabelError, match="video clip1: first frame '000' has no label"):
        run_dataset_ray(ds, out, "tiny", CFG, concurrency=1, use_first_frame_gt=True)
    manifest = json.loads((out / "run_manifest_ray.json").read_text())
    assert [r["video"] for r in manifest["videos_failed"]] == ["clip1", "clip10"]
    assert manifest["videos_failed"][0]["error"].startswith("LabelError: video clip1")
    assert [r["video"] for r in manifest["videos_done"]] == ["clip2"]
    assert sorted(p.parent.name for p in out.glob(f"*/{DONE_FILE}")) == ["clip2"]

    with pytest.raises(ModelNotFoundError, match="no-such-model"):
        run_dataset_ray(ds, tmp_path / "m", str(tmp_path / "no-such-model"), CFG, concurrency=1)


def test_missing_ray_names_the_extra(monkeypatch, dataset, tmp_path):
    from zsvss_nb.run.distributed import run_dataset_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'zsvss\[distributed\]'"):
        run_dataset_ray(dataset, tmp_path, "tiny", CFG)


def test_a_comparison_through_ray_equals_the_single_process_one(ray, dataset, tmp_path):
    from zsvss_nb.backbones import load_backbone
    from zsvss_nb.evaluation.compare import compare, ray_runner

    root = shutil.copytree(dataset.root, tmp_path / "data")
    label = np.zeros((H, W), np.uint8)
    label[75:115] = 1
    for name, n in LENGTHS.items():
        (root / "labels" / name).mkdir(parents=True)
        for t in range(n):
            Image.fromarray(label).save(root / "labels" / name / f"{t:03d}.png")
    ds = open_dataset("folder", root, num_classes=2)
    tiny = load_backbone("tiny", device="cpu")
    args = (ds, tiny, CFG, ["kmeans-frame"], ["majority"])
    single = compare(*args, tmp_path / "single", vc_ns=(2,), progress=False)
    runner = ray_runner("tiny", concurrency=2)
    distributed = compare(*args, tmp_path / "ray", vc_ns=(2,), runner=runner)
    assert png_bytes(tmp_path / "ray" / "runs" / "kmeans-frame") == png_bytes(
        tmp_path / "single" / "runs" / "kmeans-frame"
    )
    assert [r.result.miou for r in distributed.rows] == [r.result.miou for r in single.rows]
    manifest = json.loads(
        (tmp_path / "ray" / "runs" / "kmeans-frame" / "run_manifest_ray.json").read_text()
    )
    assert manifest["method"] == "kmeans-frame"
    assert manifest["config"]["context"]["propagation"] == "per-frame-kmeans"

"""Tests of zsvss_nb.run.runner: layout, sharding, env ranks, resume, atomicity, errors, first-frame
GT.

Three tiny synthetic videos (moving rectangles, 128x160) in the generic ``folder`` format, the
seeded random-weight "tiny" model and bilinear upsampling keep every run to a few seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zsvss_nb import SegmentConfig
from zsvss_nb.datasets import Dataset, VideoItem, open_dataset
from zsvss_nb.errors import ConfigError, LabelError
from zsvss_nb.io.outputs import DONE_FILE
from zsvss_nb.io.writers import temp_path
from zsvss_nb.pipeline import Segmenter
from zsvss_nb.run.runner import (
    _first_frame_ids,
    config_hash,
    is_finished,
    local_device,
    run_dataset,
    segment_video_item,
)

H, W = 128, 160
LENGTHS = {"clip1": 4, "clip2": 5, "clip10": 4}  # natural order: clip1, clip2, clip10
CFG = SegmentConfig.tiny().replace(method="bilinear", max_side=128, window=3)


def write_videos(root: Path) -> Path:
    """Frame folders root/<clip>/<t>.png with two moving rectangles; GT for clip1.

    clip1's labels: background 0, red box 1, green box 2, and a void (255) strip at the top.
    """
    rng = np.random.default_rng(7)
    for v, (name, n) in enumerate(LENGTHS.items()):
        for t in range(n):
            img = np.empty((H, W, 3), np.uint8)
            img[:] = (40 + 30 * v, 80, 120)
            lab = np.zeros((H, W), np.uint8)
            r0, c0 = 20 + 3 * v, 10 + 8 * t
            img[r0 : r0 + 50, c0 : c0 + 50] = (220, 40, 30)
            lab[r0 : r0 + 50, c0 : c0 + 50] = 1
            r1, c1 = 75, 100 - 6 * t
            img[r1 : r1 + 40, c1 : c1 + 50] = (30, 200, 60)
            lab[r1 : r1 + 40, c1 : c1 + 50] = 2
            lab[:4] = 255
            noisy = img.astype(np.int16) + rng.integers(0, 16, img.shape)
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(root / name / f"{t:03d}.png")
            if name == "clip1":
                (root / "labels" / name).mkdir(parents=True, exist_ok=True)
                Image.fromarray(lab).save(root / "labels" / name / f"{t:03d}.png")
    return root


def png_bytes(out: Path) -> dict[str, bytes]:
    """Every label PNG under ``out`` keyed by ``<video>/<frame>.png``."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("*/*.png"))}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Dataset:
    return open_dataset("folder", write_videos(tmp_path_factory.mktemp("videos")))


@pytest.fixture(scope="module")
def backbone(tiny):
    return tiny


@pytest.fixture(scope="module")
def reference(dataset, backbone, tmp_path_factory) -> Path:
    """One unsharded, uninterrupted run: the outputs every other run must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    run_dataset(dataset, out, backbone, CFG, shard=(0, 1), progress=False)
    return out


def test_layout_and_manifests(reference, dataset, backbone):
    files = png_bytes(reference)
    expected = {f"{v}/{t:03d}.png" for v, n in LENGTHS.items() for t in range(n)}
    assert set(files) == expected
    key = config_hash(CFG, backbone, False)
    for name, n in LENGTHS.items():
        done = json.loads((reference / name / DONE_FILE).read_text())
        assert done["video"] == name and done["frames"] == n and done["config_hash"] == key
        assert done["seconds"] >= 0 and is_finished(reference / name, key)
        for t in range(n):
            with Image.open(reference / name / f"{t:03d}.png") as im:
                assert im.mode == "L" and im.size == (W, H)
                ids = np.array(im)
            assert ids.max() < CFG.context.k and len(np.unique(ids)) >= 2
    assert not list(reference.rglob("*.tmp"))
    manifest = json.loads((reference / "run_manifest_0.json").read_text())
    assert manifest["shard"] == [0, 1] and manifest["error"] is None
    assert manifest["videos_assigned"] == ["clip1", "clip2", "clip10"]
    assert [d["video"] for d in manifest["videos_done"]] == ["clip1", "clip2", "clip10"]
    assert manifest["frames_done"] == sum(LENGTHS.values())
    assert manifest["model"]["sha256"] == backbone.fingerprint()
    assert SegmentConfig.from_dict(manifest["config"]) == CFG


def test_shard_union_equals_unsharded_and_rank_from_env(
    reference, dataset, backbone, tmp_path, monkeypatch
):
    # Shard 0/2 = clip1, clip10: clip10 now runs right after clip1 instead of after clip2.
    run_dataset(dataset, tmp_path, backbone, CFG, shard=(0, 2), progress=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    run_dataset(dataset, tmp_path, backbone, CFG, progress=False)  # shard from the environment
    m0 = json.loads((tmp_path / "run_manifest_0.json").read_text())
    m1 = json.loads((tmp_path / "run_manifest_1.json").read_text())
    assert m0["shard"] == [0, 2] and m0["videos_assigned"] == ["clip1", "clip10"]
    assert m1["shard"] == [1, 2] and m1["videos_assigned"] == ["clip2"]
    assert png_bytes(tmp_path) == png_bytes(reference)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ConfigError, match="RANK=2"):
        run_dataset(dataset, tmp_path, backbone, CFG, progress=False)


def test_resume_after_interruption_is_byte_identical(
    reference, dataset, backbone, tmp_path, monkeypatch
):
    out = tmp_path
    key = config_hash(CFG, backbone, False)
    # Leftovers of an earlier complete run of clip2 under another config (its "finished" mark
    # and a frame this run does not produce) and of a killed writer (a temp file). The
    # interrupted re-run must leave that folder exactly as it was; --resume then replaces it.
    (out / "clip2").mkdir(parents=True)
    done = {"config_hash": "another config", "files": ["004.png"]}  # the files it wrote
    (out / "clip2" / DONE_FILE).write_text(json.dumps(done))
    (out / "clip2" / "004.png").write_bytes(b"not a png")
    temp_path(out / "clip2" / "001.png").write_bytes(b"half")  # a killed write
    earlier = {p.name: p.read_bytes() for p in (out / "clip2").iterdir()}

    original = Segmenter.segment
    calls: list[str] = []

    def interrupted(self, video, *args, **kwargs):
        calls.append(video.source)
        for i, result in enumerate(original(self, video, *args, **kwargs)):
            if video.source.rstrip(">").endswith("clip2") and i == 2:
                raise KeyboardInterrupt  # as if the job were stopped after two frames
            yield result

    monkeypatch.setattr(Segmenter, "segment", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_dataset(dataset, out, backbone, CFG, shard=(0, 1), progress=False)
    assert len(calls) == 2  # clip1 finished, clip2 stopped, clip10 never started
    assert is_finished(out / "clip1", key)
    assert not is_finished(out / "clip2", key)
    assert {p.name: p.read_bytes() for p in (out / "clip2").iterdir()} == earlier
    assert sorted(p.name for p in out.iterdir()) == ["clip1", "clip2", "run_manifest_0.json"]
    assert not (out / "clip10").exists()
    failed = json.loads((out / "run_manifest_0.json").read_text())
    assert failed["error"]["video"] == "clip2" and failed["error"]["type"] == "KeyboardInterrupt"
    assert [d["video"] for d in failed["videos_done"]] == ["clip1"]

    monkeypatch.setattr(Segmenter, "segment", original)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "clip1").iterdir()}
    manifest = run_dataset(dataset, out, backbone, CFG, shard=(0, 1), resume=True, progress=False)
    assert manifest["videos_skipped"] == ["clip1"]
    assert [d["video"] for d in manifest["videos_done"]] == ["clip2", "clip10"]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "clip1").iterdir()} == before
    assert png_bytes(out) == png_bytes(reference)
    assert all(is_finished(out / v, key) for v in LENGTHS)
    assert not list(out.rglob("*.tmp"))


def test_is_finished_and_config_hash(tmp_path, backbone):
    key = config_hash(CFG, backbone, False)
    assert key == config_hash(SegmentConfig.from_dict(CFG.to_dict()), backbone, False)
    assert (
        len({key, config_hash(CFG, backbone, True), config_hash(CFG.replace(k=4), backbone, False)})
        == 3
    )
    assert not is_finished(tmp_path, key)  # no file
    (tmp_path / DONE_FILE).write_text("{truncated")
    assert not is_finished(tmp_path, key)
    (tmp_path / DONE_FILE).write_text(json.dumps({"config_hash": "other"}))
    assert not is_finished(tmp_path, key)
    (tmp_path / DONE_FILE).write_text(json.dumps({"config_hash": key}))
    assert is_finished(tmp_path, key)


def test_exceptions_propagate_and_are_recorded(dataset, backbone, tmp_path, monkeypatch):
    # clip2 (shard 1/2) has no labels: first-frame GT cannot work and must not be skipped.
    with pytest.raises(LabelError, match="clip2"):
        run_dataset(
            dataset, tmp_path, backbone, CFG, shard=(1, 2), use_first_frame_gt=True, progress=False
        )
    manifest = json.loads((tmp_path / "run_manifest_1.json").read_text())
    assert manifest["error"]["video"] == "clip2" and manifest["error"]["type"] == "LabelError"
    assert manifest["videos_done"] == []

    def boom(self, video, *args, **kwargs):
        raise RuntimeError("device lost")
        yield  # pragma: no cover - makes this a generator like the original

    monkeypatch.setattr(Segmenter, "segment", boom)
    with pytest.raises(RuntimeError, match="device lost"):
        run_dataset(dataset, tmp_path / "b", backbone, CFG, shard=(0, 2), progress=False)
    assert not (tmp_path / "b" / "clip10").exists()  # stopped at clip1, nothing after it
    assert not (tmp_path / "b" / "clip1" / DONE_FILE).exists()
    with pytest.raises(ConfigError, match="shard 2/2"):
        run_dataset(dataset, tmp_path, backbone, CFG, shard=(2, 2), progress=False)


def test_first_frame_gt_uses_gt_classes(dataset, backbone, reference, tmp_path):
    item = dataset.video("clip1")
    summary = segment_video_item(item, tmp_path, backbone, CFG, True, dataset)
    assert summary["video"] == "clip1" and summary["frames"] == 4 and not summary["skipped"]
    done = json.loads((tmp_path / "clip1" / DONE_FILE).read_text())
    assert done["first_frame_gt"] == str(item.labels["000"])
    assert done["config_hash"] == config_hash(CFG, backbone, True)
    read = [np.array(Image.open(tmp_path / "clip1" / f"{t:03d}.png")) for t in range(4)]
    # Clusters take first-frame GT classes {0, 1, 2}; the void id 255 never becomes a class,
    # while without GT the same video uses cluster ids up to K-1.
    assert set(np.unique(read)) <= {0, 1, 2}
    no_gt = [np.array(Image.open(reference / "clip1" / f"{t:03d}.png")) for t in range(4)]
    assert max(int(a.max()) for a in no_gt) > 2
    # The runner hands the segmenter the dataset's GT ids with void made negative.
    gt0 = dataset.read_label(item.labels["000"])
    direct = Segmenter(backbone, CFG).segment(
        item.frames, np.where(gt0 == 255, -1, gt0), progress=False
    )
    for r in direct:
        np.testing.assert_array_equal(r.labels.numpy(), read[r.index])


def test_first_frame_ids_void_and_binary(tmp_path):
    lab = np.array([[0, 3, 255], [11, 3, 0]], np.uint8)
    Image.fromarray(lab).save(tmp_path / "a.png")
    item = VideoItem("v", [tmp_path / "f0.png"], {"f0": tmp_path / "a.png"})
    ds = Dataset("folder", tmp_path, 12, 255, None, [item])
    np.testing.assert_array_equal(_first_frame_ids(item, ds, CFG), [[0, 3, -1], [11, 3, 0]])
    ds.ignore_index = 11  # CamVid's void id
    np.testing.assert_array_equal(_first_frame_ids(item, ds, CFG), [[0, 3, 255], [-1, 3, 0]])
    compat = CFG.replace(context=CFG.context.replace(ignore_index=-1))
    np.testing.assert_array_equal(_first_frame_ids(item, ds, compat), lab)  # reference: kept
    Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).save(tmp_path / "b.png")
    davis = Dataset("davis", tmp_path, 2, None, None, [item], binary_gt=True)
    item.labels["f0"] = tmp_path / "b.png"
    np.testing.assert_array_equal(_first_frame_ids(item, davis, CFG), [[0, 1], [1, 0]])
    item.labels.clear()
    with pytest.raises(LabelError, match="'f0' has no label"):
        _first_frame_ids(item, ds, CFG)


def test_local_device_spreads_ranks_over_gpus():
    assert local_device({"LOCAL_RANK": "1"}, cuda_devices=0) is None  # no CUDA: default device
    assert local_device({}, cuda_devices=4) is None  # no launcher
    assert local_device({"LOCAL_RANK": "5"}, cuda_devices=4) == torch.device("cuda", 1)
    assert local_device({"SLURM_LOCALID": "2"}, cuda_devices=1) == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match="LOCAL_RANK"):
        local_device({"LOCAL_RANK": "x"}, cuda_devices=2)

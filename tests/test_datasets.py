"""Tests of zsvss_nb.datasets: every format on a tiny fake tree, the sample data, sharding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zsvss_nb.datasets import FORMATS, Dataset, VideoItem, load_gt, natural_key, open_dataset
from zsvss_nb.errors import ConfigError, DatasetLayoutError, LabelError
from zsvss_nb.run.shards import rank_from_env, shard

DATA = Path(__file__).parents[1] / "data"


def img(path: Path, size: tuple[int, int] = (4, 3)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(path)
    return path


def label(path: Path, arr, palette: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.asarray(arr, dtype=np.uint8))
    if palette:  # turns the L image into a P image holding the same indices
        im.putpalette([v for k in range(256) for v in (k, 0, 255 - k)])
    im.save(path)
    return path


# ---------------------------------------------------------------- basics


def test_natural_key_orders_numbers_numerically():
    names = ["v10", "v2", "V1", "v2b", "12_a", "2_a"]
    assert sorted(names, key=natural_key) == ["2_a", "12_a", "V1", "v2", "v2b", "v10"]


def test_load_gt_modes(tmp_path):
    ids = np.array([[0, 3, 3], [11, 0, 255]])
    np.testing.assert_array_equal(load_gt(label(tmp_path / "l.png", ids)), ids)
    pal = load_gt(label(tmp_path / "p.png", [[0, 1, 2], [2, 1, 255]], palette=True))
    np.testing.assert_array_equal(pal, [[0, 1, 2], [2, 1, 255]])
    assert Image.open(tmp_path / "p.png").mode == "P"
    obj = label(tmp_path / "o.png", [[0, 255, 255], [0, 0, 255]])
    np.testing.assert_array_equal(load_gt(obj), [[0, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(load_gt(obj, binary=False), [[0, 255, 255], [0, 0, 255]])
    assert load_gt(obj).dtype == np.int64
    with pytest.raises(LabelError, match="RGB"):
        load_gt(img(tmp_path / "rgb.png"))
    with pytest.raises(LabelError, match="does not exist"):
        load_gt(tmp_path / "none.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(LabelError, match="bad.png"):
        load_gt(tmp_path / "bad.png")


def test_unknown_format_and_missing_root(tmp_path):
    with pytest.raises(ConfigError, match="kitti"):
        open_dataset("kitti", tmp_path)
    with pytest.raises(DatasetLayoutError, match="nope"):
        open_dataset("camvid", tmp_path / "nope")


@pytest.mark.parametrize("fmt", FORMATS)
def test_layout_mismatch_names_root_and_format(tmp_path, fmt):
    (tmp_path / "junk").mkdir()
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DatasetLayoutError) as info:
        open_dataset(fmt, tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg and fmt in msg and "expected" in msg and "\n" not in msg


# ---------------------------------------------------------------- formats


def test_vspw(tmp_path):
    for v, n in (("10_b", 3), ("2_a", 2), ("3_c", 1)):
        for t in range(n):
            img(tmp_path / "data" / v / "origin" / f"{t:08d}.jpg")
            label(tmp_path / "data" / v / "mask" / f"{t:08d}.png", [[0, 5], [255, 123]], True)
    (tmp_path / "val.txt").write_text("10_b\n2_a\n")
    ds = open_dataset("vspw", tmp_path)
    assert [v.name for v in ds.videos] == ["2_a", "3_c", "10_b"]
    assert (ds.num_classes, ds.ignore_index) == (124, 255)
    val = open_dataset("vspw", tmp_path, "val")
    assert [v.name for v in val.videos] == ["2_a", "10_b"]
    v = val.videos[1]
    assert [p.name for p in v.frames] == ["00000000.jpg", "00000001.jpg", "00000002.jpg"]
    assert v.first_frame_gt == tmp_path / "data" / "10_b" / "mask" / "00000000.png"
    np.testing.assert_array_equal(val.read_label(v.first_frame_gt), [[0, 5], [255, 123]])
    with pytest.raises(DatasetLayoutError, match="test.txt"):
        open_dataset("vspw", tmp_path, "test")
    (tmp_path / "train.txt").write_text("2_a\nmissing_video\n")
    with pytest.raises(DatasetLayoutError, match="missing_video"):
        open_dataset("vspw", tmp_path, "train")


def test_davis_standard_layout_palette_and_split(tmp_path):
    for v in ("judo", "bike-packing"):
        for t in range(3):
            img(tmp_path / "JPEGImages" / "480p" / v / f"{t:05d}.jpg")
        objs = 2 if v == "judo" else 3
        for t in range(2):  # the last frame has no annotation
            mask = np.arange(6).reshape(2, 3) % (objs + 1)
            label(tmp_path / "Annotations" / "480p" / v / f"{t:05d}.png", mask, palette=True)
    (tmp_path / "ImageSets" / "2017").mkdir(parents=True)
    (tmp_path / "ImageSets" / "2017" / "val.txt").write_text("judo\n")
    ds = open_dataset("davis", tmp_path)
    assert [v.name for v in ds.videos] == ["bike-packing", "judo"]
    assert (ds.num_classes, ds.ignore_index, ds.binary_gt) == (4, 255, False)
    assert len(ds.videos[0].frames) == 3 and sorted(ds.videos[0].labels) == ["00000", "00001"]
    val = open_dataset("davis", tmp_path, "val")
    assert [v.name for v in val.videos] == ["judo"] and val.num_classes == 3
    with pytest.raises(DatasetLayoutError, match="2016"):
        open_dataset("davis", tmp_path, "2016/val")


def test_davis_flat_binary(tmp_path):
    for t in range(4):
        img(tmp_path / "car" / "JPEGImages" / f"{t:05d}.jpg")
        label(tmp_path / "car" / "Annotations" / f"{t:05d}.png", [[0, 255], [255, 255]])
    ds = open_dataset("davis", tmp_path)
    assert (ds.num_classes, ds.ignore_index, ds.binary_gt) == (2, None, True)
    np.testing.assert_array_equal(ds.read_label(ds.videos[0].first_frame_gt), [[0, 1], [1, 1]])
    single = open_dataset("davis", tmp_path / "car")
    assert [v.name for v in single.videos] == ["car"]


def test_camvid_segnet_layout(tmp_path):
    for split, stems in (
        ("train", ["0006R0_f00960", "0006R0_f00930", "0016E5_07920"]),
        ("val", ["0016E5_07959", "0016E5_07961"]),
    ):
        for s in stems:
            img(tmp_path / split / f"{s}.png")
            label(tmp_path / f"{split}annot" / f"{s}.png", [[0, 11], [3, 10]])
    ds = open_dataset("camvid", tmp_path)
    assert [v.name for v in ds.videos] == ["train-0006R0", "train-0016E5", "val-0016E5"]
    assert (ds.num_classes, ds.ignore_index, len(ds.class_names)) == (11, 11, 11)
    train = open_dataset("camvid", tmp_path, "train")
    v = train.video("0006R0")
    assert [p.stem for p in v.frames] == ["0006R0_f00930", "0006R0_f00960"]
    assert v.first_frame_gt.name == "0006R0_f00930.png" and len(v.labels) == 2
    c32 = open_dataset("camvid32", tmp_path, "val", ignore_index=31)
    assert (c32.num_classes, c32.ignore_index, c32.class_names) == (32, 31, None)
    with pytest.raises(DatasetLayoutError, match="test"):
        open_dataset("camvid", tmp_path, "test")
    with pytest.raises(DatasetLayoutError, match="no video"):
        train.video("nope")


def test_camvid_flat_layout(tmp_path):
    for clip in ("b", "a"):
        for t in (90, 120, 60):
            img(tmp_path / clip / "images" / f"{clip}_f{t:05d}.png")
        label(tmp_path / clip / "labels" / f"{clip}_f00090.png", [[1]])
    ds = open_dataset("camvid", tmp_path, num_classes=12, ignore_index=255)
    assert [v.name for v in ds.videos] == ["a", "b"]
    assert (ds.num_classes, ds.ignore_index, ds.class_names) == (12, 255, None)
    v = ds.videos[0]
    assert [p.stem for p in v.frames] == ["a_f00060", "a_f00090", "a_f00120"]
    assert v.first_frame_gt is None and list(v.labels) == ["a_f00090"]


def test_cityscapes_sequence(tmp_path):
    split = tmp_path / "leftImg8bit_sequence" / "val"
    for city, seq, f0 in (("lindau", "000001", 0), ("frankfurt", "000000", 275)):
        for t in range(30):
            img(split / city / f"{city}_{seq}_{f0 + t:06d}_leftImg8bit.png", (2, 1))
        gt = (
            tmp_path
            / "gtFine"
            / "val"
            / city
            / f"{city}_{seq}_{f0 + 19:06d}_gtFine_labelTrainIds.png"
        )
        label(gt, [[0, 255]])
        label(gt.with_name(gt.name.replace("labelTrainIds", "labelIds")), [[7, 0]])
    ds = open_dataset("cityscapes", tmp_path)
    assert [v.name for v in ds.videos] == ["frankfurt_000000", "lindau_000001"]
    assert (ds.num_classes, ds.ignore_index, len(ds.class_names)) == (19, 255, 19)
    for v in ds.videos:
        assert len(v.frames) == 30 and list(v.labels) == [v.frames[19].stem]
        assert v.first_frame_gt is None
    first = ds.videos[0]
    np.testing.assert_array_equal(ds.read_label(first.labels[first.frames[19].stem]), [[0, 255]])
    for p in (tmp_path / "gtFine").rglob("*labelTrainIds.png"):
        p.unlink()
    with pytest.raises(DatasetLayoutError, match="createTrainIdLabelImgs"):
        open_dataset("cityscapes", tmp_path)
    with pytest.raises(DatasetLayoutError, match="train"):
        open_dataset("cityscapes", tmp_path, "train")


def test_folder_format(tmp_path):
    for t in range(3):
        img(tmp_path / "walk" / f"{t:03d}.jpg")
        img(tmp_path / "nested" / "frames" / f"{t}.png")
    (tmp_path / "clip.mp4").write_bytes(b"\x00")
    (tmp_path / "empty").mkdir()
    label(tmp_path / "labels" / "walk" / "001.png", [[0, 4], [255, 2]])
    label(tmp_path / "labels" / "clip" / "0.png", [[6]])
    ds = open_dataset("folder", tmp_path)
    assert [v.name for v in ds.videos] == ["clip", "nested", "walk"]
    assert (ds.num_classes, ds.ignore_index) == (7, 255)
    clip, nested, walk = ds.videos
    assert clip.frames == [] and clip.source == tmp_path / "clip.mp4"
    assert clip.first_frame_gt == tmp_path / "labels" / "clip" / "0.png"
    assert list(clip.labels) == ["00000"]
    assert nested.source == tmp_path / "nested" / "frames" and len(nested.frames) == 3
    assert walk.first_frame_gt is None and list(walk.labels) == ["001"]
    assert open_dataset("folder", tmp_path, num_classes=3).num_classes == 3
    single = open_dataset("folder", tmp_path / "walk")
    assert [v.name for v in single.videos] == ["walk"] and single.num_classes == 0
    label(tmp_path / "labels" / "walk" / "007.png", [[0]])
    with pytest.raises(DatasetLayoutError, match="007"):
        open_dataset("folder", tmp_path)
    (tmp_path / "labels" / "walk" / "007.png").unlink()
    label(tmp_path / "labels" / "clip" / "first.png", [[0]])
    with pytest.raises(DatasetLayoutError, match="frame index"):
        open_dataset("folder", tmp_path)
    with pytest.raises(DatasetLayoutError, match="split"):
        open_dataset("folder", tmp_path / "walk", "val")


# ---------------------------------------------------------------- the sample data


@pytest.mark.skipif(not (DATA / "camvid").is_dir(), reason="sample data not copied yet")
def test_sample_camvid():
    ds = open_dataset("camvid", DATA / "camvid")
    assert [v.name for v in ds.videos] == ["0006R0", "0016E5_15Hz"]
    for v in ds.videos:
        assert len(v.frames) == 30 and set(v.labels) == {p.stem for p in v.frames}
        assert v.frames == sorted(v.frames)
    first = ds.videos[0].first_frame_gt
    assert first.name == "0006R0_f00930.png"
    ids = ds.read_label(first)
    assert ids.shape == (360, 480) and ids.min() >= 0 and ids.max() <= 11


@pytest.mark.skipif(not (DATA / "davis2016").is_dir(), reason="sample data not copied yet")
def test_sample_davis2016():
    ds = open_dataset("davis", DATA / "davis2016")
    assert {v.name: len(v.frames) for v in ds.videos} == {"blackswan": 50, "car-shadow": 40}
    assert ds.num_classes == 2 and ds.binary_gt and ds.ignore_index is None
    v = ds.video("car-shadow")
    assert v.frame_names == [f"{t:05d}" for t in range(40)] and len(v.labels) == 40
    ids = ds.read_label(v.labels["00020"])
    assert ids.shape == (480, 854) and set(np.unique(ids)) == {0, 1}


@pytest.mark.skipif(not (DATA / "unlabelled").is_dir(), reason="sample data not copied yet")
def test_sample_unlabelled_folder():
    ds = open_dataset("folder", DATA / "unlabelled")
    assert [v.name for v in ds.videos] == ["bedroom"] and ds.videos[0].labels == {}
    assert ds.videos[0].frames and ds.num_classes == 0


# ---------------------------------------------------------------- sharding


def test_shard_partitions_videos_deterministically():
    items = [VideoItem(f"vid{k}", []) for k in (5, 1, 10, 3, 2, 8, 7)]
    for count in (1, 2, 3, 4, 9):
        parts = [shard(items, i, count) for i in range(count)]
        names = [v.name for p in parts for v in p]
        assert sorted(names) == sorted(v.name for v in items) and len(set(names)) == len(names)
        assert parts == [shard(list(reversed(items)), i, count) for i in range(count)]
    assert [v.name for v in shard(items, 1, 3)] == ["vid2", "vid7"]
    assert shard(["b", "a", "c"], 0, 2) == ["a", "c"]
    for bad in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(ConfigError):
            shard(items, *bad)


def test_rank_from_env(monkeypatch):
    for var in (
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "PMI_RANK",
        "PMI_SIZE",
        "SLURM_PROCID",
        "SLURM_NTASKS",
    ):
        monkeypatch.delenv(var, raising=False)
    assert rank_from_env() == (0, 1)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert rank_from_env() == (3, 4)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert rank_from_env() == (1, 2)
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert rank_from_env() == (5, 8)
    monkeypatch.setenv("RANK", "8")
    with pytest.raises(ConfigError, match="RANK=8"):
        rank_from_env()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ConfigError, match="integers"):
        rank_from_env()
    assert rank_from_env({"RANK": "0", "WORLD_SIZE": "2"}) == (0, 2)
    with pytest.raises(ConfigError, match="WORLD_SIZE"):
        rank_from_env({"RANK": "0"})


def test_dataset_dataclass_fields():
    ds = Dataset("x", Path("/r"), 3, None, None, [VideoItem("a", [Path("a/0.jpg")])])
    assert ds.videos[0].first_frame_gt is None and ds.videos[0].frame_names == ["0"]

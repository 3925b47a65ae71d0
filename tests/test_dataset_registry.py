"""Adding a dataset format: a reader and its DatasetFormat (written here, as a new module of
zsvss_nb.datasets would be) plus one registration. ``zsvss dataset`` / ``zsvss eval``, the
evaluation's strict-id default, the palettes and the run manifest then read it; nothing else in
the package changes."""

from __future__ import annotations

import dataclasses
import json
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zsvss_nb.datasets import (
    BUILTIN,
    DatasetFormat,
    OpenOptions,
    Palette,
    VideoItem,
    find_format,
    format_names,
    lookup,
    natural_key,
    open_dataset,
    register,
    unregister,
)
from zsvss_nb.datasets.base import Dataset, layout_error, list_entries, list_images
from zsvss_nb.errors import ConfigError, DatasetLayoutError, LabelError
from zsvss_nb.evaluation.evaluate import evaluate_folders, load_prediction
from zsvss_nb.notebook.viz.colors import (
    dataset_names,
    dataset_palette,
    palette_names,
    resolve_palette,
)
from zsvss_nb.run.cli import main

MODEL = ["--model", "tiny", "--preset", "fast", "--k", "3", "--window", "3"]
VOID = 9


def read_pairs(fmt: DatasetFormat, root: Path, split: str | None, options: OpenOptions) -> Dataset:
    """``root/<video>/img_<t>.png`` frames with labels ``root/<video>/gt_<t>.png``."""
    if split is not None:
        raise layout_error(root, fmt.name, "no split")
    videos = []
    for d in sorted(
        (d for d in list_entries(root) if d.is_dir()), key=lambda d: natural_key(d.name)
    ):
        files = list_images(d, (".png",))
        frames = [p for p in files if p.stem.startswith("img_")]
        labels = {"img_" + p.stem[3:]: p for p in files if p.stem.startswith("gt_")}
        if frames:
            videos.append(VideoItem(d.name, frames, labels, d))
    if not videos:
        raise layout_error(root, fmt.name, "root/<video>/img_<t>.png + gt_<t>.png")
    return fmt.dataset(root, videos)


PAIRS = DatasetFormat(
    "pairs",
    read_pairs,
    3,
    VOID,
    ("sky", "box", "ground"),
    palette=Palette(((0, 0, 255), (255, 0, 0), (0, 255, 0)), (1, 2, 3)),
    recommended={"k": 3},
)


@pytest.fixture
def pairs():
    register(PAIRS)
    try:
        yield PAIRS
    finally:
        unregister(PAIRS.name)


def write_pairs(root: Path, frames: int = 4, labelled=(0, 2)) -> Path:
    """Two videos of 64x64 frames: blue sky above, green ground below, a red box moving right;
    GT 0 sky, 1 box, 2 ground, a void (9) row between sky and ground."""
    for v, shift in (("clip10", 3), ("clip2", 5)):
        for t in range(frames):
            ids = np.full((64, 64), 2, np.uint8)
            ids[:28] = 0
            ids[28] = VOID
            x = 8 + shift * t
            ids[36:52, x : x + 16] = 1
            colours = np.array([(20, 40, 230), (230, 30, 30), (30, 200, 40)] + [(0, 0, 0)] * 7)
            (root / v).mkdir(parents=True, exist_ok=True)
            Image.fromarray(colours[ids].astype(np.uint8)).save(root / v / f"img_{t}.png")
            if t in labelled:
                Image.fromarray(ids).save(root / v / f"gt_{t}.png")
    return root


def reference_miou(pred_root: Path, ds: Dataset) -> float:
    """mIoU from one confusion over all labelled frames, GT void and out-of-range ids dropped."""
    tp = np.zeros(ds.num_classes)
    fp = np.zeros(ds.num_classes)
    fn = np.zeros(ds.num_classes)
    for v in ds.videos:
        for stem, path in v.labels.items():
            gt = np.array(Image.open(path)).astype(np.int64)
            pred = load_prediction(pred_root / v.name / f"{stem}.png")
            valid = (gt >= 0) & (gt < ds.num_classes) & (gt != ds.ignore_index)
            for k in range(ds.num_classes):
                tp[k] += np.sum(valid & (gt == k) & (pred == k))
                fp[k] += np.sum(valid & (gt != k) & (pred == k))
                fn[k] += np.sum(valid & (gt == k) & (pred != k))
    union = tp + fp + fn
    return float(np.mean(tp[union > 0] / union[union > 0]))


def run_cli(args: list[str]) -> int:
    before = signal.getsignal(signal.SIGTERM)  # main() installs its own handler
    try:
        return main(args)
    finally:
        signal.signal(signal.SIGTERM, before)


def test_the_builtin_formats_are_registered_once_in_order():
    assert format_names()[: len(BUILTIN)] == (
        "vspw",
        "davis",
        "camvid",
        "camvid32",
        "cityscapes",
        "folder",
    )
    assert all(lookup(f.name) is f for f in BUILTIN)
    assert [f.name for f in BUILTIN if not f.strict_ids] == ["vspw"]
    with pytest.raises(ConfigError, match="already registered"):
        register(BUILTIN[0])
    with pytest.raises(ConfigError, match="'kitti' is unknown; choose one of vspw, davis"):
        lookup("kitti")
    with pytest.raises(ConfigError, match="kitti"):
        unregister("kitti")


def test_a_registered_format_opens_and_leaves_when_unregistered(pairs, tmp_path):
    root = write_pairs(tmp_path / "pairs")
    ds = open_dataset("pairs", root)
    assert ds.format is pairs and "pairs" in format_names()
    assert [v.name for v in ds.videos] == ["clip2", "clip10"]
    assert (ds.num_classes, ds.ignore_index, ds.class_names) == (3, VOID, ["sky", "box", "ground"])
    assert sorted(ds.videos[0].labels) == ["img_0", "img_2"] and ds.recommended == {"k": 3}
    assert ds.read_label(ds.videos[0].labels["img_0"])[28, 0] == VOID
    with pytest.raises(DatasetLayoutError, match="not a pairs dataset"):
        open_dataset("pairs", tmp_path / "pairs" / "clip2")
    unregister("pairs")
    try:
        assert find_format("pairs") is None and ds.format is None and ds.recommended == {}
        with pytest.raises(ConfigError, match="'pairs' is unknown"):
            open_dataset("pairs", root)
    finally:
        register(PAIRS)


def test_the_palettes_read_the_registered_format(pairs, tmp_path):
    colours = dataset_palette("pairs")
    assert colours.shape == (256, 3) and colours.dtype == np.uint8
    assert [tuple(c) for c in colours[:3]] == [(0, 0, 255), (255, 0, 0), (0, 255, 0)]
    assert (colours[3:] == (1, 2, 3)).all()
    ds = open_dataset("pairs", write_pairs(tmp_path / "pairs"))
    np.testing.assert_array_equal(dataset_palette(ds), colours)
    np.testing.assert_array_equal(resolve_palette("pairs"), colours)
    assert "pairs" in palette_names()
    legend = {0: "sky", 1: "box", 2: "ground", VOID: "void"}
    assert dataset_names("pairs") == dataset_names(ds) == legend
    assert dataset_names("camvid")[11] == "void" and dataset_names("no-such-format") == {}
    quiet = dataclasses.replace(PAIRS, name="pairs-plain", palette=None)
    register(quiet)
    try:
        assert "pairs-plain" not in palette_names()
        np.testing.assert_array_equal(dataset_palette("pairs-plain"), resolve_palette(None))
    finally:
        unregister("pairs-plain")


def test_zsvss_dataset_and_eval_run_on_a_registered_format(pairs, tmp_path):
    root = write_pairs(tmp_path / "pairs")
    pred = tmp_path / "pred"
    assert (
        run_cli(
            ["-q", "dataset", "pairs", str(root), "--out", str(pred), "--first-frame-gt", *MODEL]
        )
        == 0
    )
    ds = open_dataset("pairs", root)
    for v in ds.videos:
        assert sorted(p.name for p in (pred / v.name).glob("*.png")) == [
            f"img_{t}.png" for t in range(4)
        ]
    manifest = json.loads((pred / "run_manifest_0.json").read_text())
    assert manifest["dataset"] == {
        "format": "pairs",
        "root": str(root),
        "videos_total": 2,
        "num_classes": 3,
        "ignore_index": VOID,
        "recommended": {"k": 3},
    }
    assert manifest["config"]["context"]["ignore_index"] == VOID  # the format's void id
    out = tmp_path / "metrics.json"
    assert (
        run_cli(["-q", "eval", str(pred), str(root), "--format", "pairs", "--json", str(out)]) == 0
    )
    metrics = json.loads(out.read_text())
    assert metrics["class_names"] == ["sky", "box", "ground"] and metrics["num_frames"] == 4
    assert metrics["miou"] == pytest.approx(reference_miou(pred, ds), abs=1e-9)


def test_scoring_follows_the_formats_strict_ids(pairs, tmp_path):
    root = write_pairs(tmp_path / "pairs", frames=1, labelled=(0,))
    gt = root / "clip2" / "gt_0.png"
    ids = np.array(Image.open(gt))
    ids[0, 0] = 5  # neither a class nor the void id
    Image.fromarray(ids).save(gt)
    pred = tmp_path / "pred"
    for v in ("clip2", "clip10"):
        (pred / v).mkdir(parents=True)
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(pred / v / "img_0.png")
    with pytest.raises(LabelError, match="GT id 5 is outside the class range 0..2"):
        evaluate_folders(pred, root, "pairs")
    lenient = dataclasses.replace(PAIRS, name="pairs-lenient", strict_ids=False)
    register(lenient)
    try:
        result = evaluate_folders(pred, root, "pairs-lenient")
    finally:
        unregister("pairs-lenient")
    assert result.num_frames == 2 and result.per_class_iou[1] == 0.0  # the box is never predicted


def test_the_cli_offers_only_registered_formats(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        run_cli(["eval", str(tmp_path), str(tmp_path), "--format", "pairs"])
    assert info.value.code == 2
    assert "invalid choice: 'pairs'" in capsys.readouterr().err

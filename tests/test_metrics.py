"""Tests of zsvss_nb.evaluation.metrics: hand-computed cases, loop references and protocol
properties."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from zsvss_nb.datasets import open_dataset
from zsvss_nb.errors import ConfigError, LabelError, PredictionMissingError
from zsvss_nb.evaluation.evaluate import evaluate_folders
from zsvss_nb.evaluation.metrics import (
    PROTOCOLS,
    ConfusionMatrix,
    apply_protocol,
    clip_consistency,
    evaluate,
    map_hungarian,
    map_majority_frame,
    mean_vc,
    video_consistency,
)

DATA = Path(__file__).parents[1] / "data"


# ---------------------------------------------------------------- loop references


def confusion_loop(pred, gt, c, ignore):
    m = np.zeros((c, c + 1), dtype=np.int64)
    for p, g in zip(np.ravel(pred), np.ravel(gt), strict=True):
        if g < 0 or g >= c or g == ignore:
            continue
        m[g, p if 0 <= p < c else c] += 1
    return m


def vc_loop(preds, gts, n):
    """The official VC_perclip.py loop, written out per clip, per offset and per pixel."""
    out = []
    h, w = gts[0].shape
    for i in range(len(gts) - n):
        both = steady = 0
        for y in range(h):
            for x in range(w):
                g_ok = all(gts[i][y, x] == gts[i + j][y, x] for j in range(1, n))
                p_ok = all(preds[i][y, x] == preds[i + j][y, x] for j in range(1, n))
                steady += g_ok
                both += g_ok and p_ok
        out.append(both / steady if steady else math.nan)
    return out


def majority_loop(pred, gt, c, ignore):
    out = np.full(pred.shape, c)
    for k in np.unique(pred):
        counts = [np.sum((pred == k) & (gt == cls)) for cls in range(c) if cls != ignore]
        classes = [cls for cls in range(c) if cls != ignore]
        if k >= 0 and max(counts, default=0) > 0:
            out[pred == k] = classes[int(np.argmax(counts))]
    return out


def best_overlap_brute(preds, gts, c, ignore):
    """Largest one-to-one overlap total over every injective id -> class assignment."""
    p = np.concatenate([x.ravel() for x in preds])
    g = np.concatenate([x.ravel() for x in gts])
    ok = (g >= 0) & (g < c) & (g != ignore)
    p, g = p[ok], g[ok]
    ids = sorted(set(p.tolist()))
    best = 0
    for k in range(min(len(ids), c) + 1):
        for chosen in itertools.combinations(ids, k):
            for classes in itertools.permutations(range(c), k):
                best = max(
                    best,
                    sum(
                        int(np.sum((p == i) & (g == cl)))
                        for i, cl in zip(chosen, classes, strict=True)
                    ),
                )
    return best


# ---------------------------------------------------------------- confusion matrix / IoU


def test_iou_hand_computed_with_ignore():
    gt = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 0, 7]])
    cm = ConfusionMatrix(3, ignore_index=255).update(pred, gt)
    np.testing.assert_array_equal(cm.matrix, [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0]])
    np.testing.assert_allclose(cm.iou(), [1 / 3, 2 / 3, 0.0])
    assert cm.miou() == pytest.approx(1 / 3)
    assert cm.pixel_accuracy() == pytest.approx(3 / 5)
    assert cm.class_accuracy() == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_out_of_range_prediction_counts_wrong_and_absent_class_is_nan():
    gt = np.array([[0, 0, 1], [1, 1, 1]])
    pred = np.array([[0, 9, 1], [-1, 1, 1]])
    cm = ConfusionMatrix(3, ignore_index=None).update(pred, gt)
    np.testing.assert_array_equal(cm.matrix[:, 3], [1, 1, 0])
    iou = cm.iou()
    np.testing.assert_allclose(iou[:2], [0.5, 0.75])
    assert math.isnan(iou[2])
    assert cm.miou() == pytest.approx(0.625)


def test_class_absent_from_gt_but_predicted_scores_zero_not_nan():
    gt = np.zeros((2, 3), dtype=np.uint8)
    pred = np.array([[0, 0, 2], [0, 0, 0]], dtype=np.uint8)
    iou = ConfusionMatrix(3).update(pred, gt).iou()
    assert iou[0] == pytest.approx(5 / 6) and iou[2] == 0.0 and math.isnan(iou[1])


def test_gt_outside_class_range_is_not_counted():
    gt = np.array([[0, 5], [-3, 1]])
    pred = np.array([[0, 0], [0, 1]])
    cm = ConfusionMatrix(2, ignore_index=None).update(pred, gt)
    assert cm.matrix.sum() == 2 and cm.miou() == 1.0


def test_confusion_matches_loop_reference_and_merge():
    rng = np.random.default_rng(0)
    gt = rng.choice([0, 1, 2, 3, 4, 255, 9], size=(6, 7, 5))
    pred = rng.integers(-2, 8, size=(6, 7, 5))
    whole = ConfusionMatrix(5).update(pred, gt)
    np.testing.assert_array_equal(whole.matrix, confusion_loop(pred, gt, 5, 255))
    half = ConfusionMatrix(5).update(pred[:3], gt[:3])
    half.merge(ConfusionMatrix(5).update(pred[3:], gt[3:]))
    np.testing.assert_array_equal(half.matrix, whole.matrix)
    with pytest.raises(ConfigError):
        half.merge(ConfusionMatrix(4))


def test_confusion_accepts_torch_and_rejects_shape_or_dtype_mismatch():
    gt = torch.tensor([[0, 1], [1, 1]])
    cm = ConfusionMatrix(2).update(gt.clone(), gt)
    assert cm.miou() == 1.0
    with pytest.raises(LabelError):
        cm.update(np.zeros((2, 3), int), np.zeros((3, 2), int))
    with pytest.raises(LabelError):
        cm.update(np.zeros((2, 2)), np.zeros((2, 2), int))


# ---------------------------------------------------------------- video consistency


def test_vc_hand_computed_ten_frames_n8():
    gts = [np.array([[0, 1, 1], [2, 2, 0]]) for _ in range(10)]
    preds = [g.copy() for g in gts]
    for t in (8, 9):
        gts[t] = gts[t].copy()
        gts[t][0, 0] = 3  # GT change between frames 7 and 8: out of clip 0, inside clip 1
    for t in range(3, 10):
        preds[t] = preds[t].copy()
        preds[t][1, 2] = 1  # prediction flips at frame 3: unstable in both clips
    preds[0] = preds[0].copy()
    preds[0][0, 1] = 2  # differs only in frame 0: unstable in clip 0 only
    vc = clip_consistency(preds, gts, 8)
    np.testing.assert_allclose(vc, [4 / 6, 4 / 5])
    np.testing.assert_allclose(vc, vc_loop(preds, gts, 8))
    assert video_consistency(preds, gts, 8) == pytest.approx((4 / 6 + 4 / 5, 2))


def test_vc_random_video_matches_official_loop():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 3, size=(4, 5))
    gts, preds = [], []
    g, p = base.copy(), base.copy()
    for _ in range(13):
        g = np.where(rng.random(g.shape) < 0.08, rng.integers(0, 3, g.shape), g)
        p = np.where(rng.random(p.shape) < 0.1, rng.integers(0, 3, p.shape), p)
        gts.append(g.copy())
        preds.append(p.copy())
    for n in (2, 3, 8):
        np.testing.assert_allclose(clip_consistency(preds, gts, n), vc_loop(preds, gts, n))


def test_mean_vc_pools_clips_across_videos():
    gts = [np.array([[0, 1, 1], [2, 2, 0]]) for _ in range(10)]
    preds = [g.copy() for g in gts]
    for t in (8, 9):
        gts[t] = gts[t].copy()
        gts[t][0, 0] = 3
    for t in range(3, 10):
        preds[t] = preds[t].copy()
        preds[t][1, 2] = 1
    preds[0] = preds[0].copy()
    preds[0][0, 1] = 2
    steady = [np.zeros((2, 3), int)] * 9
    pooled = mean_vc([(preds, gts), (steady, steady)], 8)
    assert pooled == pytest.approx((4 / 6 + 4 / 5 + 1) / 3)  # not ((11/15) + 1) / 2


def test_short_videos_contribute_nothing_and_empty_g_is_nan():
    eight = [np.zeros((2, 2), int)] * 8
    assert clip_consistency(eight, eight, 8).size == 0
    assert math.isnan(mean_vc([(eight, eight)], 8))
    flicker = [np.full((2, 2), t % 2) for t in range(10)]
    vc = clip_consistency(flicker, flicker, 8)
    assert vc.shape == (2,) and np.isnan(vc).all()
    assert video_consistency(flicker, flicker, 8) == (0.0, 0)
    with pytest.raises(ConfigError):
        clip_consistency(eight, eight, 1)


# ---------------------------------------------------------------- protocols


def planted_video(rng, frames=4, shape=(6, 8), classes=4):
    gts = [rng.integers(0, classes, size=shape) for _ in range(frames)]
    gts[0][0, 0] = 255
    return gts


def test_planted_permutation_recovered_by_hungarian_and_majority():
    rng = np.random.default_rng(2)
    gts = planted_video(rng)
    perm = np.array([7, 2, 5, 0])
    preds = [np.where(g == 255, 1, perm[np.minimum(g, 3)]) for g in gts]
    for protocol in ("hungarian", "majority"):
        r = evaluate([("v", preds, gts)], 4, 255, protocol, vc_ns=(2,))
        assert r.miou == 1.0 and r.pixel_acc == 1.0
    assert evaluate([("v", preds, gts)], 4, 255, "first-frame").miou < 0.5
    lut = map_hungarian(preds, gts, 4, 255)
    np.testing.assert_array_equal(lut[perm], [0, 1, 2, 3])
    assert (np.delete(lut, perm) == 4).all()


def test_hungarian_is_one_to_one_majority_is_many_to_one():
    gt = np.array([[0, 0, 0, 1], [0, 0, 0, 1]])
    pred = np.array([[3, 3, 5, 1], [3, 3, 5, 1]])  # class 0 split into ids 3 and 5
    lut = map_hungarian([pred], [gt], 2, 255)
    assert lut[3] == 0 and lut[1] == 1 and lut[5] == 2
    np.testing.assert_array_equal(map_majority_frame(pred, gt, 2, 255), gt)
    np.testing.assert_array_equal(
        apply_protocol("hungarian", [pred], [gt], 2, 255)[0], [[0, 0, 2, 1], [0, 0, 2, 1]]
    )


def test_majority_is_per_frame_and_ignores_void():
    gts = [np.array([[0, 1], [1, 255]])] * 2
    preds = [np.array([[4, 6], [6, 9]]), np.array([[6, 4], [4, 9]])]
    out = apply_protocol("majority", preds, gts, 2, 255)
    np.testing.assert_array_equal(out[0], [[0, 1], [1, 2]])  # id 9 touches only void -> wrong
    np.testing.assert_array_equal(out[1], [[0, 1], [1, 2]])
    assert evaluate([("v", preds, gts)], 2, 255, "hungarian").miou < 1.0


def test_majority_matches_loop_reference():
    rng = np.random.default_rng(3)
    for _ in range(5):
        gt = rng.choice([0, 1, 2, 255], size=(5, 6))
        pred = rng.integers(0, 6, size=(5, 6))
        np.testing.assert_array_equal(
            map_majority_frame(pred, gt, 3, 255), majority_loop(pred, gt, 3, 255)
        )


def test_hungarian_total_overlap_matches_brute_force():
    rng = np.random.default_rng(4)
    for _ in range(4):
        gts = [rng.choice([0, 1, 2, 255], size=(3, 4)) for _ in range(2)]
        preds = [rng.integers(0, 4, size=(3, 4)) for _ in range(2)]
        mapped = apply_protocol("hungarian", preds, gts, 3, 255)
        hits = sum(int(np.sum((m == g) & (g != 255))) for m, g in zip(mapped, gts, strict=True))
        assert hits == best_overlap_brute(preds, gts, 3, 255)


def test_unknown_protocol_and_first_frame_identity():
    g = [np.zeros((2, 2), int)]
    with pytest.raises(ConfigError):
        apply_protocol("oracle", g, g, 2)
    with pytest.raises(ConfigError):
        evaluate([("v", g, g)], 2, protocol="oracle")
    p = [np.array([[1, 7], [0, 1]])]
    np.testing.assert_array_equal(apply_protocol("first-frame", p, g, 2)[0], p[0])


video_strategy = st.integers(1, 3).flatmap(
    lambda t: st.tuples(
        st.lists(
            arrays(np.int64, (3, 4), elements=st.sampled_from([0, 1, 2, 255])),
            min_size=t,
            max_size=t,
        ),
        st.lists(arrays(np.int64, (3, 4), elements=st.integers(0, 5)), min_size=t, max_size=t),
        st.permutations(list(range(6))),
    )
)


@settings(max_examples=60, deadline=None)
@given(video_strategy)
def test_hungarian_invariant_to_label_permutation(data):
    gts, preds, perm = data
    perm = np.array(perm)
    permuted = [perm[p] for p in preds]
    a = evaluate([("v", preds, gts)], 3, 255, "hungarian", vc_ns=(2,))
    b = evaluate([("v", permuted, gts)], 3, 255, "hungarian", vc_ns=(2,))
    assert np.trace(a.confusion) == np.trace(b.confusion)  # matched pixels: the optimum's value
    np.testing.assert_array_equal(a.confusion.sum(1), b.confusion.sum(1))


@settings(max_examples=60, deadline=None)
@given(video_strategy, st.sampled_from(PROTOCOLS))
def test_metrics_lie_in_unit_interval(data, protocol):
    gts, preds, _ = data
    r = evaluate([("v", preds, gts)], 3, 255, protocol, vc_ns=(2,))
    for v in (r.miou, r.pixel_acc, r.mvc[2], *r.per_class_iou):
        assert math.isnan(v) or 0.0 <= v <= 1.0


# ---------------------------------------------------------------- evaluate


def test_perfect_and_constant_predictions():
    gts = [np.array([[0, 0, 0], [1, 1, 2]])] * 10
    perfect = evaluate([("v", gts, gts)], 3, 255, "first-frame", vc_ns=(8,))
    assert perfect.miou == 1.0 and perfect.pixel_acc == 1.0 and perfect.mvc8 == 1.0
    assert perfect.per_class_iou == [1.0, 1.0, 1.0] and math.isnan(perfect.mvc16)
    const = evaluate([("v", [np.zeros((2, 3), int)] * 10, gts)], 3, 255, "first-frame")
    assert const.mvc8 == 1.0 and math.isnan(const.mvc16)
    assert const.per_class_iou == pytest.approx([0.5, 0.0, 0.0])
    assert const.miou == pytest.approx(1 / 6) and const.pixel_acc == pytest.approx(0.5)
    assert const.num_frames == 10 and const.num_videos == 1


def test_partial_gt_scores_labelled_frames_and_splits_vc_runs():
    rng = np.random.default_rng(5)
    g, gts, preds = rng.integers(0, 2, size=(3, 3)), [], []
    for _ in range(20):
        g = np.where(rng.random(g.shape) < 0.05, 1 - g, g)
        gts.append(g.copy())
        preds.append(np.where(rng.random(g.shape) < 0.05, 1 - g, g))
    gts[10] = preds[10] = None
    r = evaluate([("v", preds, gts)], 2, 255, "first-frame", vc_ns=(8,))
    cm = ConfusionMatrix(2)
    for p, g in zip(preds, gts, strict=True):
        if g is not None:
            cm.update(p, g)
    assert r.num_frames == 19 and r.miou == pytest.approx(cm.miou())
    runs = [(preds[:10], gts[:10]), (preds[11:], gts[11:])]  # 2 + 1 clips of 8 frames
    clips = [v for p, g in runs for v in vc_loop(p, g, 8)]
    assert len(clips) == 3 and not math.isnan(r.mvc8)
    assert r.mvc8 == pytest.approx(np.nanmean(clips))
    with pytest.raises(LabelError):
        evaluate([("v", [np.zeros((2, 2), int)], [np.zeros((2, 3), int)])], 2)


def test_result_json_and_table():
    gts = [np.array([[0, 1]])] * 3
    r = evaluate([("v", gts, gts)], 2, 255, "majority")
    d = json.loads(r.to_json())
    assert d["mvc8"] is None and d["mvc16"] is None and d["miou"] == 1.0
    assert d["protocol"] == "majority" and d["per_class_iou"] == [1.0, 1.0]
    table = r.table()
    assert "| majority | 100.00 | n/a | n/a | 100.00 | 1 | 3 |" in table


# ---------------------------------------------------------------- evaluate_folders


def write_png(path: Path, arr: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr.astype(np.uint8))
    if palette:  # putpalette turns the L image into a P image holding the same indices
        im.putpalette([v for k in range(256) for v in (k, 255 - k, 0)])
        assert im.mode == "P"
    im.save(path)


def fake_davis(tmp_path: Path, frames: int = 10) -> tuple[Path, list[np.ndarray]]:
    root = tmp_path / "gt"
    rng = np.random.default_rng(6)
    masks = [(rng.random((4, 5)) < 0.4).astype(np.uint8) for _ in range(frames)]
    for t, m in enumerate(masks):
        (root / "clip" / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (5, 4)).save(root / "clip" / "JPEGImages" / f"{t:05d}.jpg")
        write_png(root / "clip" / "Annotations" / f"{t:05d}.png", m * 255)
    return root, masks


def test_evaluate_folders_reads_palette_predictions(tmp_path):
    root, masks = fake_davis(tmp_path)
    for t, m in enumerate(masks):
        write_png(tmp_path / "pred" / "clip" / f"{t:05d}.png", 1 - m, palette=True)
    r = evaluate_folders(tmp_path / "pred", root, "davis", "hungarian", vc_ns=(8,))
    assert r.miou == 1.0 and r.num_frames == 10 and r.num_videos == 1
    assert r.class_names == ["background", "object"]
    assert evaluate_folders(tmp_path / "pred", root, "davis", "first-frame").miou == 0.0


def test_evaluate_folders_missing_frame_and_wrong_size(tmp_path):
    root, masks = fake_davis(tmp_path, frames=4)
    for t in (0, 1, 3):
        write_png(tmp_path / "pred" / "clip" / f"{t:05d}.png", masks[t])
    with pytest.raises(PredictionMissingError, match=r"'clip'.*00002\.png"):
        evaluate_folders(tmp_path / "pred", root, "davis")
    write_png(tmp_path / "pred" / "clip" / "00002.png", np.zeros((5, 4)))
    with pytest.raises(LabelError, match="size"):
        evaluate_folders(tmp_path / "pred", root, "davis")
    with pytest.raises(PredictionMissingError, match="clip"):
        evaluate_folders(tmp_path / "nothing", root, "davis")


@pytest.mark.skipif(not (DATA / "camvid").is_dir(), reason="sample data not copied yet")
def test_evaluate_folders_on_real_camvid(tmp_path):
    ds = open_dataset("camvid", DATA / "camvid")
    for v in ds.videos:
        for stem, path in v.labels.items():
            (tmp_path / v.name).mkdir(exist_ok=True)
            shutil.copy(path, tmp_path / v.name / f"{stem}.png")
    r = evaluate_folders(tmp_path, ds, protocol="first-frame")
    assert r.miou == 1.0 and r.mvc8 == 1.0 and r.mvc16 == 1.0
    assert r.num_videos == 2 and r.num_frames == 60
    assert all(not math.isnan(v) for v in r.per_class_iou[:9])  # 0006R0 + 0016E5 classes


# ---------------------------------------------------------------- notebook helpers


def change_fraction_loop(frames):
    out = []
    for a, b in zip(frames[:-1], frames[1:], strict=True):
        changed = total = 0
        for y in range(a.shape[0]):
            for x in range(a.shape[1]):
                changed += int(a[y, x] != b[y, x])
                total += 1
        out.append(changed / total)
    return out


def test_label_change_fraction_and_flicker_match_loop():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 3, (5, 6, 7))
    from zsvss_nb.evaluation.evaluate import flicker_rate, label_change_fraction

    np.testing.assert_allclose(label_change_fraction(frames), change_fraction_loop(frames))
    np.testing.assert_allclose(
        label_change_fraction(list(torch.as_tensor(frames))), change_fraction_loop(frames)
    )
    assert flicker_rate(frames) == pytest.approx(np.mean(change_fraction_loop(frames)))
    static = np.repeat(frames[:1], 4, axis=0)
    assert flicker_rate(static) == 0.0
    moving = np.zeros((3, 4, 4), dtype=np.int64)
    moving[1, :, :2] = 1  # half the pixels change into frame 1 and back out of it
    np.testing.assert_allclose(label_change_fraction(moving), [0.5, 0.5])
    assert math.isnan(flicker_rate(frames[:1]))
    with pytest.raises(LabelError):
        label_change_fraction([frames[0], frames[1][:3]])


def test_evaluate_protocols_rows_equal_single_evaluations():
    from zsvss_nb.evaluation.evaluate import VideoPrediction, evaluate_protocols

    rng = np.random.default_rng(1)
    base = rng.integers(0, 3, (6, 6))
    gts = [np.where(rng.random((6, 6)) < 0.1, (base + 1) % 3, base) for _ in range(10)]
    preds = [(g + 1) % 3 for g in gts]  # a consistent relabelling: hungarian/majority undo it
    videos = [VideoPrediction("v", preds, gts)]
    table = evaluate_protocols(iter(videos), 3, 255, vc_ns=(2, 8), run="run A")
    assert [r.protocol for _, r in table.rows] == list(PROTOCOLS)
    for protocol in PROTOCOLS:
        want = evaluate([("v", preds, gts)], 3, 255, protocol, (2, 8))
        got = table.result("run A", protocol)
        assert got.miou == pytest.approx(want.miou)
        assert got.mvc == pytest.approx(want.mvc)
        assert not math.isnan(got.mvc[8])
    assert table.result("run A", "first-frame").miou == 0.0
    assert table.result("run A", "hungarian").miou == 1.0
    assert table.result("run A", "majority").miou == 1.0
    with pytest.raises(ConfigError):
        table.result("run B", "hungarian")


def test_result_table_markdown_lists_every_row_in_percent():
    from zsvss_nb.evaluation.evaluate import Markdown, ResultTable, evaluate_protocols

    gt = [np.array([[0, 0], [1, 1]])] * 3
    pred = [np.array([[0, 1], [1, 1]])] * 3
    names = ["bg", "fg"]
    a = evaluate_protocols([("v", pred, gt)], 2, None, ("first-frame",), (2,), names, "A")
    b = evaluate_protocols([("v", gt, gt)], 2, None, ("hungarian",), (2,), names, "B")
    table = ResultTable() + a + b
    assert len(table) == 2
    lines = table.markdown().splitlines()
    assert lines[0] == "| run | protocol | mIoU | mVC2 | pixel acc | videos | frames |"
    # IoU bg = 1/2, fg = 2/3 -> mIoU 58.33; pixel acc 3/4
    assert lines[2] == "| A | first-frame | 58.33 | 100.00 | 75.00 | 1 | 3 |"
    assert lines[3] == "| B | hungarian | 100.00 | 100.00 | 100.00 | 1 | 3 |"
    per_class = table.per_class()
    assert isinstance(per_class, Markdown) and per_class._repr_markdown_() == per_class
    assert per_class.splitlines() == [
        "| class | A (first-frame) | B (hungarian) |",
        "|---|---|---|",
        "| bg | 50.00 | 100.00 |",
        "| fg | 66.67 | 100.00 |",
    ]
    assert table._repr_markdown_() == table.markdown() == str(table) == repr(table)
    assert table.select(protocols=["hungarian"]).rows == b.rows
    assert table.select(runs=["A", "B"], protocols=["first-frame"]).rows == a.rows
    other = evaluate_protocols([("v", gt, gt)], 3, None, ("hungarian",), (2,), None, "C")
    with pytest.raises(ConfigError, match="class sets"):
        (table + other).per_class()
    with pytest.raises(ConfigError):
        ResultTable().per_class()


def _write_folder_dataset(root: Path, frames: int, size: int) -> None:
    """One video of ``frames`` frames: left half class 1, right half class 2, top rows void 9."""
    rng = np.random.default_rng(2)
    (root / "clip").mkdir(parents=True)
    (root / "labels" / "clip").mkdir(parents=True)
    for t in range(frames):
        img = np.zeros((size, size, 3), dtype=np.uint8)
        img[:, : size // 2] = (200, 30, 30)
        img[:, size // 2 :] = (30, 30, 200)
        img = np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "clip" / f"f{t:03d}.png")
        lab = np.full((size, size), 2, dtype=np.uint8)
        lab[:, : size // 2] = 1
        lab[:8] = 9
        Image.fromarray(lab).save(root / "labels" / "clip" / f"f{t:03d}.png")


class _FakeSegmenter:
    """Stands in for pipeline.Segmenter: label = frame index + 1 where the first-frame GT is 2."""

    configs: list = []

    def __init__(self, backbone, cfg):
        self.cfg = cfg
        _FakeSegmenter.configs.append(cfg)

    def segment(self, video, first_frame_gt=None, return_debug=False, progress=True):
        from zsvss_nb.pipeline import FrameResult

        w, h = video.size
        for i in range(len(video)):
            lab = torch.zeros(h, w, dtype=torch.long)
            if first_frame_gt is not None:
                lab[torch.as_tensor(first_frame_gt) == 2] = i + 1
            yield FrameResult(index=i, labels=lab, name=video.names[i])


def test_segment_dataset_cuts_clips_routes_ignore_and_pairs_gt(tmp_path, monkeypatch):
    from zsvss_nb import SegmentConfig, pipeline
    from zsvss_nb.run.runner import segment_dataset

    _write_folder_dataset(tmp_path, frames=4, size=64)
    ds = open_dataset("folder", tmp_path, num_classes=3, ignore_index=9)
    monkeypatch.setattr(pipeline, "Segmenter", _FakeSegmenter)
    _FakeSegmenter.configs.clear()
    (run,) = segment_dataset(None, SegmentConfig.tiny(), ds, max_frames=3)
    assert _FakeSegmenter.configs[0].context.ignore_index == 9
    assert run.name == "clip" and len(run.preds) == len(run.gts) == 3
    assert run.frames.shape == (3, 3, 64, 64) and run.frames.dtype == torch.uint8
    for t, (pred, gt) in enumerate(zip(run.preds, run.gts, strict=True)):
        want = np.asarray(Image.open(ds.videos[0].labels[f"f{t:03d}"])).astype(np.int64)
        np.testing.assert_array_equal(gt, want)
        assert pred.dtype == np.int64
        np.testing.assert_array_equal(pred, np.where(want == 2, t + 1, 0))  # GT of frame 1 used
    free = segment_dataset(None, SegmentConfig.tiny(), ds, first_frame_gt=False, keep_frames=False)
    assert free[0].frames is None and len(free[0].preds) == 4
    assert all(int(p.max()) == 0 for p in free[0].preds)  # no GT reached the segmenter
    with pytest.raises(ConfigError):
        segment_dataset(None, SegmentConfig.tiny(), ds, max_frames=0)
    (tmp_path / "labels" / "clip" / "f000.png").unlink()
    ds = open_dataset("folder", tmp_path, num_classes=3, ignore_index=9)
    with pytest.raises(LabelError, match="f000"):
        segment_dataset(None, SegmentConfig.tiny(), ds)


def test_segment_dataset_with_tiny_model_never_predicts_void(tmp_path):
    from zsvss_nb import SegmentConfig, load_backbone
    from zsvss_nb.run.runner import segment_dataset

    _write_folder_dataset(tmp_path, frames=2, size=64)
    ds = open_dataset("folder", tmp_path, num_classes=3, ignore_index=9)
    cfg = SegmentConfig.tiny().replace(window=2, k=3, method="nearest")
    (run,) = segment_dataset(load_backbone("tiny"), cfg, ds)
    for pred in run.preds:
        assert pred.shape == (64, 64)
        assert set(np.unique(pred)) <= {1, 2}  # GT classes of frame 1; the void id 9 never

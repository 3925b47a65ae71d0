"""The Segmenter end to end on the tiny model: streaming, windows, outputs of run(), manifest."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zsvss_nb.config import SegmentConfig
from zsvss_nb.errors import LabelError
from zsvss_nb.io.video import open_video
from zsvss_nb.pipeline import FrameResult, Segmenter, WindowLabels

CAMVID = Path(__file__).resolve().parents[1] / "data" / "camvid" / "0016E5_15Hz"


def _synthetic(n: int, h: int = 128, w: int = 160) -> np.ndarray:
    """[n, h, w, 3] uint8: a vertical gradient with a red and a blue box moving 4 px a frame."""
    video = np.zeros((n, h, w, 3), np.uint8)
    video[..., 1] = np.linspace(40, 200, h, dtype=np.uint8)[None, :, None]
    for t in range(n):
        video[t, 20:60, 10 + 4 * t : 50 + 4 * t] = (230, 30, 30)
        video[t, 70 + 4 * t : 100 + 4 * t, 90:140] = (30, 30, 230)
    return video


def _cfg(method: str = "modulation", **changes) -> SegmentConfig:
    cfg = SegmentConfig.tiny().replace(max_side=128, **changes)
    return cfg.replace(upsample=cfg.upsample.replace(method=method))


def test_segment_yields_every_frame_once_in_order(tiny):
    seg = Segmenter(tiny, _cfg(window=3))
    results = list(seg.segment(_synthetic(5), return_debug=True, progress=False))
    assert [r.index for r in results] == [0, 1, 2, 3, 4]
    assert seg.stats.windows == 2 and seg.stats.frames_processed == 6  # [0, 3) and [2, 5)
    assert seg.stats.vae_decodes > 0
    for r in results:
        assert isinstance(r, FrameResult)
        assert r.labels.dtype == torch.long and r.labels.shape == (128, 160)
        # max_side 128: 160x128 -> 128x102 -> 128x64 processed, a 4x8 feature grid
        assert r.coarse.shape == (4, 8) and r.refined.shape == (4, 8)
        assert r.raw_labels.shape == (128, 160)
        assert r.diff.shape == (len(r.classes), 64, 128)
        assert float(r.diff.amax()) <= 1.0
        assert set(r.labels.unique().tolist()) <= set(r.classes.tolist())
    index, labels = results[3]  # FrameResult unpacks as (index, labels)
    assert index == 3 and labels is results[3].labels


@pytest.mark.parametrize("n", [1, 4])
def test_one_frame_and_window_plus_one(tiny, n):
    seg = Segmenter(tiny, _cfg("bilinear", window=3))
    seen = []
    for index, labels in seg.segment(_synthetic(n), progress=False):
        assert labels.shape == (128, 160) and labels.dtype == torch.long
        seen.append(index)
    assert seen == list(range(n))
    assert seg.stats.windows == (1 if n == 1 else 2)


def _camvid_frames(n: int) -> list[Path]:
    return sorted((CAMVID / "images").glob("*.png"))[:n]


def _camvid_cfg(method: str = "bilinear") -> SegmentConfig:
    return _cfg(method, ignore_index=11)  # CamVid's void id never becomes a class


@pytest.fixture(scope="module")
def camvid_run(tiny, tmp_path_factory):
    frames = _camvid_frames(4)
    gt = CAMVID / "labels" / frames[0].name
    out = tmp_path_factory.mktemp("camvid")
    manifest = Segmenter(tiny, _camvid_cfg()).run(frames, out, first_frame_gt=gt, progress=False)
    return frames, gt, out, manifest


def test_run_writes_labels_colour_overlay_and_manifest(tiny, camvid_run):
    frames, gt, out, manifest = camvid_run
    stems = [p.stem for p in frames]
    assert sorted(p.stem for p in (out / "labels").glob("*.png")) == stems
    assert sorted(p.stem for p in (out / "color").glob("*.png")) == stems
    gt_ids = set(np.unique(np.array(Image.open(gt))).tolist()) - {11}
    for stem in stems:
        with Image.open(out / "labels" / f"{stem}.png") as im:
            assert im.mode == "L" and im.size == (480, 360)
            ids = np.array(im)
        with Image.open(out / "color" / f"{stem}.png") as im:
            assert im.mode == "P" and im.size == (480, 360)
            assert np.array_equal(np.array(im), ids)
        # clusters took frame-1 GT classes: CamVid ids 0..10, never the void id 11
        assert set(np.unique(ids).tolist()) <= gt_ids <= set(range(11))
    with open_video(out / "overlay.mp4") as video:
        assert len(video) == len(frames)
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest, default=str))
    for key in ("config", "model", "versions", "seed", "stats"):
        assert key in on_disk
    assert re.fullmatch(r"[0-9a-f]{64}", on_disk["model"]["sha256"])
    assert on_disk["model"]["sha256"] == tiny.fingerprint()
    assert on_disk["seed"] == 1 and on_disk["versions"]["torch"] == torch.__version__
    assert SegmentConfig.from_dict(on_disk["config"]) == _camvid_cfg()
    assert on_disk["config"]["context"]["ignore_index"] == 11
    stats = on_disk["stats"]
    assert stats["unet_evals_per_frame"] > 0
    assert stats["vae_decodes_per_frame"] == 0  # bilinear upsampling decodes nothing
    assert stats["peak_rss_gb"] > 0


def test_wrong_size_gt_raises_before_writing(tiny, tmp_path):
    frames = _camvid_frames(2)
    bad = np.zeros((100, 100), np.uint8)
    out = tmp_path / "bad"
    with pytest.raises(LabelError, match="first-frame GT"):
        Segmenter(tiny, _camvid_cfg()).run(frames, out, first_frame_gt=bad, progress=False)
    assert not out.exists()


def test_two_runs_give_identical_label_pngs(tiny, camvid_run, tmp_path):
    frames, gt, out, _ = camvid_run
    Segmenter(tiny, _camvid_cfg()).run(
        frames, tmp_path, first_frame_gt=gt, overlay=False, progress=False
    )
    for p in frames:
        first = (out / "labels" / f"{p.stem}.png").read_bytes()
        assert (tmp_path / "labels" / f"{p.stem}.png").read_bytes() == first


def test_run_with_masked_modulation(tiny, tmp_path):
    frames = _camvid_frames(2)
    gt = CAMVID / "labels" / frames[0].name
    manifest = Segmenter(tiny, _camvid_cfg("modulation")).run(
        frames, tmp_path, first_frame_gt=gt, overlay=False, progress=False
    )
    assert manifest["stats"]["vae_decodes_per_frame"] > 0
    assert manifest["config"]["upsample"]["method"] == "modulation"
    assert len(list((tmp_path / "labels").glob("*.png"))) == 2


class _WindowIndex(Segmenter):
    """A method written against the hook: every pixel is its frame's index, the coarse map the
    window's first index, and the context the pipeline hands in is recorded."""

    def label_window(self, window, context, gt, stats):
        self.contexts.append(context)
        h, w = window.frames.shape[-2:]
        labels = torch.tensor(window.indices)[:, None, None].expand(-1, h, w)
        return WindowLabels(
            labels, coarse=torch.full((len(window.indices), 2, 2), window.indices[0])
        )


def test_a_method_overrides_label_window_and_gets_the_result_loop(tiny, tmp_path):
    seg = _WindowIndex(tiny, _cfg(window=3))
    seg.contexts = []
    results = list(seg.segment(_synthetic(5), return_debug=True, progress=False))
    assert [r.index for r in results] == [0, 1, 2, 3, 4]  # the overlap frame 2 once
    assert all(bool((r.labels == r.index).all()) for r in results)
    assert [int(r.coarse[0, 0]) for r in results] == [0, 0, 0, 2, 2]  # frame 2 from window 1
    assert all(r.refined is None and r.diff is None and r.classes is None for r in results)
    assert len(seg.contexts) == 2 and seg.contexts[0] is seg.contexts[1]  # one per video
    assert (seg.stats.windows, seg.stats.frames_processed) == (2, 6)
    plain = list(seg.segment(_synthetic(5), progress=False))
    assert all(r.coarse is None for r in plain)  # debug maps only when asked

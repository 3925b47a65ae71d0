"""Bad input, through the API and the CLI (issue #8, item 1).

Each case builds one bad input in tmp_path. The API must raise exactly the typed exception of
:mod:`zsvss_nb.errors`; the CLI must exit with code 2 and print exactly one line on stderr that
names the input (path or value) and has no traceback; neither may leave output behind. Most CLI
runs call ``zsvss_nb.run.cli.main`` in-process; a few real subprocesses prove the entry point. The
safe pixel-format conversions are checked to give the same labels as the equivalent RGB frames.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import CHILD_ENV, moving_box_frames
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from zsvss_nb import errors as E
from zsvss_nb.backbones import load_backbone
from zsvss_nb.backbones.sd.weights import save_folder
from zsvss_nb.config import SegmentConfig
from zsvss_nb.evaluation.evaluate import evaluate_folders
from zsvss_nb.io.video import open_video
from zsvss_nb.io.writers import write_video
from zsvss_nb.kernels.frames import geometry_for
from zsvss_nb.pipeline import Segmenter
from zsvss_nb.run.cli import main

ROOT = Path(__file__).resolve().parents[1]
H, W = 96, 128  # max_side 128 -> processed 64x128, a 4x8 feature grid


def frame_folder(folder: Path, frames: np.ndarray | list[Image.Image]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(frames):
        im = frame if isinstance(frame, Image.Image) else Image.fromarray(frame)
        im.save(folder / f"{t:03d}.png")
    return folder


# ------------------------------------------------------------------------------ bad inputs


@dataclass
class Bad:
    """One bad input. ``named``: what the one-line message must contain."""

    video: Path
    named: str
    gt: Path | None = None
    model: str = "tiny"
    k: int = 3


def _missing(tmp: Path) -> Bad:
    return Bad(tmp / "no_such_video", str(tmp / "no_such_video"))


def _empty_folder(tmp: Path) -> Bad:
    (tmp / "empty").mkdir()
    return Bad(tmp / "empty", str(tmp / "empty"))


def _no_images(tmp: Path) -> Bad:
    folder = tmp / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("frames went elsewhere\n")
    (folder / "000.json").write_text("{}")
    (folder / ".hidden.png").write_bytes(b"")  # hidden files are not frames
    return Bad(folder, str(folder))


def _truncated_mp4(tmp: Path) -> Bad:
    good = write_video(tmp / "good.mp4", moving_box_frames(10), fps=10)
    data = good.read_bytes()
    bad = tmp / "truncated.mp4"
    bad.write_bytes(data[: int(len(data) * 0.6)])
    return Bad(bad, str(bad))


def _zero_bytes(tmp: Path) -> Bad:
    (tmp / "zero.mp4").write_bytes(b"")
    return Bad(tmp / "zero.mp4", str(tmp / "zero.mp4"))


def _text_as_mp4(tmp: Path) -> Bad:
    (tmp / "notes.mp4").write_text("this is a shopping list, not a video\n" * 20)
    return Bad(tmp / "notes.mp4", str(tmp / "notes.mp4"))


def _truncated_png(tmp: Path) -> Bad:
    folder = frame_folder(tmp / "frames", moving_box_frames(3))
    data = (folder / "001.png").read_bytes()
    (folder / "001.png").write_bytes(data[: len(data) // 2])  # header intact, pixels cut
    return Bad(folder, str(folder / "001.png"))


def _mixed_sizes(tmp: Path) -> Bad:
    folder = frame_folder(tmp / "frames", moving_box_frames(3))
    Image.fromarray(moving_box_frames(1, h=H - 16)[0]).save(folder / "003.png")
    return Bad(folder, str(folder / "003.png"))


def _transparent_rgba(tmp: Path) -> Bad:
    frames = moving_box_frames(2)
    alpha = np.full((H, W, 1), 255, np.uint8)
    alpha[10:20, 10:20] = 0  # a transparent hole: the colour under it is undefined
    folder = frame_folder(
        tmp / "rgba", [Image.fromarray(np.concatenate([f, alpha], 2)) for f in frames]
    )
    return Bad(folder, str(folder / "000.png"))


def _int32_out_of_16bit_range(tmp: Path) -> Bad:
    # a 32-bit integer image (PIL detects the TIFF by content whatever the name says)
    folder = tmp / "int32"
    folder.mkdir()
    Image.fromarray(np.full((H, W), 70_000, np.int32)).save(folder / "000.png", format="TIFF")
    return Bad(folder, str(folder / "000.png"))


def _float_image(tmp: Path) -> Bad:
    folder = tmp / "float"
    folder.mkdir()
    Image.fromarray(np.full((H, W), 0.5, np.float32)).save(folder / "000.png", format="TIFF")
    return Bad(folder, str(folder / "000.png"))


def _too_small(tmp: Path) -> Bad:
    folder = frame_folder(tmp / "small", moving_box_frames(2, h=40, w=50))
    return Bad(folder, str(folder))


def _k_too_large(tmp: Path) -> Bad:
    folder = frame_folder(tmp / "frames", moving_box_frames(2))
    return Bad(folder, "k=1000", k=1000)  # 2 frames x 4x8 tokens


def _gt_wrong_size(tmp: Path) -> Bad:
    folder = frame_folder(tmp / "frames", moving_box_frames(2))
    Image.fromarray(np.zeros((H, W + 2), np.uint8)).save(tmp / "gt.png")
    return Bad(folder, str(tmp / "gt.png"), gt=tmp / "gt.png")


def _gt_id_too_large(tmp: Path) -> Bad:
    folder = frame_folder(tmp / "frames", moving_box_frames(2))
    ids = np.zeros((H, W), np.uint16)
    ids[: H // 2] = 300  # a 16-bit label PNG: 300 cannot be written as a uint8 label
    Image.fromarray(ids).save(tmp / "gt.png")
    return Bad(folder, str(tmp / "gt.png"), gt=tmp / "gt.png")


def _gt_colour(tmp: Path) -> Bad:
    folder = frame_folder(tmp / "frames", moving_box_frames(2))
    Image.fromarray(moving_box_frames(1)[0]).save(tmp / "gt.png")
    return Bad(folder, str(tmp / "gt.png"), gt=tmp / "gt.png")


def _gt_missing(tmp: Path) -> Bad:
    folder = frame_folder(tmp / "frames", moving_box_frames(2))
    return Bad(folder, str(tmp / "gt.png"), gt=tmp / "gt.png")


def _model_missing_component(tmp: Path) -> Bad:
    folder = frame_folder(tmp / "frames", moving_box_frames(2))
    model = save_folder(load_backbone("tiny", device="cpu"), tmp / "model")
    for f in (model / "vae").iterdir():
        f.unlink()
    (model / "vae").rmdir()
    return Bad(folder, str(model), model=str(model))


def _model_missing(tmp: Path) -> Bad:
    folder = frame_folder(tmp / "frames", moving_box_frames(2))
    return Bad(folder, str(tmp / "weights"), model=str(tmp / "weights"))


SEGMENT_CASES: list[tuple[str, Callable[[Path], Bad], type[E.ZsvssError]]] = [
    ("missing-path", _missing, E.VideoNotFoundError),
    ("empty-folder", _empty_folder, E.EmptyVideoError),
    ("folder-without-images", _no_images, E.EmptyVideoError),
    ("truncated-mp4", _truncated_mp4, E.VideoDecodeError),
    ("zero-byte-mp4", _zero_bytes, E.VideoDecodeError),
    ("text-file-as-mp4", _text_as_mp4, E.VideoDecodeError),
    ("truncated-png-frame", _truncated_png, E.VideoDecodeError),
    ("mixed-frame-sizes", _mixed_sizes, E.FrameSizeError),
    ("transparent-rgba", _transparent_rgba, E.UnsupportedImageError),
    ("int32-beyond-16-bit", _int32_out_of_16bit_range, E.UnsupportedImageError),
    ("float-image", _float_image, E.UnsupportedImageError),
    ("frame-smaller-than-grid", _too_small, E.FrameSizeError),
    ("k-larger-than-tokens", _k_too_large, E.ConfigError),
    ("gt-wrong-size", _gt_wrong_size, E.LabelError),
    ("gt-id-beyond-uint8", _gt_id_too_large, E.LabelError),
    ("gt-colour-image", _gt_colour, E.LabelError),
    ("gt-missing", _gt_missing, E.LabelError),
    ("model-missing-component", _model_missing_component, E.IncompleteModelError),
    ("model-missing", _model_missing, E.ModelNotFoundError),
]


def cli_args(bad: Bad, out: Path) -> list[str]:
    args = ["-q", "segment", str(bad.video), "--out", str(out), "--model", bad.model]
    args += ["--preset", "fast", "--max-side", "128", "--k", str(bad.k), "--window", "3"]
    return args + (["--first-frame-gt", str(bad.gt)] if bad.gt is not None else [])


def api_segment(bad: Bad, out: Path, tiny) -> None:
    """What ``zsvss segment`` does, through the API: open, load, run."""
    video = open_video(bad.video)
    backbone = tiny if bad.model == "tiny" else load_backbone(bad.model, device="cpu")
    cfg = SegmentConfig.fast().replace(max_side=128, k=bad.k, window=3)
    Segmenter(backbone, cfg).run(video, out, first_frame_gt=bad.gt, progress=False)


def assert_one_line(err: str, named: str) -> None:
    assert err.count("\n") == 1 and err.endswith("\n"), f"not one line: {err!r}"
    assert err.startswith("zsvss: error: ") and err.strip() != "zsvss: error:"
    assert named in err, f"{named!r} not named in {err!r}"
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("build", "error"), [c[1:] for c in SEGMENT_CASES], ids=[c[0] for c in SEGMENT_CASES]
)
def test_bad_segment_input(build, error, tmp_path, tiny, capsys):
    bad = build(tmp_path)
    out = tmp_path / "OUT"
    with pytest.raises(error) as info:
        api_segment(bad, out, tiny)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert bad.named in str(info.value) and "\n" not in str(info.value)
    assert not out.exists()
    capsys.readouterr()
    assert main(cli_args(bad, out)) == 2
    captured = capsys.readouterr()
    assert_one_line(captured.err, bad.named)
    assert captured.out == ""
    assert not out.exists()


# ------------------------------------------------------------------------------ eval


def folder_dataset(root: Path, labels: dict[str, np.ndarray]) -> Path:
    """A ``folder`` dataset: root/clip/<t>.png frames and root/labels/clip/<t>.png GT."""
    frame_folder(root / "clip", moving_box_frames(len(labels), h=8, w=10))
    for stem, ids in labels.items():
        (root / "labels" / "clip").mkdir(parents=True, exist_ok=True)
        Image.fromarray(ids.astype(np.uint8)).save(root / "labels" / "clip" / f"{stem}.png")
    return root


def gt_masks(n: int = 3) -> dict[str, np.ndarray]:
    ids = np.zeros((8, 10), np.uint8)
    ids[2:6, 3:8] = 1
    ids[0] = 255  # void
    return {f"{t:03d}": np.roll(ids, t, axis=1) for t in range(n)}


def write_preds(pred: Path, masks: dict[str, np.ndarray]) -> Path:
    for stem, ids in masks.items():
        (pred / "clip").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.where(ids == 255, 0, ids).astype(np.uint8)).save(
            pred / "clip" / f"{stem}.png"
        )
    return pred


def _pred_missing_frame(tmp: Path) -> tuple[Path, Path, int | None, str]:
    masks = gt_masks()
    gt = folder_dataset(tmp / "gt", masks)
    pred = write_preds(tmp / "pred", masks)
    (pred / "clip" / "001.png").unlink()
    return pred, gt, None, "001.png"


def _pred_folder_missing(tmp: Path) -> tuple[Path, Path, int | None, str]:
    gt = folder_dataset(tmp / "gt", gt_masks())
    return tmp / "pred", gt, None, str(tmp / "pred")


def _gt_id_outside_classes(tmp: Path) -> tuple[Path, Path, int | None, str]:
    masks = gt_masks()
    masks["002"] = masks["002"].copy()
    masks["002"][7, 9] = 7  # one pixel of class 7 with --num-classes 2
    gt = folder_dataset(tmp / "gt", masks)
    pred = write_preds(tmp / "pred", gt_masks())
    return pred, gt, 2, str(gt / "labels" / "clip" / "002.png")


def _gt_size_differs(tmp: Path) -> tuple[Path, Path, int | None, str]:
    masks = gt_masks()
    gt = folder_dataset(tmp / "gt", masks)
    pred = write_preds(tmp / "pred", masks)
    Image.fromarray(np.zeros((8, 12), np.uint8)).save(pred / "clip" / "002.png")
    return pred, gt, None, str(gt / "labels" / "clip" / "002.png")


EVAL_CASES = [
    ("prediction-missing-frames", _pred_missing_frame, E.PredictionMissingError),
    ("prediction-folder-missing", _pred_folder_missing, E.PredictionMissingError),
    ("gt-id-outside-class-range", _gt_id_outside_classes, E.LabelError),
    ("gt-size-differs", _gt_size_differs, E.LabelError),
]


@pytest.mark.parametrize(
    ("build", "error"), [c[1:] for c in EVAL_CASES], ids=[c[0] for c in EVAL_CASES]
)
def test_bad_eval_input(build, error, tmp_path, capsys):
    pred, gt, num_classes, named = build(tmp_path)
    with pytest.raises(error) as info:
        evaluate_folders(pred, gt, "folder", "first-frame", num_classes=num_classes)
    assert type(info.value) is error and named in str(info.value)
    out = tmp_path / "metrics.json"
    args = ["eval", str(pred), str(gt), "--format", "folder", "--json", str(out)]
    args += ["--num-classes", str(num_classes)] if num_classes is not None else []
    capsys.readouterr()
    assert main(args) == 2
    captured = capsys.readouterr()
    assert_one_line(captured.err, named)
    assert not out.exists() and not list(tmp_path.glob("metrics.json*"))


def test_eval_ignore_id_and_lenient_ids(tmp_path):
    """The ignore id is never 'outside the class range'; strict_ids=False scores as the official
    evaluator does, leaving unknown ids uncounted."""
    masks = gt_masks()
    gt = folder_dataset(tmp_path / "gt", masks)
    pred = write_preds(tmp_path / "pred", masks)
    r = evaluate_folders(pred, gt, "folder", "first-frame")
    assert r.num_classes == 2 and r.miou == 1.0  # row 0 is void (255) in every frame
    with pytest.raises(E.LabelError, match=r"GT id 1 .*0\.\.0"):
        evaluate_folders(pred, gt, "folder", "first-frame", num_classes=1)
    lenient = evaluate_folders(pred, gt, "folder", "first-frame", num_classes=1, strict_ids=False)
    assert lenient.confusion.sum() == sum(int((m == 0).sum()) for m in masks.values())


# ------------------------------------------------------------------------------ real processes


def test_cli_subprocesses(tmp_path):
    """The real entry point: exit code 2, one line (FFmpeg/decord's own stderr chatter is
    silenced too), no output; one of the three runs without -q."""
    for sub in ("a", "b", "c"):
        (tmp_path / sub).mkdir()
    text = _text_as_mp4(tmp_path / "a")
    trunc = _truncated_mp4(tmp_path / "b")
    pred, gt, _, named = _pred_missing_frame(tmp_path / "c")
    runs = [
        (cli_args(text, tmp_path / "OUT1"), text.named, tmp_path / "OUT1"),
        (cli_args(trunc, tmp_path / "OUT2")[1:], trunc.named, tmp_path / "OUT2"),  # no -q
        (
            ["eval", str(pred), str(gt), "--format", "folder", "--json", str(tmp_path / "m.json")],
            named,
            tmp_path / "m.json",
        ),
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "zsvss_nb", *args],
            env=CHILD_ENV,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args, _, _ in runs
    ]
    for proc, (args, named, out) in zip(procs, runs, strict=True):
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 2, (args, stderr)
        assert_one_line(stderr, named)
        assert stdout == "" and not out.exists()


# ------------------------------------------------------------------------------ conversions


def _label_pngs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "labels").glob("*.png"))}


def test_safe_conversions_give_the_labels_of_the_moving_box_frames(tiny, tmp_path):
    """Grayscale (L), 16-bit grayscale (I;16, x * 257), palette (P) and opaque RGBA frames are
    converted exactly, so they segment like the same pixels given as 8-bit RGB."""
    cfg = SegmentConfig.fast().replace(max_side=128, k=3, window=3)
    rgb = moving_box_frames(2)
    gray = rgb.mean(3).round().astype(np.uint8)
    inputs = {
        "L": ([Image.fromarray(g) for g in gray], np.repeat(gray[..., None], 3, 3)),
        "I;16": (
            [Image.fromarray(g.astype(np.uint16) * 257) for g in gray],
            np.repeat(gray[..., None], 3, 3),
        ),
        "RGBA": (
            [
                Image.fromarray(np.concatenate([f, np.full((H, W, 1), 255, np.uint8)], 2))
                for f in rgb
            ],
            rgb,
        ),
        "P": ([Image.fromarray(f).quantize(16) for f in rgb], None),
    }
    for mode, (images, same_as) in inputs.items():
        folder = frame_folder(tmp_path / mode.replace(";", ""), images)
        with Image.open(folder / "000.png") as im:
            assert im.mode == mode
        if same_as is None:  # the palette frames as RGB, decoded by PIL
            same_as = np.stack([np.asarray(im.convert("RGB")) for im in images])
        out = tmp_path / f"out_{mode.replace(';', '')}"
        ref = tmp_path / f"ref_{mode.replace(';', '')}"
        Segmenter(tiny, cfg).run(folder, out, overlay=False, progress=False)
        Segmenter(tiny, cfg).run(same_as, ref, overlay=False, progress=False)
        got, want = _label_pngs(out), _label_pngs(ref)
        assert list(got) == ["000.png", "001.png"]
        assert list(want) == ["00000.png", "00001.png"]
        assert list(got.values()) == list(want.values()), mode


# ------------------------------------------------------------------------------ lengths


def test_one_frame_and_window_plus_one_frames_through_the_cli(tmp_path, capsys):
    """A one-frame folder and a B+1-frame mp4 (B = --window 3) both segment every frame."""
    one = frame_folder(tmp_path / "one", moving_box_frames(1))
    four = write_video(tmp_path / "four.mp4", moving_box_frames(4), fps=5)
    for video, names in ((one, ["000"]), (four, ["00000", "00001", "00002", "00003"])):
        out = tmp_path / f"out_{video.stem}"
        args = cli_args(Bad(video, ""), out)
        assert main(args) == 0
        captured = capsys.readouterr()
        assert captured.err == "" and f"{len(names)} frames -> {out}" in captured.out
        for folder in ("labels", "color"):
            assert sorted(p.stem for p in (out / folder).glob("*.png")) == names
        with open_video(out / "overlay.mp4") as overlay:
            assert len(overlay) == len(names)
        assert (out / "manifest.json").is_file() and not list(out.rglob("*.tmp"))


# ------------------------------------------------------------------------------ size refusals


@settings(max_examples=200, deadline=None)
@given(
    h=st.integers(1, 4000), w=st.integers(1, 4000), policy=st.sampled_from(["resize64", "pad64"])
)
def test_refused_sizes_are_explained(h: int, w: int, policy: str) -> None:
    """Any size either maps to a geometry or is refused with a message naming the size and the
    minimum the feature grid needs."""
    try:
        g = geometry_for(h, w, policy)  # type: ignore[arg-type]
    except E.FrameSizeError as err:
        assert min(h, w) < 64
        assert f"{w}x{h}" in str(err) and "64x64" in str(err)
    else:
        assert min(h, w) >= 64 and g.original == (h, w)


def test_small_frames_are_refused_naming_the_video(tiny):
    frames = moving_box_frames(1, h=63, w=300)
    with pytest.raises(E.FrameSizeError, match=r"<numpy array \[1, 63, 300, 3\] uint8>.*300x63"):
        next(Segmenter(tiny, SegmentConfig.fast()).segment(frames, progress=False))

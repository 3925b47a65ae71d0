"""Nothing lost, nothing mixed, nothing silently wrong (issue #16), through the CLI.

Every bad input or failure is a row of a table run through ``zsvss_nb.run.cli.main`` (in-process:
the same code path, no interpreter start per case) or, where a signal, a second process or a
permission is the point, through real subprocesses: exit code 2, exactly one stderr line naming
the input, no traceback, and the sha256 of every protected file (inputs, earlier results) the
same before and after. Where the model must not load first, loading it fails the test.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import CHILD_ENV, moving_box_frames, signal_child, start_cli, wait_until
from PIL import Image

from zsvss_nb.backbones.vae import tiled_apply
from zsvss_nb.config import SegmentConfig
from zsvss_nb.datasets import open_dataset
from zsvss_nb.errors import ConfigError, DatasetLayoutError, OutputLockedError, VideoNotFoundError
from zsvss_nb.evaluation.metrics import evaluate
from zsvss_nb.io import locks
from zsvss_nb.io.video import open_video
from zsvss_nb.io.writers import temp_path, write_video
from zsvss_nb.pipeline import Segmenter
from zsvss_nb.run.cli import build_parser, main
from zsvss_nb.run.commands import build_config

H, W = 96, 128
MODEL = ["--model", "tiny", "--preset", "fast", "--k", "3", "--window", "3"]


@pytest.fixture(autouse=True)
def _keep_sigterm_handler():
    """cli.main turns SIGTERM into KeyboardInterrupt; keep that out of the test process."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


def frame_folder(folder: Path, n: int, ext: str = "png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(moving_box_frames(n)):
        Image.fromarray(frame).save(folder / f"{t:03d}.{ext}")
    return folder


def label_png(path: Path, value: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = np.zeros((H, W), np.uint8)
    ids[H // 4 : H // 2, W // 4 : W // 2] = value
    Image.fromarray(ids).save(path)
    return path


def sha(*roots: Path) -> dict[str, str]:
    """sha256 of every file (hidden ones too) under each root, or of the root file itself."""
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def leftovers(folder: Path) -> list[str]:
    """Hidden staging folders, backups, temp files and locks of zsvss in ``folder``."""
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.name.startswith(".") and p.name.endswith((".tmp", ".old", ".lock"))
    )


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["-q", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line(err: str, named: str) -> None:
    assert err.count("\n") == 1 and err.endswith("\n"), f"not one line: {err!r}"
    assert err.startswith("zsvss: error: "), err
    assert named in err, f"{named!r} not named in {err!r}"
    assert "Traceback" not in err


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: the error must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr("zsvss_nb.backbones.load_backbone", refuse)


def finished_run(base: Path, n: int) -> tuple[Path, Path]:
    """(frames, out): ``n`` frames in ``base`` and a finished ``zsvss segment`` run of them."""
    frames = frame_folder(base / "frames", n)
    before = signal.getsignal(signal.SIGTERM)
    try:
        assert main(["-q", "segment", str(frames), "--out", str(base / "out"), *MODEL]) == 0
    finally:
        signal.signal(signal.SIGTERM, before)
    return frames, base / "out"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """5 frames (2 windows) and a finished run of them."""
    return finished_run(tmp_path_factory.mktemp("finished"), 5)


def copy_finished(finished, tmp: Path) -> tuple[Path, Path]:
    frames, out = finished
    shutil.copytree(frames, tmp / "frames")
    shutil.copytree(out, tmp / "out")
    return tmp / "frames", tmp / "out"


# ------------------------------------------------------------------ 3. validated config


CONFIG_CASES = [
    ("lam-nan-flag", ["--lam", "nan"], "lam=nan"),
    ("lam-nan-set", ["--set", "lam=NaN"], "lam=nan"),
    ("lam-inf", ["--set", "upsample.lam=inf"], "lam=inf"),
    ("lam-zero", ["--lam", "0"], "lam=0"),
    ("blur-sigma-zero", ["--set", "blur_sigma=0"], "blur_sigma=0"),
    ("blur-sigma-negative", ["--set", "blur_sigma=-1"], "blur_sigma=-1"),
    ("window-bool", ["--set", "window=true"], "window='true' must be an integer"),
    ("k-float", ["--set", "k=2.5"], "k='2.5' must be an integer"),
    ("k-text", ["--set", "k=abc"], "k='abc'"),
    ("max-side-text", ["--set", "max_side=abc"], "max_side='abc'"),
    ("unknown-nested-field", ["--set", "features.bogus=1"], "features has no field 'bogus'"),
    ("unknown-field", ["--set", "bogus=1"], "no config field is called 'bogus'"),
    ("unknown-stage", ["--set", "nope.k=1"], "unknown stage 'nope'"),
    ("bool-not-a-bool", ["--set", "refine.enabled=maybe"], "refine.enabled='maybe'"),
    ("literal-unknown", ["--set", "upsample.method=magic"], "upsample.method='magic'"),
    ("shared-name", ["--set", "seed=3"], "'seed' is a field of"),
    ("no-equals", ["--set", "k"], "NAME=VALUE"),
    ("k-zero", ["--k", "0"], "k=0"),
    ("window-zero", ["--window", "0"], "window=0"),
    ("max-side-zero", ["--max-side", "0"], "max_side=0"),
    ("outside-weight", ["--set", "outside_weight=2"], "outside_weight=2.0"),
    ("vae-tile-negative", ["--set", "features.vae_tile=-1"], "vae_tile=-1"),
    ("tuple-of-text", ["--set", "features.blocks=6,x"], "features.blocks='x'"),
]


@pytest.mark.parametrize(
    ("extra", "named"), [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES]
)
@pytest.mark.parametrize("command", ["segment", "dataset"])
def test_bad_options_fail_before_the_model_loads(
    command, extra, named, finished, tmp_path, no_model, capsys
):
    frames, _ = finished
    protected = sha(frames)
    source = (
        ["segment", str(frames)] if command == "segment" else ["dataset", "folder", str(frames)]
    )
    code, out, err = cli([*source, "--out", str(tmp_path / "out"), *MODEL, *extra], capsys)
    assert code == 2 and out == ""
    assert_one_line(err, named)
    assert not (tmp_path / "out").exists() and sha(frames) == protected


def test_unknown_nested_field_lists_the_valid_fields(no_model, capsys, tmp_path, finished):
    frames, _ = finished
    _, _, err = cli([*_seg(frames, tmp_path / "o"), "--set", "refine.x=1"], capsys)
    assert "refine has no field 'x'; its fields are enabled, hop_threshold, use_aux" in err


@pytest.mark.parametrize(
    "changes",
    [
        {"lam": math.nan},
        {"lam": math.inf},
        {"blur_sigma": 0.0},
        {"blur_sigma": -2.0},
        {"window": True},
        {"k": True},
        {"k": 2.5},
        {"k": "3"},
        {"max_side": "abc"},
        {"max_side": 0},
        {"normalisation": "l3"},
        {"sample_posterior": 1},
        {"guidance_scale": math.nan},
        {"spawn_threshold": 0.0},
        {"bogus": 1},
    ],
    ids=repr,
)
def test_the_api_raises_the_same_typed_error(changes):
    with pytest.raises(ConfigError) as info:
        SegmentConfig().replace(**changes)
    assert "\n" not in str(info.value)


def test_the_api_checks_stage_configs_and_stored_configs():
    with pytest.raises(ConfigError, match="features has no field 'bogus'"):
        SegmentConfig().features.replace(bogus=1)
    with pytest.raises(ConfigError, match="upsample has no field 'bogus'"):
        SegmentConfig.from_dict({"upsample": {"bogus": 1}})
    with pytest.raises(ConfigError, match="must be a mapping"):
        SegmentConfig.from_dict({"context": 3})
    # a stored config round-trips, JSON lists becoming tuples
    stored = json.loads(json.dumps(SegmentConfig.paper_svd().to_dict()))
    assert SegmentConfig.from_dict(stored) == SegmentConfig.paper_svd()


def test_set_parses_values_by_the_fields_type():
    args = build_parser().parse_args(
        ["segment", "v", "--out", "o", "--model", "tiny", "--set", "refine.paper_compat=true"]
        + ["--set", "lam=20"]
        + ["--set", "features.blocks=6,7", "--set", "max_side=none", "--set", "prompt=1"]
        + ["--set", "upsample.modulated_blocks=[8]", "--set", "refine.enabled=0"]
    )
    cfg = build_config(args)
    assert cfg.refine.paper_compat is True and cfg.refine.enabled is False
    assert cfg.upsample.lam == 20.0 and isinstance(cfg.upsample.lam, float)
    assert cfg.features.blocks == (6, 7) and cfg.upsample.modulated_blocks == (8,)
    assert cfg.features.max_side is None and cfg.features.prompt == "1"


# ------------------------------------------------------------------ 2 + 4. paths known up front


@dataclass
class Case:
    """One bad command line. ``named``: what the line must say; ``protect``: files and folders
    whose bytes must not change; ``absent``: paths that must not appear."""

    args: list[str]
    named: str
    protect: list[Path] = field(default_factory=list)
    absent: list[Path] = field(default_factory=list)


def _read_only(monkeypatch, folder: Path, code: int = errno.EROFS) -> None:
    """Creating a file in ``folder`` fails with ``code`` (a read-only or full file system)."""
    real = os.open

    def fake(path, flags, *args, **kwargs):
        if Path(path).parent == folder and flags & os.O_CREAT:
            raise OSError(code, os.strerror(code), str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake)


def _seg(frames: Path, out: Path, *extra: str) -> list[str]:
    return ["segment", str(frames), "--out", str(out), *MODEL, *extra]


def _out_is_file(tmp, frames, mp):
    (tmp / "out.txt").write_text("keep me\n")
    return Case(_seg(frames, tmp / "out.txt"), "out.txt: is a file", [tmp / "out.txt"])


def _out_below_file(tmp, frames, mp):
    (tmp / "f").write_text("keep me\n")
    return Case(_seg(frames, tmp / "f" / "out"), "is not a folder", [tmp / "f"])


def _out_broken_link(tmp, frames, mp):
    (tmp / "out").symlink_to(tmp / "gone")
    return Case(_seg(frames, tmp / "out"), "broken symbolic link", absent=[tmp / "gone"])


def _out_read_only(tmp, frames, mp):
    (tmp / "ro").mkdir()
    _read_only(mp, tmp / "ro")
    return Case(
        _seg(frames, tmp / "ro" / "out"), "read-only file system", absent=[tmp / "ro" / "out"]
    )


def _out_no_space(tmp, frames, mp):
    (tmp / "full").mkdir()
    _read_only(mp, tmp / "full", errno.ENOSPC)
    return Case(_seg(frames, tmp / "full" / "out"), "no space left", absent=[tmp / "full" / "out"])


def _out_is_input(tmp, frames, mp):
    return Case(_seg(frames, frames), "is the input")


def _out_inside_input(tmp, frames, mp):
    return Case(_seg(frames, frames / "pred"), "lies inside the input", absent=[frames / "pred"])


def _out_contains_input(tmp, frames, mp):
    return Case(_seg(frames, frames.parent), "contains the input", [frames.parent])


def _out_contains_video(tmp, frames, mp):
    video = write_video(tmp / "clips" / "a.mp4", moving_box_frames(4), fps=5)
    return Case(_seg(video, tmp / "clips"), "contains the input", [tmp / "clips"])


def _out_contains_gt(tmp, frames, mp):
    gt = label_png(tmp / "gts" / "gt.png")
    return Case(_seg(frames, tmp / "gts", "--first-frame-gt", str(gt)), "contains the input", [gt])


def _out_through_symlink(tmp, frames, mp):
    (tmp / "alias").symlink_to(frames)
    return Case(_seg(frames, tmp / "alias"), "is the input")


def _out_holds_other_files(tmp, frames, mp):
    (tmp / "out").mkdir()
    (tmp / "out" / "notes.txt").write_text("my notes\n")
    return Case(_seg(frames, tmp / "out"), "'notes.txt', which zsvss did not write", [tmp / "out"])


def _gt_not_an_image(tmp, frames, mp):
    (tmp / "gt.png").write_text("not an image\n")
    return Case(_seg(frames, tmp / "out", "--first-frame-gt", str(tmp / "gt.png")), "gt.png")


def _gt_is_a_folder(tmp, frames, mp):
    (tmp / "gt").mkdir()
    return Case(_seg(frames, tmp / "out", "--first-frame-gt", str(tmp / "gt")), "is not a file")


def _json_is_a_folder(tmp, frames, mp):
    pred, gt = _eval_inputs(tmp)
    (tmp / "m.json").mkdir()
    return Case(
        ["eval", str(pred), str(gt), "--format", "folder", "--json", str(tmp / "m.json")],
        "m.json: is a folder",
        [tmp / "m.json"],
    )


def _json_in_missing_folder(tmp, frames, mp):
    pred, gt = _eval_inputs(tmp)
    target = tmp / "nowhere" / "m.json"
    return Case(
        ["eval", str(pred), str(gt), "--format", "folder", "--json", str(target)],
        "nowhere does not exist",
        absent=[tmp / "nowhere"],
    )


def _json_read_only(tmp, frames, mp):
    pred, gt = _eval_inputs(tmp)
    (tmp / "ro").mkdir()
    _read_only(mp, tmp / "ro")
    target = tmp / "ro" / "m.json"
    return Case(
        ["eval", str(pred), str(gt), "--format", "folder", "--json", str(target)],
        "read-only file system",
        absent=[target],
    )


def _frame_broken_link(tmp, frames, mp):
    copy = tmp / "copy"
    shutil.copytree(frames, copy)
    (copy / "002.png").unlink()
    (copy / "002.png").symlink_to(tmp / "moved.png")
    return Case(_seg(copy, tmp / "out"), "002.png: frame is a broken symbolic link")


def _eval_inputs(tmp: Path) -> tuple[Path, Path]:
    gt = tmp / "gt"
    frame_folder(gt / "clip", 2)
    for t in range(2):
        label_png(gt / "labels" / "clip" / f"{t:03d}.png")
        label_png(tmp / "pred" / "clip" / f"{t:03d}.png")
    return tmp / "pred", gt


PATH_CASES: list[tuple[str, Callable]] = [
    ("out-is-a-file", _out_is_file),
    ("out-below-a-file", _out_below_file),
    ("out-broken-symlink", _out_broken_link),
    ("out-read-only", _out_read_only),
    ("out-no-space", _out_no_space),
    ("out-is-the-frame-folder", _out_is_input),
    ("out-inside-the-frame-folder", _out_inside_input),
    ("out-contains-the-frame-folder", _out_contains_input),
    ("out-contains-the-video-file", _out_contains_video),
    ("out-contains-the-first-frame-gt", _out_contains_gt),
    ("out-is-the-input-through-a-symlink", _out_through_symlink),
    ("out-holds-files-zsvss-did-not-write", _out_holds_other_files),
    ("first-frame-gt-not-an-image", _gt_not_an_image),
    ("first-frame-gt-a-folder", _gt_is_a_folder),
    ("json-is-a-folder", _json_is_a_folder),
    ("json-in-a-missing-folder", _json_in_missing_folder),
    ("json-read-only", _json_read_only),
    ("frame-is-a-broken-symlink", _frame_broken_link),
]


@pytest.mark.parametrize("build", [c[1] for c in PATH_CASES], ids=[c[0] for c in PATH_CASES])
def test_bad_paths_fail_before_the_model_loads(build, tmp_path, monkeypatch, no_model, capsys):
    frames = frame_folder(tmp_path / "data" / "frames", 3)
    case = build(tmp_path, frames, monkeypatch)
    protected = sha(frames, *case.protect)
    code, out, err = cli(case.args, capsys)
    monkeypatch.undo()  # os.open back before looking at the files
    assert code == 2 and out == ""
    assert_one_line(err, case.named)
    assert sha(frames, *case.protect) == protected
    for path in case.absent:
        assert not path.exists(), path
    assert not [p for p in tmp_path.rglob(".*") if p.name.endswith((".tmp", ".lock"))]


def test_an_output_beside_a_video_file_is_fine(tmp_path, capsys):
    video = write_video(tmp_path / "clips" / "a.mp4", moving_box_frames(4), fps=5)
    before = sha(video)
    code, _, err = cli(_seg(video, tmp_path / "clips" / "a_out"), capsys)
    assert code == 0, err
    assert (
        sha(video) == before and len(list((tmp_path / "clips" / "a_out" / "labels").iterdir())) == 4
    )


# ------------------------------------------------------------------ 2. datasets are inputs


def _vspw(root: Path) -> Path:
    frame_folder(root / "data" / "v1" / "origin", 2, "jpg")
    label_png(root / "data" / "v1" / "mask" / "000.png")
    return root / "data" / "v1" / "origin"


def _davis(root: Path) -> Path:
    frame_folder(root / "JPEGImages" / "480p" / "v1", 2, "jpg")
    label_png(root / "Annotations" / "480p" / "v1" / "000.png")
    return root / "JPEGImages" / "480p" / "v1"


def _camvid(root: Path) -> Path:
    for t, frame in enumerate(moving_box_frames(2)):
        (root / "train").mkdir(parents=True, exist_ok=True)
        Image.fromarray(frame).save(root / "train" / f"0006R0_f{t:05d}.png")
        label_png(root / "trainannot" / f"0006R0_f{t:05d}.png")
    return root / "trainannot"


def _cityscapes(root: Path) -> Path:
    city = root / "leftImg8bit_sequence" / "val" / "aachen"
    city.mkdir(parents=True)
    for t, frame in enumerate(moving_box_frames(2)):
        Image.fromarray(frame).save(city / f"aachen_000000_{18 + t:06d}_leftImg8bit.png")
    label_png(root / "gtFine" / "val" / "aachen" / "aachen_000000_000019_gtFine_labelTrainIds.png")
    return city


def _folder(root: Path) -> Path:
    frame_folder(root / "v1", 2)
    label_png(root / "labels" / "v1" / "000.png")
    return root / "v1"


LAYOUTS = {
    "vspw": _vspw,
    "davis": _davis,
    "camvid": _camvid,
    "camvid32": _camvid,
    "cityscapes": _cityscapes,
    "folder": _folder,
}
WHERE = {
    "root": (lambda root, frames: root, "is the input"),
    "inside-root": (lambda root, frames: root / "pred", "lies inside the input"),
    "around-root": (lambda root, frames: root.parent, "contains the input"),
    "frame-or-label-folder": (lambda root, frames: frames, "the input"),
}


@pytest.mark.parametrize("where", list(WHERE))
@pytest.mark.parametrize("fmt", list(LAYOUTS))
def test_dataset_outputs_never_touch_the_dataset(fmt, where, tmp_path, no_model, capsys):
    root = tmp_path / "sets" / fmt
    frames = LAYOUTS[fmt](root)
    pick, named = WHERE[where]
    out = pick(root, frames)
    before = sha(tmp_path / "sets")
    code, _, err = cli(["dataset", fmt, str(root), "--out", str(out), *MODEL], capsys)
    assert code == 2
    assert_one_line(err, named)
    assert sha(tmp_path / "sets") == before
    assert not (root / "pred").exists()


def test_a_dataset_frame_folder_reached_through_a_symlink_is_an_input(tmp_path, no_model, capsys):
    frame_folder(tmp_path / "elsewhere" / "v1", 2)
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "v1").symlink_to(tmp_path / "elsewhere" / "v1")
    before = sha(tmp_path / "elsewhere")
    args = ["dataset", "folder", str(tmp_path / "root"), "--out", str(tmp_path / "elsewhere")]
    code, _, err = cli([*args, *MODEL], capsys)
    assert code == 2 and "contains the input" in err and sha(tmp_path / "elsewhere") == before


def test_dataset_folder_root_as_out_in_a_real_process(tmp_path):
    """The case of the issue, as a user types it: nothing may be written over the frames."""
    root = tmp_path / "root"
    _folder(root)
    before = sha(root)
    cmd = [sys.executable, "-m", "zsvss_nb", "-q", "dataset", "folder", str(root)]
    proc = subprocess.run(
        [*cmd, "--out", str(root), *MODEL],
        env=CHILD_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert_one_line(proc.stderr, "is the input")
    assert sha(root) == before


# ------------------------------------------------------------------ 1. transactional outputs


def _bad_k(tmp, frames, mp):
    return ["--k", "1000"], "k=1000"


def _corrupt_frame(tmp, frames, mp):
    data = (frames / "004.png").read_bytes()
    (frames / "004.png").write_bytes(data[: len(data) // 2])  # header intact, pixels cut
    return [], "004.png"


def _disk_full_mid_run(tmp, frames, mp):
    real = Image.Image.save
    calls = []

    def save(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(fp))
        return real(self, fp, *args, **kwargs)

    mp.setattr(Image.Image, "save", save)
    return [], "no space left on the device"


def _segment_error(tmp, frames, mp):
    def broken(*args, **kwargs):
        raise ConfigError("stage 3 refused the window")

    mp.setattr("zsvss_nb.pipeline.upsample", broken)
    return [], "stage 3 refused"


FAILED_RERUNS = [
    ("bad-k", _bad_k),
    ("corrupt-frame-in-the-middle", _corrupt_frame),
    ("disk-full-in-the-middle", _disk_full_mid_run),
    ("error-in-a-stage", _segment_error),
]


@pytest.mark.parametrize("cause", [c[1] for c in FAILED_RERUNS], ids=[c[0] for c in FAILED_RERUNS])
@pytest.mark.parametrize("overlay", [True, False], ids=["overlay", "no-overlay"])
def test_a_failed_rerun_leaves_the_finished_run_as_it_was(
    cause, overlay, finished, tmp_path, monkeypatch, capsys
):
    frames, out = copy_finished(finished, tmp_path)
    extra, named = cause(tmp_path, frames, monkeypatch)
    before = sha(out)
    args = _seg(frames, out, *extra, *([] if overlay else ["--no-overlay"]))
    code, stdout, err = cli(args, capsys)
    monkeypatch.undo()
    assert code == 2 and stdout == ""
    assert_one_line(err, named)
    assert sha(out) == before  # every file, overlay.mp4 and manifest.json included
    assert leftovers(tmp_path) == []


def test_a_rerun_replaces_the_whole_output_and_cleans_killed_runs(finished, tmp_path, capsys):
    frames, out = copy_finished(finished, tmp_path)
    (frames / "003.png").unlink()
    (frames / "004.png").unlink()
    # what killed runs leave: a staging folder and a temp file beside the output, a backup of
    # an earlier publish, and a temp file inside the output (zsvss 0.x wrote in place)
    (temp_path(out) / "labels").mkdir(parents=True)
    temp_path(out).with_name(temp_path(out).name).write_bytes(b"half")
    shutil.copytree(out, out.with_name(f".{out.name}.0123456789ab.old"))
    temp_path(out / "overlay.mp4").write_bytes(b"half a video")
    code, _, err = cli(_seg(frames, out, "--no-overlay"), capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["color", "labels", "manifest.json"]
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["000.png", "001.png", "002.png"]
    assert sorted(p.name for p in (out / "color").iterdir()) == ["000.png", "001.png", "002.png"]
    assert json.loads((out / "manifest.json").read_text())["video"]["frames"] == 3
    assert leftovers(tmp_path) == []


def test_a_cut_publish_is_restored_by_the_next_run(finished, tmp_path, capsys, caplog):
    frames, out = copy_finished(finished, tmp_path)
    before = {k.replace(str(out), ""): v for k, v in sha(out).items()}
    backup = out.with_name(f".{out.name}.0123456789ab.old")
    out.rename(backup)  # killed between the two renames of a publish
    code, _, err = cli(_seg(frames, out, "--k", "1000"), capsys)  # and this run fails too
    assert code == 2
    assert_one_line(err, "k=1000")
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "restored the previous output" in caplog.records[0].getMessage()
    assert {k.replace(str(out), ""): v for k, v in sha(out).items()} == before
    assert leftovers(tmp_path) == []


def test_a_rerun_gives_the_same_labels(finished, tmp_path, capsys):
    frames, out = copy_finished(finished, tmp_path)
    labels = {k: v for k, v in sha(out).items() if "/labels/" in k or "/color/" in k}
    code, _, err = cli(_seg(frames, out), capsys)
    assert code == 0, err
    assert {k: v for k, v in sha(out).items() if "/labels/" in k or "/color/" in k} == labels


# ------------------------------------------------------------------ 1. locks


def test_a_live_lock_fails_at_once_for_segment_and_dataset(finished, tmp_path, no_model, capsys):
    frames, out = copy_finished(finished, tmp_path)
    before = sha(out)
    with locks.hold_lock(out):
        code, _, err = cli(_seg(frames, out), capsys)
    assert code == 2
    assert_one_line(err, f"another zsvss run (pid {os.getpid()} on {socket.gethostname()}")
    assert sha(out) == before and leftovers(tmp_path) == []

    pred = tmp_path / "pred"
    pred.mkdir()
    with locks.hold_lock(pred / "run_manifest_0.json"):
        code, _, err = cli(["dataset", "folder", str(frames), "--out", str(pred), *MODEL], capsys)
    assert code == 2
    assert_one_line(err, "run_manifest_0.json: another zsvss run")
    assert list(pred.iterdir()) == []


def test_a_video_locked_by_another_process_stops_the_dataset_run(tmp_path, capsys):
    root = tmp_path / "root"
    for name in ("v0", "v1"):
        frame_folder(root / name, 3)
    pred = tmp_path / "pred"
    pred.mkdir()
    with locks.hold_lock(pred / "v1"):  # e.g. a second launcher on an overlapping shard
        code, _, err = cli(["dataset", "folder", str(root), "--out", str(pred), *MODEL], capsys)
    assert code == 2
    assert_one_line(err, "v1: another zsvss run")
    assert sorted(p.name for p in pred.iterdir()) == ["run_manifest_0.json", "v0"]
    manifest = json.loads((pred / "run_manifest_0.json").read_text())
    assert manifest["error"]["type"] == "OutputLockedError" and manifest["error"]["video"] == "v1"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_stale_lock_is_taken_over_with_a_warning(finished, tmp_path, capsys, caplog):
    frames, out = copy_finished(finished, tmp_path)
    stale = {"pid": _dead_pid(), "host": socket.gethostname(), "started": "yesterday"}
    locks.lock_path(out).write_text(json.dumps(stale))
    code, _, err = cli(_seg(frames, out), capsys)
    assert code == 0, err
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "stale lock" in warnings[0]  # once: the probe took it over
    assert f"pid {stale['pid']}" in warnings[0]
    assert leftovers(tmp_path) == []


def test_without_flock_the_recorded_pid_decides(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "fcntl", None)
    target = tmp_path / "out"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = socket.gethostname()
        locks.lock_path(target).write_text(json.dumps({"pid": sleeper.pid, "host": host}))
        with pytest.raises(OutputLockedError, match=f"pid {sleeper.pid}"):
            with locks.hold_lock(target):
                pass
        locks.lock_path(target).write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
        with pytest.raises(OutputLockedError, match="on elsewhere"):  # cannot tell: alive
            with locks.hold_lock(target):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
    locks.lock_path(target).write_text(json.dumps({"pid": _dead_pid(), "host": host}))
    with locks.hold_lock(target) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(OutputLockedError):  # the same process may not take it twice
            with locks.hold_lock(target):
                pass
    assert not locks.lock_path(target).exists()


# ------------------------------------------------------------------ real processes


@pytest.fixture(scope="module")
def long_finished(tmp_path_factory) -> tuple[Path, Path]:
    """12 frames (4 windows) and a finished run of them."""
    return finished_run(tmp_path_factory.mktemp("long"), 12)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "SIGTERM"])
def test_a_rerun_killed_in_the_middle_leaves_the_finished_run(
    sig, long_finished, tmp_path, capsys, caplog
):
    frames, out = copy_finished(long_finished, tmp_path)
    before = sha(out)
    proc = start_cli(_seg(frames, out), tmp_path)
    try:
        wait_until(proc, lambda: any(tmp_path.glob(".out.*.tmp/labels/*.png")), "a staged PNG")
    finally:
        stderr = signal_child(proc, sig)
    assert sha(out) == before  # byte for byte, overlay and manifest included
    if sig == signal.SIGTERM:
        assert proc.returncode == 130 and stderr == "zsvss: interrupted\n"
        assert leftovers(tmp_path) == []
    else:
        assert proc.returncode == -signal.SIGKILL
        staged = [p.name for p in tmp_path.glob(".out.*.tmp")]
        assert len(staged) == 1 and set(leftovers(tmp_path)) == {".out.lock", *staged}
    # the next run cleans what the killed one left and gives the same labels
    labels = {k: v for k, v in before.items() if "/labels/" in k}
    code, _, err = cli(_seg(frames, out), capsys)
    assert code == 0, err
    assert ("stale lock" in caplog.text) == (sig == signal.SIGKILL)
    assert {k: v for k, v in sha(out).items() if "/labels/" in k} == labels
    assert leftovers(tmp_path) == []


def test_two_concurrent_runs_on_one_output(long_finished, tmp_path):
    frames, _ = long_finished
    out = tmp_path / "out"
    first = start_cli(_seg(frames, out), tmp_path)
    try:
        wait_until(first, lambda: any(tmp_path.glob(".out.*.tmp/labels/*.png")), "a staged PNG")
        first.send_signal(signal.SIGSTOP)  # the lock stays held while the second run tries
        second = start_cli(_seg(frames, out), tmp_path)
        stdout, stderr = second.communicate(timeout=300)
        first.send_signal(signal.SIGCONT)
        first_out, first_err = first.communicate(timeout=300)
    finally:
        for proc in (first,):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert second.returncode == 2 and stdout == ""
    assert_one_line(stderr, f"another zsvss run (pid {first.pid} on {socket.gethostname()}")
    assert first.returncode == 0, first_err
    assert len(list((out / "labels").iterdir())) == 12
    assert json.loads((out / "manifest.json").read_text())["video"]["frames"] == 12
    assert leftovers(tmp_path) == []


def _unprivileged() -> list[str] | None:
    """A command prefix under which file permissions apply (root bypasses them)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"]


def test_permission_denied_is_one_line_naming_the_path(tmp_path):
    prefix = _unprivileged()
    if prefix is None:
        pytest.skip("running as root without setpriv: permissions cannot be tested")
    frames = frame_folder(tmp_path / "frames", 3)
    locked = tmp_path / "locked"
    locked.mkdir()
    pred, gt = _eval_inputs(tmp_path)
    (tmp_path / "gt.png").write_bytes(label_png(tmp_path / "gt0.png").read_bytes())
    unreadable = frame_folder(tmp_path / "unreadable", 3)
    hidden = frame_folder(tmp_path / "hidden", 3)
    runs = [
        (_seg(frames, locked / "out"), f"cannot write in {locked} (permission denied)"),
        (
            ["eval", str(pred), str(gt), "--format", "folder", "--json", str(locked / "m.json")],
            f"cannot write in {locked} (permission denied)",
        ),
        (_seg(frames, tmp_path / "o1", "--first-frame-gt", str(tmp_path / "gt.png")), "gt.png"),
        (_seg(unreadable, tmp_path / "o2"), str(unreadable / "001.png")),
        (_seg(hidden, tmp_path / "o3"), f"{hidden}: cannot list the folder (permission denied)"),
    ]
    os.chmod(locked, 0o555)
    os.chmod(tmp_path / "gt.png", 0)
    os.chmod(unreadable / "001.png", 0)
    os.chmod(hidden, 0o111)
    try:
        before = sha(frames, locked)
        procs = [
            subprocess.Popen(
                [*prefix, sys.executable, "-m", "zsvss_nb", "-q", *args],
                env=CHILD_ENV,
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for args, _ in runs
        ]
        for proc, (args, named) in zip(procs, runs, strict=True):
            stdout, stderr = proc.communicate(timeout=300)
            assert proc.returncode == 2, (args, stderr)
            assert_one_line(stderr, named)
            assert stdout == ""
        assert sha(frames, locked) == before
        assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))
    finally:
        for path in (locked, hidden, tmp_path / "gt.png", unreadable / "001.png"):
            os.chmod(path, 0o755)


# ------------------------------------------------------------------ 5. names, links, rotation


def _entries(root: Path, names: list[str]) -> Path:
    root.mkdir()
    for name in names:
        if name.endswith("/"):
            frame_folder(root / name.rstrip("/"), 2)
        else:
            (root / name).write_bytes(b"a video")
    return root


@pytest.mark.parametrize(
    ("names", "named"),
    [
        (["clip/", "clip.mp4", "clip.webm"], "clip and clip.mp4 are both video 'clip'"),
        (["other.mp4", "other.avi"], "other.avi and other.mp4 are both video 'other'"),
        (["a/", "b.mp4", "b.MP4"], "video 'b'"),
    ],
    ids=["folder-mp4-webm", "mp4-avi", "case"],
)
def test_folder_dataset_names_that_collide_are_an_error(names, named, tmp_path, no_model, capsys):
    root = _entries(tmp_path / "root", names)
    with pytest.raises(DatasetLayoutError, match=named):
        open_dataset("folder", root)
    code, _, err = cli(
        ["dataset", "folder", str(root), "--out", str(tmp_path / "pred"), *MODEL], capsys
    )
    assert code == 2 and named in err and not (tmp_path / "pred").exists()


def test_folder_dataset_broken_links_and_two_videos_in_a_folder(tmp_path):
    root = _entries(tmp_path / "root", ["v1/"])
    (root / "v1" / "001.png").unlink()
    (root / "v1" / "001.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(DatasetLayoutError, match=r"v1/001\.png: frame or label is a broken"):
        open_dataset("folder", root)
    (root / "v1" / "001.png").unlink()
    (root / "v2").symlink_to(tmp_path / "gone")
    with pytest.raises(DatasetLayoutError, match="v2: video is a broken symbolic link"):
        open_dataset("folder", root)
    (root / "v2").unlink()
    (root / "v3").mkdir()
    for name in ("a.mp4", "b.mp4"):
        (root / "v3" / name).write_bytes(b"a video")
    with pytest.raises(DatasetLayoutError, match="v3: holds 2 video files"):
        open_dataset("folder", root)
    with pytest.raises(VideoNotFoundError, match="broken symbolic link"):
        (root / "v1" / "009.png").symlink_to(tmp_path / "gone.png")
        open_video(root / "v1")


def rotated_mp4(path: Path, frames: np.ndarray, degrees: int) -> Path:
    """An mp4 whose track header carries a display matrix rotating it by ``degrees``
    (what phones write), made by patching the matrix of a plain file's ``tkhd`` box."""
    data = bytearray(write_video(path, frames, fps=5).read_bytes())
    box = data.find(b"tkhd")
    version = data[box + 4]
    offset = box + 8 + (32 if version == 1 else 20) + 16  # times, track id, duration, layer...
    cos, sin = {90: (0, 1), 180: (-1, 0), 270: (0, -1)}[degrees]
    one = 1 << 16
    matrix = [cos * one, sin * one, 0, -sin * one, cos * one, 0, 0, 0, 1 << 30]
    data[offset : offset + 36] = struct.pack(">9i", *matrix)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_both_decoders_apply_the_rotation(degrees, tmp_path):
    pytest.importorskip("decord")
    frames = moving_box_frames(4)
    path = rotated_mp4(tmp_path / "rot.mp4", frames, degrees)
    with open_video(path, backend="decord") as a, open_video(path, backend="pyav") as b:
        assert a.size == b.size == ((H, W) if degrees != 180 else (W, H))
        da, db = a.read(range(4)), b.read(range(4))
    assert torch.equal(da, db)
    # the red box starts at the top-left of the stored frame: displayed, it has turned with it
    red = (da[0, 0].int() > 180) & (da[0, 1].int() < 90)
    ys, xs = red.nonzero().float().mean(0).tolist()
    h, w = red.shape
    expected = {
        90: (ys < h / 2, xs > w / 2),
        180: (ys > h / 2, xs > w / 2),
        270: (ys > h / 2, xs < w / 2),
    }
    assert all(expected[degrees]), (degrees, ys, xs)


def test_a_rotated_video_gives_the_same_labels_through_either_decoder(tiny, tmp_path):
    pytest.importorskip("decord")
    path = rotated_mp4(tmp_path / "rot.mp4", moving_box_frames(4), 90)
    cfg = SegmentConfig.fast().replace(k=3, window=2)
    labels = {}
    for backend in ("decord", "pyav"):
        with open_video(path, backend=backend) as video:
            labels[backend] = [
                r.labels for r in Segmenter(tiny, cfg).segment(video, progress=False)
            ]
    assert [tuple(x.shape) for x in labels["pyav"]] == [(W, H)] * 4
    assert all(torch.equal(a, b) for a, b in zip(labels["decord"], labels["pyav"], strict=True))


# ------------------------------------------------------------------ 6. large frames


def test_large_latents_warn_once_and_run_tiled(finished, tmp_path, capsys, caplog):
    frames, _ = finished
    code, _, err = cli(_seg(frames, tmp_path / "out", "--set", "features.vae_tile=4"), capsys)
    assert code == 0, err
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(lines) == 1, lines  # once, not per window (5 frames: 2 windows)
    for words in ("16x8 latent (128 tokens)", "above 4x4", "GiB", "tiles", "--max-side 32"):
        assert words in lines[0], (words, lines[0])


def test_tiling_only_above_the_threshold_and_diffusers_settings_restored(tiny, monkeypatch):
    video = moving_box_frames(3)
    cfg = SegmentConfig.fast().replace(k=3, window=3)
    vae = tiny.vae
    calls = []
    for name in ("_tiled_encode", "tiled_decode"):
        real = getattr(vae, name)
        monkeypatch.setattr(
            vae, name, lambda *a, _real=real, _n=name, **k: calls.append(_n) or _real(*a, **k)
        )

    def run(c):
        return [r.labels for r in Segmenter(tiny, c).segment(video, progress=False)]

    settings = (vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size)
    default, never = run(cfg), run(cfg.replace(features=cfg.features.replace(vae_tile=0)))
    assert calls == [] and all(torch.equal(a, b) for a, b in zip(default, never, strict=True))
    tiled = run(cfg.replace(features=cfg.features.replace(vae_tile=4)))
    assert "_tiled_encode" in calls and [x.shape for x in tiled] == [x.shape for x in default]
    assert (vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size) == settings
    modulated = SegmentConfig.tiny().replace(k=2, window=3, max_side=128)
    modulated = modulated.replace(features=modulated.features.replace(vae_tile=4))
    calls.clear()
    run(modulated)
    assert "tiled_decode" in calls  # the decodes of masked modulation are tiled too


@pytest.mark.parametrize(
    ("scale", "fn"),
    [
        (1 / 8, lambda t: F.avg_pool2d(t, 8) * 2 + 1),  # an encoder-shaped local map
        (
            8,
            lambda t: F.interpolate(t, scale_factor=8, mode="nearest") - 0.5,
        ),  # a decoder-shaped one
    ],
)
def test_tiled_apply_of_a_local_map_equals_the_untiled_map(scale, fn):
    x = torch.rand(2, 3, 96, 136) if scale < 1 else torch.rand(2, 4, 12, 17)
    tile = 32 if scale < 1 else 4
    torch.testing.assert_close(tiled_apply(fn, x, tile, scale), fn(x), rtol=0, atol=1e-6)


def test_tiled_apply_blends_the_overlap_linearly():
    """Two tiles of constants 0 and 1: the seam ramps 0, 1/2 as diffusers' blend_h does."""
    calls: list[int] = []

    def fn(t: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return torch.full_like(t, float(len(calls) - 1))

    out = tiled_apply(fn, torch.zeros(1, 1, 4, 12), 8, 1.0)  # tiles at columns 0 and 6
    assert len(calls) == 2 and out.shape == (1, 1, 4, 12)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.0] * 6 + [0.0, 0.5] + [1.0] * 4))


def test_svd_decodes_large_latents_in_tiles(tiny_svd):
    latents = torch.randn(2, 4, 12, 16)
    plain = tiny_svd.decode(latents)
    tiled = tiny_svd.decode(latents, tile=4)
    assert tiled.shape == plain.shape == (2, 3, 96, 128)
    assert torch.equal(tiny_svd.decode(latents, tile=16), plain)  # below: untouched
    z = tiny_svd.encode(plain, None, sample=False, tile=4)
    assert z.shape == (2, 4, 12, 16)
    assert torch.equal(
        tiny_svd.encode(plain, None, sample=False, tile=16),
        tiny_svd.encode(plain, None, sample=False),
    )


# ------------------------------------------------------------------ 7. mVC without valid GT


def _plain_mvc(preds, gts, n, valid):
    """The official VC_perclip, skipping clips whose GT frames hold no valid pixel."""
    scores = []
    for i in range(len(gts) - n):
        g, p = np.stack(gts[i : i + n]), np.stack(preds[i : i + n])
        if not valid(g).any():
            continue
        steady_g = (g == g[0]).all(0)
        steady = steady_g & (p == p[0]).all(0)
        if steady_g.any():  # the official nanmean drops clips where every GT pixel changes
            scores.append(steady.sum() / steady_g.sum())
    return float(np.mean(scores)) if scores else math.nan


def test_mvc_of_a_gt_without_valid_pixels_is_not_available(tmp_path, capsys):
    rng = np.random.default_rng(0)
    void = [np.full((6, 8), 255) for _ in range(16)]
    preds = [rng.integers(0, 2, (6, 8)) for _ in range(16)]
    result = evaluate([("v", preds, void)], num_classes=2)
    assert math.isnan(result.mvc8) and math.isnan(result.mvc16) and "n/a" in result.table()
    # half void, half labelled: only the clips that hold labelled frames count
    gts = void[:6] + [
        np.where(np.arange(8) < 3 + (t % 2), 1, 0)[None].repeat(6, 0) for t in range(10)
    ]
    mixed = evaluate([("v", preds, gts)], num_classes=2, vc_ns=(2, 8))
    for n in (2, 8):
        expected = _plain_mvc(preds, gts, n, lambda g: g != 255)
        assert not math.isnan(expected) and mixed.mvc[n] == pytest.approx(expected)
    # through the CLI: "n/a" in the table, null in the JSON
    root = tmp_path / "gt"
    frame_folder(root / "clip", 10)
    for t in range(10):
        (root / "labels" / "clip").mkdir(parents=True, exist_ok=True)
        (tmp_path / "pred" / "clip").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((H, W), 255, np.uint8)).save(
            root / "labels" / "clip" / f"{t:03d}.png"
        )
        Image.fromarray(np.zeros((H, W), np.uint8)).save(
            tmp_path / "pred" / "clip" / f"{t:03d}.png"
        )
    args = ["eval", str(tmp_path / "pred"), str(root), "--format", "folder", "--num-classes", "2"]
    code, stdout, err = cli([*args, "--json", str(tmp_path / "m.json")], capsys)
    assert code == 0, err
    assert "| first-frame | n/a | n/a | n/a |" in stdout
    assert json.loads((tmp_path / "m.json").read_text())["mvc8"] is None


# ------------------------------------------------------------------ issue 25: round two
# Each numbered item of the issue has at least one row or test below (the README's
# Reliability section lists which).

ROUND2_CONFIG_CASES = [
    ("6-lam-finite-but-huge", ["--lam", "1e20"], "upsample.lam=1e+20 must lie in"),
    ("6-blur-sigma-tiny", ["--set", "blur_sigma=1e-30"], "upsample.blur_sigma=1e-30 must lie"),
    ("6-bilateral-sigma-tiny", ["--set", "bilateral_sigma_color=1e-30"], "sigma_color=1e-30"),
    ("6-kmeans-tol-huge", ["--set", "kmeans_tol=1e30"], "context.kmeans_tol=1e+30"),
    ("10-guidance-1e308", ["--set", "guidance_scale=1e308"], "guidance_scale=1e+308 must lie"),
    ("10-seed-beyond-2^64", ["--seed", str(2**64)], f"features.seed={2**64} must lie in"),
    ("10-seed-negative", ["--seed", "-1"], "features.seed=-1 must lie in"),
    ("7-propagate-temperature-inf", ["--set", "propagate.temperature=inf"], "temperature=inf"),
    ("7-propagate-temperature-tiny", ["--set", "propagate.temperature=1e-30"], "must lie in"),
    ("7-diffseg-kl-nan", ["--set", "diffseg.kl_threshold=nan"], "diffseg.kl_threshold=nan"),
    ("7-diffseg-type", ["--set", "diffseg.anchors=2.5"], "diffseg.anchors='2.5'"),
]


@pytest.mark.parametrize(
    ("extra", "named"),
    [c[1:] for c in ROUND2_CONFIG_CASES],
    ids=[c[0] for c in ROUND2_CONFIG_CASES],
)
@pytest.mark.parametrize("command", ["segment", "dataset"])
def test_round_two_options_fail_before_the_model_loads(
    command, extra, named, finished, tmp_path, no_model, capsys
):
    test_bad_options_fail_before_the_model_loads(
        command, extra, named, finished, tmp_path, no_model, capsys
    )


def test_every_float_field_has_a_documented_range():
    from dataclasses import fields as dc_fields
    from typing import get_args

    from zsvss_nb.config import STAGES
    from zsvss_nb.fieldtypes import field_types

    classes = [type(getattr(SegmentConfig(), s)) for s in STAGES] + [SegmentConfig]
    for cls in classes:
        for f in dc_fields(cls):
            tp = field_types(cls)[f.name]
            if float in (tp, *get_args(tp)):
                assert f.name in cls._ranges, f"{cls.__name__}.{f.name} has no range"
                lo, hi = cls._ranges[f.name]
                default = getattr(cls(), f.name)
                assert default is None or lo <= default <= hi
        assert cls()._stage or cls is SegmentConfig  # every section names itself in errors


def test_stages_guard_their_own_divisions():
    """A config built around the checks (object.__setattr__) still fails in the stage."""
    from zsvss_nb.config import PropagateConfig
    from zsvss_nb.kernels.ops import gaussian_kernel1d
    from zsvss_nb.methods.propagate import propagate_step
    from zsvss_nb.upsample import joint_bilateral_scores

    with pytest.raises(ConfigError, match="no finite taps"):
        gaussian_kernel1d(5, 1e-200)
    scores, guide = torch.rand(2, 4, 4), torch.rand(3, 16, 16)
    with pytest.raises(ConfigError, match="non-finite weights"):
        joint_bilateral_scores(scores, guide, 0.5, 1e-30)
    cfg = PropagateConfig()
    object.__setattr__(cfg, "temperature", 0.0)
    cells = F.normalize(torch.rand(6, 4), dim=1)
    with pytest.raises(ConfigError, match="temperature=0.0 must lie in"):
        propagate_step(cells, cells[None], torch.rand(1, 6, 2), None, cfg)


@dataclass
class Attack:
    """One hostile or mistaken command line of issue 25 (see :class:`Case`); ``stack`` holds
    what must stay in place while it runs (a lock held as by another live run)."""

    args: list[str]
    named: str
    protect: list[Path] = field(default_factory=list)
    absent: list[Path] = field(default_factory=list)


def _live_run(stack, target: Path) -> None:
    """Hold ``target``'s lock as another live zsvss run would (kernel lock, its own fd)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    stack.enter_context(locks.hold_lock(target))


def _a1_inside_live(tmp, frames, out, mp, stack):
    _live_run(stack, tmp / "R")
    return Attack(_seg(frames, tmp / "R" / "sub"), "lies inside", absent=[tmp / "R" / "sub"])


def _a1_contains_live(tmp, frames, out, mp, stack):
    _live_run(stack, out / "sub")
    return Attack(_seg(frames, out), f"contains {out / 'sub'}, the output of another live", [out])


def _a1_dataset_inside_live(tmp, frames, out, mp, stack):
    _live_run(stack, tmp / "R")
    args = ["dataset", "folder", str(frames.parent), "--out", str(tmp / "R" / "pred"), *MODEL]
    return Attack(args, "lies inside", absent=[tmp / "R" / "pred"])


def _a3_user_file_in_labels(tmp, frames, out, mp, stack):
    (out / "labels" / "mine.png").write_bytes(b"my own label")
    return Attack(_seg(frames, out), "'labels/mine.png', which zsvss did not write", [out])


def _a3_user_folder_in_color(tmp, frames, out, mp, stack):
    (out / "color" / "notes").mkdir()
    (out / "color" / "notes" / "a.txt").write_text("mine\n")
    return Attack(_seg(frames, out), "'color/notes/a.txt', which zsvss did not write", [out])


def _a3_manifest_listing_nothing(tmp, frames, out, mp, stack):
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["files"]  # e.g. a folder with a hand-made manifest.json
    (out / "manifest.json").write_text(json.dumps(manifest))
    return Attack(_seg(frames, out), "no manifest.json lists it", [out])


def _eval_args(pred: Path, gt: Path, *extra: str) -> list[str]:
    return ["eval", str(pred), str(gt), "--format", "folder", *extra]


def _a4_json_on_a_gt_label(tmp, frames, out, mp, stack):
    pred, gt = _eval_inputs(tmp)
    label = gt / "labels" / "clip" / "000.png"
    return Attack(_eval_args(pred, gt, "--json", str(label)), "lies inside the input", [gt])


def _a4_json_on_a_prediction(tmp, frames, out, mp, stack):
    pred, gt = _eval_inputs(tmp)
    target = pred / "clip" / "001.png"
    return Attack(_eval_args(pred, gt, "--json", str(target)), "lies inside the input", [pred])


def _a4_json_through_a_link_to_the_gt(tmp, frames, out, mp, stack):
    pred, gt = _eval_inputs(tmp)
    (tmp / "m.json").symlink_to(gt / "labels" / "clip" / "000.png")
    args = _eval_args(pred, gt, "--json", str(tmp / "m.json"))
    return Attack(args, "m.json lies inside the input", [gt])


def _a4_json_on_a_user_file(tmp, frames, out, mp, stack):
    pred, gt = _eval_inputs(tmp)
    (tmp / "notes.txt").write_text("not a report\n")
    args = _eval_args(pred, gt, "--json", str(tmp / "notes.txt"))
    return Attack(args, "is not a file zsvss writes there", [tmp / "notes.txt"])


def _a4_compare_out_inside_the_dataset(tmp, frames, out, mp, stack):
    root = frames.parent
    args = ["compare", "folder", str(root), "--out", str(root / "cmp"), *MODEL]
    return Attack(args, "lies inside the input", absent=[root / "cmp"])


def _a4_bench_json_on_a_user_file(tmp, frames, out, mp, stack):
    (tmp / "notes.txt").write_text("not a report\n")
    args = ["bench", "--frames", "2", "--size", "64", "--json", str(tmp / "notes.txt")]
    return Attack(args, "is not a file zsvss writes there", [tmp / "notes.txt"])


def _a5_planted_video_lock(tmp, frames, out, mp, stack):
    victim = tmp / "victim.txt"
    victim.write_text("precious\n")
    (tmp / "pred").mkdir()
    (tmp / "pred" / ".frames.lock").symlink_to(victim)
    args = ["dataset", "folder", str(frames.parent), "--out", str(tmp / "pred"), *MODEL]
    return Attack(args, "is a symbolic link zsvss did not create", [victim])


def _a5_planted_video_folder(tmp, frames, out, mp, stack):
    victim = tmp / "victim"
    victim.mkdir()
    (victim / "keep.png").write_bytes(b"precious")
    (tmp / "pred").mkdir()
    (tmp / "pred" / "frames").symlink_to(victim)
    args = ["dataset", "folder", str(frames.parent), "--out", str(tmp / "pred"), *MODEL]
    return Attack(args, "is a symbolic link zsvss did not create", [victim])


def _a5_planted_output_lock(tmp, frames, out, mp, stack):
    victim = tmp / "victim.txt"
    victim.write_text("precious\n")
    locks.lock_path(out).unlink(missing_ok=True)
    locks.lock_path(out).symlink_to(victim)
    return Attack(_seg(frames, out), "the lock file is a symbolic link", [victim, out])


def _a6_fps_tiny(tmp, frames, out, mp, stack):
    return Attack(_seg(frames, tmp / "o", "--fps", "1e-9"), "fps=1e-09 must be a number in")


def _a6_fps_huge(tmp, frames, out, mp, stack):
    return Attack(_seg(frames, tmp / "o", "--fps", "1e9"), "fps=1000000000.0 must be a number")


def _a8_frame_is_a_folder(tmp, frames, out, mp, stack):
    (frames / "001.png").unlink()
    (frames / "001.png").mkdir()
    return Attack(_seg(frames, tmp / "o"), "001.png: frame entry is a folder, not an image file")


def _a9_mixed_runs(tmp, frames, out, mp, stack):
    pred, gt = _mixed_prediction(tmp)
    return Attack(_eval_args(pred, gt), "come from 2 runs with different settings", [pred, gt])


def _a10_device_cuda(tmp, frames, out, mp, stack):
    mp.setattr(torch.cuda, "is_available", lambda: False)
    return Attack(_seg(frames, tmp / "o", "--device", "cuda"), "--device cuda: this torch has no")


def _a10_device_bogus(tmp, frames, out, mp, stack):
    return Attack(_seg(frames, tmp / "o", "--device", "bogus"), "--device 'bogus': not a device")


def _a11_mount_point(tmp, frames, out, mp, stack):
    real = os.path.ismount
    mp.setattr(os.path, "ismount", lambda p: Path(p) == out or real(p))
    return Attack(_seg(frames, out), "is a mount point", [out])


def _a11_long_out_name(tmp, frames, out, mp, stack):
    long = tmp / ("o" * 240)
    return Attack(_seg(frames, long), "is 240 bytes", absent=[long])


def _a11_long_frame_name(tmp, frames, out, mp, stack):
    name = "f" * 245
    shutil.copy(frames / "002.png", frames / f"{name}.png")
    return Attack(_seg(frames, tmp / "o"), f"frame '{name}'", absent=[tmp / "o"])


def _a11_immutable_out(tmp, frames, out, mp, stack):
    if shutil.which("chattr") is None:
        pytest.skip("no chattr")
    done = subprocess.run(["chattr", "+i", str(out)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot make a folder immutable here: {done.stderr!r}")
    stack.callback(subprocess.run, ["chattr", "-i", str(out)], check=True)
    return Attack(_seg(frames, out), "cannot be replaced (operation not permitted)", [out])


def _a12_full_disk_at_the_lock(tmp, frames, out, mp, stack):
    (tmp / "full").mkdir()
    real = os.write

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp / "full")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    mp.setattr(os, "write", write)
    target = tmp / "full" / "out"
    lock = locks.lock_path(target)
    return Attack(_seg(frames, target), f"{lock}: cannot write the lock file (no space", [], [lock])


def _a12_newline_in_a_path(tmp, frames, out, mp, stack):
    odd = tmp / "a\nb"
    shutil.copytree(frames, odd)
    return Attack(_seg(odd, odd / "pred"), "a\\nb", [odd], [odd / "pred"])


def _a12_video_named_like_the_manifest(tmp, frames, out, mp, stack):
    root = tmp / "root"
    shutil.copytree(frames, root / "run_manifest_0.json")
    args = ["dataset", "folder", str(root), "--out", str(tmp / "pred"), *MODEL]
    return Attack(args, "video 'run_manifest_0.json': its prediction folder would take")


def _own_out_is_a_link_to_a_live_output(tmp, frames, out, mp, stack):
    _live_run(stack, out)
    (tmp / "alias").symlink_to(out)
    return Attack(_seg(frames, tmp / "alias"), "another zsvss run (pid", [out])


def _own_json_is_a_named_pipe(tmp, frames, out, mp, stack):
    pred, gt = _eval_inputs(tmp)
    os.mkfifo(tmp / "m.json")
    return Attack(_eval_args(pred, gt, "--json", str(tmp / "m.json")), "not a regular file")


def _own_lock_is_a_folder(tmp, frames, out, mp, stack):
    locks.lock_path(out).mkdir()
    lock = locks.lock_path(out)
    return Attack(_seg(frames, out), "cannot create the lock file (is a folder)", [out, lock])


def _mixed_prediction(tmp: Path) -> tuple[Path, Path]:
    """Two labelled clips whose predictions come from runs with different config hashes."""
    gt, pred = tmp / "gt", tmp / "pred"
    for clip, key in (("clip", "a" * 64), ("other", "b" * 64)):
        frame_folder(gt / clip, 2)
        for t in range(2):
            label_png(gt / "labels" / clip / f"{t:03d}.png")
            label_png(pred / clip / f"{t:03d}.png")
        done = {"config_hash": key, "files": ["000.png", "001.png"]}
        (pred / clip / ".done.json").write_text(json.dumps(done))
    return pred, gt


ATTACKS: list[tuple[str, Callable]] = [
    ("1-out-inside-a-live-output", _a1_inside_live),
    ("1-out-contains-a-live-output", _a1_contains_live),
    ("1-dataset-out-inside-a-live-output", _a1_dataset_inside_live),
    ("3-user-file-in-labels", _a3_user_file_in_labels),
    ("3-user-folder-in-color", _a3_user_folder_in_color),
    ("3-manifest-lists-no-files", _a3_manifest_listing_nothing),
    ("4-eval-json-on-a-gt-label", _a4_json_on_a_gt_label),
    ("4-eval-json-on-a-prediction", _a4_json_on_a_prediction),
    ("4-eval-json-link-to-the-gt", _a4_json_through_a_link_to_the_gt),
    ("4-eval-json-on-a-user-file", _a4_json_on_a_user_file),
    ("4-compare-out-inside-the-dataset", _a4_compare_out_inside_the_dataset),
    ("4-bench-json-on-a-user-file", _a4_bench_json_on_a_user_file),
    ("5-planted-link-as-a-video-lock", _a5_planted_video_lock),
    ("5-planted-link-as-a-video-folder", _a5_planted_video_folder),
    ("5-planted-link-as-the-output-lock", _a5_planted_output_lock),
    ("6-fps-tiny", _a6_fps_tiny),
    ("6-fps-huge", _a6_fps_huge),
    ("8-frame-entry-is-a-folder", _a8_frame_is_a_folder),
    ("9-eval-mixed-config-hashes", _a9_mixed_runs),
    ("10-device-cuda-without-cuda", _a10_device_cuda),
    ("10-device-bogus", _a10_device_bogus),
    ("11-out-is-a-mount-point", _a11_mount_point),
    ("11-out-name-too-long-for-staging", _a11_long_out_name),
    ("11-frame-name-too-long-for-its-temp", _a11_long_frame_name),
    ("11-out-is-immutable", _a11_immutable_out),
    ("12-disk-full-writing-the-lock", _a12_full_disk_at_the_lock),
    ("12-newline-in-a-path", _a12_newline_in_a_path),
    ("12-video-named-like-the-run-manifest", _a12_video_named_like_the_manifest),
    ("own-out-is-a-link-to-a-live-output", _own_out_is_a_link_to_a_live_output),
    ("own-json-is-a-named-pipe", _own_json_is_a_named_pipe),
    ("own-lock-is-a-folder", _own_lock_is_a_folder),
]


@pytest.mark.parametrize("build", [c[1] for c in ATTACKS], ids=[c[0] for c in ATTACKS])
def test_round_two_attacks_are_refused_before_the_model_loads(
    build, finished, tmp_path, monkeypatch, no_model, capsys
):
    """Exit 2, one line naming the problem, no traceback, every earlier byte in place, and
    nothing of zsvss's left behind."""
    import contextlib

    frames, out = copy_finished(finished, tmp_path)
    (tmp_path / "data").mkdir()
    frames = Path(shutil.move(frames, tmp_path / "data" / "frames"))
    with contextlib.ExitStack() as stack:
        case = build(tmp_path, frames, out, monkeypatch, stack)
        protected = sha(frames, out, *case.protect)
        code, stdout, err = cli(case.args, capsys)
        monkeypatch.undo()
        after = sha(frames, out, *case.protect)  # while the other run's lock is still held
    assert code == 2 and stdout == "", err
    assert_one_line(err, case.named)
    assert after == protected
    for path in case.absent:
        assert not path.exists(), path
    leftover = [p for p in tmp_path.rglob(".*") if p.name.endswith((".tmp", ".old", ".lock"))]
    # a planted link or folder stays as it was; nothing of zsvss's is left
    assert not [p for p in leftover if not p.is_symlink() and p not in case.protect]


RACE = ["--model", "tiny", "--preset", "fast", "--k", "4"]


def _race_run(frames: Path, out: Path, seed: int, cwd: Path) -> subprocess.Popen:
    return start_cli(["segment", str(frames), "--out", str(out), *RACE, "--seed", str(seed)], cwd)


def _finish(*procs: subprocess.Popen) -> list[tuple[int, str, str]]:
    results = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=300)
            results.append((proc.returncode, stdout, stderr))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


# when the second run starts, measured on the first (no fixed sleeps): at once; once the first
# holds its lock (it is still importing torch and loading the model: the window of issue 25
# item 2); once it has staged a label PNG (computing). At the last two the first is stopped
# (SIGSTOP) until the second has ended, so "still importing" or "still computing" is certain
# on a loaded machine.
RACE_OFFSETS = {
    "together": None,
    "first-holds-its-lock-and-imports": lambda out: locks.lock_path(out).exists(),
    "first-is-computing": lambda out: any(out.parent.glob(".out.*.tmp/labels/*.png")),
}


@pytest.mark.parametrize("offset", list(RACE_OFFSETS))
def test_two_runs_on_one_output_race_at_several_offsets(offset, tmp_path):
    """Item 2: whenever the second run starts, exactly one run writes the output; the other
    is refused with one line, and the output is the winner's, complete."""
    frames = frame_folder(tmp_path / "frames", 3)
    out = tmp_path / "out"
    first = _race_run(frames, out, 1, tmp_path)
    ready = RACE_OFFSETS[offset]
    if ready is None:
        second = _race_run(frames, out, 2, tmp_path)
        (code1, _, err1), (code2, _, err2) = _finish(first, second)
    else:
        try:
            wait_until(first, lambda: ready(out), offset)
            first.send_signal(signal.SIGSTOP)
            second = _race_run(frames, out, 2, tmp_path)
            ((code2, _, err2),) = _finish(second)
        finally:
            first.send_signal(signal.SIGCONT)
        ((code1, _, err1),) = _finish(first)
        assert (code1, code2) == (0, 2), (err1, err2)
    assert sorted((code1, code2)) == [0, 2], (err1, err2)
    winner, loser_err = (1, err2) if code1 == 0 else (2, err1)
    assert_one_line(loser_err, "another zsvss run (pid ")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == winner and manifest["video"]["frames"] == 3
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert manifest["files"] == [f for f in files if f != "manifest.json"]
    assert len(list((out / "labels").iterdir())) == 3
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("first_is", ["outer", "inner"])
def test_nested_outputs_of_concurrent_runs(first_is, tmp_path):
    """Item 1: runs on R and R/sub at once (R absent at the start): the second is refused,
    the first's output is complete, nothing of either is lost."""
    frames = frame_folder(tmp_path / "frames", 3)
    outer, inner = tmp_path / "R", tmp_path / "R" / "sub"
    order = [outer, inner] if first_is == "outer" else [inner, outer]
    first = _race_run(frames, order[0], 1, tmp_path)
    wait_until(first, lambda: locks.lock_path(order[0]).exists(), "the first run's lock")
    second = _race_run(frames, order[1], 2, tmp_path)
    (code1, _, err1), (code2, _, err2) = _finish(first, second)
    assert code1 == 0 and code2 == 2, (err1, err2)
    if first_is == "outer":
        assert_one_line(err2, f"lies inside {outer}, the output of another live zsvss run")
        assert sorted(p.name for p in outer.iterdir()) == [
            "color",
            "labels",
            "manifest.json",
            "overlay.mp4",
        ]
    else:
        assert_one_line(err2, f"contains {inner}, the output of another live zsvss run")
        assert len(list((inner / "labels").iterdir())) == 3
    assert json.loads((order[0] / "manifest.json").read_text())["seed"] == 1
    assert leftovers(tmp_path) == [] and leftovers(outer) == []


def test_a_named_pipe_among_the_frames_is_an_error_and_never_blocks(tmp_path):
    """Item 8: opening a FIFO would block forever; it is refused by name at once."""
    frames = frame_folder(tmp_path / "frames", 3)
    os.mkfifo(frames / "001b.png")
    before = sha(frames / "000.png", frames / "001.png", frames / "002.png")
    proc = subprocess.run(
        [sys.executable, "-m", "zsvss_nb", "-q", *_seg(frames, tmp_path / "o")],
        env=CHILD_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert_one_line(proc.stderr, "001b.png: frame entry is a named pipe, not an image file")
    assert sha(frames / "000.png", frames / "001.png", frames / "002.png") == before
    assert not (tmp_path / "o").exists()


def test_eval_scores_mixed_runs_only_when_allowed(tmp_path, capsys, caplog):
    """Item 9: refused by default (a row of the attack table), scored with a warning when
    --allow-mixed is given."""
    pred, gt = _mixed_prediction(tmp_path)
    code, stdout, err = cli([*_eval_args(pred, gt), "--allow-mixed"], capsys)
    assert code == 0, err
    assert "| first-frame |" in stdout
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("2 runs with different settings" in w and "--allow-mixed" in w for w in warnings)


def test_an_interrupt_during_publish_is_reported_after_it(finished, tmp_path, monkeypatch, capsys):
    """Item 12: SIGTERM (as Ctrl-C) right after the second rename of a publish: the new run is
    in place and complete, no backup is left, and the message says so."""
    frames, out = copy_finished(finished, tmp_path)
    real = os.rename

    def rename(src, dst):
        real(src, dst)
        if Path(dst) == out and Path(src).name.endswith(".tmp"):  # staging -> output
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(os, "rename", rename)
    code, stdout, err = cli(_seg(frames, out, "--seed", "5"), capsys)
    monkeypatch.undo()
    assert code == 130 and stdout == "", err
    assert err == f"zsvss: interrupted after {out} was published; the new output is complete\n"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 5 and len(list((out / "labels").iterdir())) == 5
    assert leftovers(tmp_path) == []


def test_what_publish_replaces_is_checked_again_when_it_publishes(
    finished, tmp_path, monkeypatch, capsys
):
    """Items 1 and 3: a file of the user's that appears in the output while the run computes
    stops the publish; the output, that file included, stays as it is."""
    frames, out = copy_finished(finished, tmp_path)
    original = Segmenter.segment

    def segment(self, *args, **kwargs):
        for i, result in enumerate(original(self, *args, **kwargs)):
            if i == 0:
                (out / "labels" / "mine.png").write_bytes(b"written meanwhile")
            yield result

    monkeypatch.setattr(Segmenter, "segment", segment)
    before = sha(out)
    code, stdout, err = cli(_seg(frames, out), capsys)
    assert code == 2 and stdout == ""
    assert_one_line(err, "'labels/mine.png', which zsvss did not write")
    mine = out / "labels" / "mine.png"
    assert mine.read_bytes() == b"written meanwhile"
    assert {k: v for k, v in sha(out).items() if k != str(mine)} == before
    assert leftovers(tmp_path) == []


def test_a_planted_backup_link_is_never_followed(finished, tmp_path, capsys):
    """Own attack (item 5's class): a link named like a cut publish's backup, pointing at
    the user's folder, while the output is missing: the old code restored the link as the
    output and the next publish replaced the folder behind it."""
    frames, out = copy_finished(finished, tmp_path)
    shutil.rmtree(out)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine\n")
    (tmp_path / ".out.0123456789ab.old").symlink_to(victim)
    before = sha(victim)
    code, _, err = cli(_seg(frames, out, "--no-overlay"), capsys)
    assert code == 0, err
    assert sha(victim) == before and not out.is_symlink()
    assert len(list((out / "labels").iterdir())) == 5 and leftovers(tmp_path) == []


def test_segmenter_config_type_and_threads(tiny):
    """Item 10: a dict as the config is a ConfigError; one Segmenter used from a second thread
    while segmenting is refused clearly; Segmenters sharing a backbone in two threads give
    the labels of a sequential run."""
    import threading

    with pytest.raises(ConfigError, match="Segmenter needs a SegmentConfig, got dict"):
        Segmenter(tiny, {"k": 3})
    cfg = SegmentConfig.fast().replace(k=3, window=2)
    video = moving_box_frames(4)
    expected = [r.labels for r in Segmenter(tiny, cfg).segment(video, progress=False)]
    seg = Segmenter(tiny, cfg)
    busy = seg.segment(video, progress=False)
    next(busy)  # this thread is segmenting
    errors: list[BaseException] = []

    def use_it():
        try:
            list(seg.segment(video, progress=False))
        except ConfigError as err:
            errors.append(err)

    thread = threading.Thread(target=use_it)
    thread.start()
    thread.join()
    busy.close()
    assert len(errors) == 1 and "segmenting in another thread" in str(errors[0])
    results: dict[int, list[torch.Tensor]] = {}

    def run(i: int) -> None:
        results[i] = [r.labels for r in Segmenter(tiny, cfg).segment(video, progress=False)]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        assert len(results[i]) == 4
        assert all(torch.equal(a, b) for a, b in zip(results[i], expected, strict=True))


def test_an_internal_error_keeps_its_traceback_and_says_it_is_a_bug(
    finished, tmp_path, monkeypatch, capsys
):
    frames, out = copy_finished(finished, tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("an unexpected failure inside zsvss")

    monkeypatch.setattr("zsvss_nb.pipeline.upsample", broken)
    before = sha(out)
    code, stdout, err = cli(_seg(frames, out), capsys)
    assert code == 1 and stdout == ""
    assert "Traceback" in err and "RuntimeError: an unexpected failure inside zsvss" in err
    assert err.rstrip().splitlines()[-1].startswith("zsvss: internal error: this is a bug")
    assert sha(out) == before and leftovers(tmp_path) == []


def test_save_figure_checks_its_paths(tmp_path):
    """Item 4: a figure never lands on an input or on a file zsvss did not write; its own
    figure it overwrites."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zsvss_nb.errors import InputError, OutputOverlapError
    from zsvss_nb.notebook.viz.export import save_figure

    frames = frame_folder(tmp_path / "frames", 2)
    photo = label_png(tmp_path / "photo.png")
    before = sha(frames, photo)
    fig = plt.figure()
    try:
        with pytest.raises(OutputOverlapError, match="lies inside the input"):
            save_figure(fig, frames / "fig", clip=str(frames), formats=("png",))
        with open_video(frames) as video:
            with pytest.raises(OutputOverlapError, match="lies inside the input"):
                save_figure(fig, frames / "000", clip=video, formats=("png",))
        with pytest.raises(InputError, match="not a file zsvss writes there"):
            save_figure(fig, tmp_path / "photo", formats=("pdf", "png"))
        assert not (tmp_path / "photo.pdf").exists()  # checked before any is written
        first = save_figure(fig, tmp_path / "new" / "fig", formats=("png",))
        assert save_figure(fig, tmp_path / "new" / "fig", formats=("png",)) == first
    finally:
        plt.close(fig)
    assert sha(frames, photo) == before

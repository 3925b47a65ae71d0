"""Atomic outputs, resume after a kill, determinism and out-of-memory advice (issue #8, 2/4/5).

``zsvss dataset`` runs as a real subprocess and is stopped with SIGTERM or SIGINT once the
second video has its first PNG in its staging folder; the first video's PNGs must be whole (and
equal to the ones an uninterrupted run writes), the second video must not appear at all, no temp
file or staging folder may remain, and ``--resume`` must finish the job with files
byte-identical to an uninterrupted run. The other runs call ``zsvss_nb.run.cli.main``
in-process (same code path, no model load per run).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import signal_child, start_cli, wait_until
from PIL import Image

from zsvss_nb.config import SegmentConfig
from zsvss_nb.errors import DeviceOutOfMemoryError
from zsvss_nb.io.outputs import DONE_FILE
from zsvss_nb.pipeline import Segmenter
from zsvss_nb.run.cli import main

ROOT = Path(__file__).resolve().parents[1]
H, W = 96, 128
VIDEOS = ("v0", "v1", "v2")  # natural order: the order the runner segments them in
FRAMES = 6
MODEL = ["--model", "tiny", "--preset", "fast", "--k", "3", "--window", "3"]


@pytest.fixture(autouse=True)
def _keep_sigterm_handler():
    """cli.main turns SIGTERM into KeyboardInterrupt; keep that out of the test process."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


def write_dataset(root: Path) -> Path:
    """A ``folder`` dataset: root/<video>/<t>.png, a box moving over a per-video gradient."""
    rng = np.random.default_rng(3)
    for v, name in enumerate(VIDEOS):
        (root / name).mkdir(parents=True)
        for t in range(FRAMES):
            img = np.empty((H, W, 3), np.uint8)
            img[:] = np.linspace(20 + 30 * v, 220, W, dtype=np.uint8)[None, :, None]
            img[20:60, 10 + 7 * t : 50 + 7 * t] = (230, 40 + 60 * v, 30)
            noisy = img.astype(np.int16) + rng.integers(-8, 9, img.shape)
            Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(root / name / f"{t}.png")
    return root


def pngs(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("*/*.png"))}


def temp_files(out: Path) -> list[str]:
    return [name for _, _, files in os.walk(out) for name in files if name.endswith(".tmp")]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("videos"))


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory) -> Path:
    """One uninterrupted, unsharded run: what every other run must reproduce byte for byte."""
    out = tmp_path_factory.mktemp("reference")
    before = signal.getsignal(signal.SIGTERM)
    try:
        assert main(["-q", "dataset", "folder", str(dataset), "--out", str(out), *MODEL]) == 0
    finally:
        signal.signal(signal.SIGTERM, before)
    files = pngs(out)
    assert set(files) == {f"{v}/{t}.png" for v in VIDEOS for t in range(FRAMES)}
    return out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_killed_run_leaves_whole_files_and_resume_matches(sig, dataset, reference, tmp_path):
    pred = tmp_path / "pred"
    proc = start_cli(["dataset", "folder", str(dataset), "--out", str(pred), *MODEL], tmp_path)
    try:
        wait_until(proc, lambda: any(pred.glob(".v1.*.tmp/*.png")), "a PNG of the second video")
    finally:
        stderr = signal_child(proc, sig)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "zsvss: interrupted" and "Traceback" not in stderr

    # every PNG on disk is whole, and is the file the uninterrupted run wrote; the video cut
    # short left nothing (its staging folder is gone)
    left = pngs(pred)
    assert set(left) == {f"v0/{t}.png" for t in range(FRAMES)}
    assert sorted(p.name for p in pred.iterdir()) == ["run_manifest_0.json", "v0"]
    for name, data in left.items():
        with Image.open(pred / name) as im:
            im.verify()
        with Image.open(pred / name) as im:
            assert im.size == (W, H) and np.asarray(im).shape == (H, W)
        assert data == reference.joinpath(name).read_bytes(), name
    assert temp_files(pred) == []
    assert (pred / "v0" / DONE_FILE).is_file()  # finished before the signal
    assert not (pred / "v2" / DONE_FILE).exists()
    manifest = json.loads((pred / "run_manifest_0.json").read_text())
    assert manifest["error"]["type"] == "KeyboardInterrupt"
    assert manifest["error"]["video"] == "v1"

    # --resume skips the finished video and completes the rest, byte-identical
    args = ["-q", "dataset", "folder", str(dataset), "--out", str(pred), *MODEL, "--resume"]
    assert main(args) == 0
    manifest = json.loads((pred / "run_manifest_0.json").read_text())
    assert "v0" in manifest["videos_skipped"] and manifest["error"] is None
    assert pngs(pred) == pngs(reference)
    assert all((pred / v / DONE_FILE).is_file() for v in VIDEOS)
    assert temp_files(pred) == []


def test_shard_splits_and_runs_are_byte_identical_and_seed_is_recorded(
    dataset, reference, tmp_path
):
    split = tmp_path / "split"
    for shard in ("1/2", "0/2"):
        args = ["-q", "dataset", "folder", str(dataset), "--out", str(split), *MODEL]
        assert main([*args, "--shard", shard]) == 0
    assert pngs(split) == pngs(reference)
    for rank in (0, 1):
        manifest = json.loads((split / f"run_manifest_{rank}.json").read_text())
        assert manifest["shard"] == [rank, 2]
        assert manifest["seed"] == 1 == manifest["config"]["features"]["seed"]
    assert json.loads((reference / "run_manifest_0.json").read_text())["seed"] == 1

    seeded = tmp_path / "seeded"
    args = ["-q", "dataset", "folder", str(dataset), "--out", str(seeded), *MODEL, "--seed", "7"]
    assert main(args) == 0
    manifest = json.loads((seeded / "run_manifest_0.json").read_text())
    assert manifest["seed"] == 7 == manifest["config"]["features"]["seed"]
    assert set(pngs(seeded)) == set(pngs(reference))


# ------------------------------------------------------------------------------ out of memory


def _oom(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def _cpu_oom(*args, **kwargs):  # what the CPU allocator raises: a plain RuntimeError
    raise RuntimeError(
        "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
        "memory: you tried to allocate 21474836480 bytes. Error code 12"
    )


@pytest.mark.parametrize(
    ("stage", "raiser"),
    [("extract", _oom), ("upsample", _oom), ("extract", _cpu_oom)],
    ids=["extract-cuda", "upsample-cuda", "extract-cpu"],
)
def test_out_of_memory_is_reraised_with_advice(stage, raiser, tiny, dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(f"zsvss_nb.pipeline.{stage}", raiser)
    out = tmp_path / "out"
    cfg = SegmentConfig.fast().replace(k=3, window=3)
    with pytest.raises(DeviceOutOfMemoryError) as info:
        Segmenter(tiny, cfg).run(dataset / "v0", out, progress=False)
    message = str(info.value)
    assert type(info.value) is DeviceOutOfMemoryError
    assert info.value.__cause__ is not None and "memory" in str(info.value.__cause__)
    assert "out of memory on cpu" in message and "3-frame window" in message
    for advice in ("--window", "modulation_batch", "float16"):
        assert advice in message
    assert not out.exists()


def test_other_runtime_errors_are_not_called_out_of_memory(tiny, dataset, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 9x4)")

    monkeypatch.setattr("zsvss_nb.pipeline.extract", broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied") as info:
        Segmenter(tiny, SegmentConfig.fast().replace(k=3, window=3)).run(
            dataset / "v0", tmp_path / "out", progress=False
        )
    assert type(info.value) is RuntimeError and not (tmp_path / "out").exists()


def test_out_of_memory_exits_2_from_the_cli(dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("zsvss_nb.pipeline.extract", _oom)
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["-q", "segment", str(dataset / "v1"), "--out", str(out), *MODEL]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("zsvss: error: out of memory on cpu")
    assert "--window" in err and not out.exists()
    pred = tmp_path / "pred"
    assert main(["-q", "dataset", "folder", str(dataset), "--out", str(pred), *MODEL]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "modulation_batch" in err
    assert list(pred.glob("*/*.png")) == [] and temp_files(pred) == []
    manifest = json.loads((pred / "run_manifest_0.json").read_text())
    assert manifest["error"]["type"] == "DeviceOutOfMemoryError"

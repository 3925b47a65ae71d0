"""Tests of zsvss_nb.evaluation.compare and zsvss_nb.evaluation.report: which run scores which row,
the comparison on planted videos (resume, shards), the table in Markdown/CSV/LaTeX, the figures, and
a
``zsvss compare`` smoke run with the tiny model on the labelled sample clips in data/."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image

from zsvss_nb import SegmentConfig
from zsvss_nb.backbones.base import AttentionMaps, Backbone, FeatureResult
from zsvss_nb.datasets import open_dataset
from zsvss_nb.errors import ConfigError
from zsvss_nb.evaluation.compare import (
    compare,
    limit_frames,
    mean_result,
    parse_seeds,
    plan,
    run_folder,
    seeded,
    select_videos,
)
from zsvss_nb.evaluation.metrics import EvalResult
from zsvss_nb.evaluation.report import Comparison, ComparisonRow, latex_escape
from zsvss_nb.notebook.viz import read_figure_metadata
from zsvss_nb.run.cli import main

DATA = Path(__file__).resolve().parents[1] / "data"


@dataclass(eq=False)
class Cells(Backbone):
    """Cell colours as features and colour-similarity attention (all but modulation)."""

    size_multiple: ClassVar[int] = 8
    feature_stride: ClassVar[int] = 8
    has_attention_maps: ClassVar[bool] = True

    def extract_features(self, images, geometry, cfg, **options) -> FeatureResult:
        cells = F.avg_pool2d(images, 8).permute(0, 2, 3, 1)
        return FeatureResult(cells, cells, {0: cells}, images, geometry, {"feature_pass": 0.0})

    def attention_maps(self, images, geometry, cfg) -> AttentionMaps:
        cells = F.avg_pool2d(images, 8).permute(0, 2, 3, 1)
        b, h, w, _ = cells.shape
        flat = cells.reshape(b, h * w, 3)
        probs = torch.softmax(-(torch.cdist(flat, flat) ** 2) / 0.01, -1)
        return AttentionMaps(maps=(probs.reshape(b, h, w, h, w),))


def write_dataset(root: Path, videos: int = 2, frames: int = 10) -> Path:
    """Folder-format videos: grey background (class 0), a red square (1) drifting right and a
    blue bar (2) drifting down, on 8-pixel cell boundaries; labels for every frame."""
    for v in range(videos):
        (root / f"v{v}").mkdir(parents=True)
        (root / "labels" / f"v{v}").mkdir(parents=True)
        for t in range(frames):
            img = np.full((48, 96, 3), 120, np.uint8)
            lab = np.zeros((48, 96), np.uint8)
            x = 8 * t + 8 * v
            img[8:24, x : x + 16] = (220, 30, 30)
            lab[8:24, x : x + 16] = 1
            y = 32 + 8 * (t // 8)
            img[y : y + 8, 8:56] = (30, 30, 220)
            lab[y : y + 8, 8:56] = 2
            Image.fromarray(img).save(root / f"v{v}" / f"{t:03d}.png")
            Image.fromarray(lab).save(root / "labels" / f"v{v}" / f"{t:03d}.png")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return open_dataset("folder", write_dataset(tmp_path_factory.mktemp("planted")), num_classes=3)


def cells() -> Cells:
    return Cells("cells", torch.device("cpu"), torch.float32, {"name": "cells"})


CFG = SegmentConfig.fast().replace(k=3, n_init=2, window=4)
METHODS = ["vidseg", "kmeans-frame", "diffseg-frame", "propagate-first-frame"]


# ------------------------------------------------------------------ planning


def test_each_row_scores_the_right_run():
    rows, skipped = plan(METHODS, ["first-frame", "hungarian-frame"])
    assert rows == [
        ("vidseg", "first-frame", True),
        ("propagate-first-frame", "first-frame", True),
        ("vidseg", "hungarian-frame", False),
        ("kmeans-frame", "hungarian-frame", False),
        ("diffseg-frame", "hungarian-frame", False),
        ("propagate-first-frame", "hungarian-frame", True),  # needs GT: scored on its GT run
    ]
    assert [s[:2] for s in skipped] == [
        ("kmeans-frame", "first-frame"),
        ("diffseg-frame", "first-frame"),
    ]
    assert run_folder(Path("o"), "vidseg", True, None) == Path("o/runs/vidseg.first-frame-gt")
    assert run_folder(Path("o"), "vidseg", False, 3) == Path("o/runs-first3/vidseg")


def test_limit_frames_cuts_frames_and_labels(dataset):
    short = limit_frames(dataset, 3)
    assert [len(v.frames) for v in short.videos] == [3, 3]
    assert all(sorted(v.labels) == ["000", "001", "002"] for v in short.videos)
    assert len(dataset.videos[0].frames) == 10  # the original is untouched
    with pytest.raises(ConfigError):
        limit_frames(dataset, 0)


def test_select_videos_keeps_the_named_videos_in_order(dataset):
    names = [v.name for v in dataset.videos]
    assert [v.name for v in select_videos(dataset, names[::-1]).videos] == names
    assert [v.name for v in select_videos(dataset, names[1:]).videos] == names[1:]
    assert select_videos(dataset, None) is dataset
    with pytest.raises(ConfigError, match="not in the dataset"):
        select_videos(dataset, ["nope"])


# ------------------------------------------------------------------ end to end


def test_compare_runs_scores_and_resumes(dataset, tmp_path):
    backbone = cells()
    protocols = ["first-frame", "hungarian", "hungarian-frame", "majority"]
    result = compare(
        dataset, backbone, CFG, METHODS, protocols, tmp_path, vc_ns=(4, 8), progress=False
    )
    assert {(r.method, r.protocol) for r in result.rows} == {
        (m, p) for m, p, _ in plan(METHODS, protocols)[0]
    }
    for r in result.rows:
        assert r.frames == 20 and r.result.num_frames == 20 and r.seconds_per_frame > 0
        assert set(r.result.mvc) == {4, 8}
    ff = {r.method: r.result for r in result.rows if r.protocol == "first-frame"}
    # planted colours are the classes; bilinear upsampling only rounds the squares' corners
    assert ff["propagate-first-frame"].miou > 0.9
    diffseg = next(
        r for r in result.rows if (r.method, r.protocol) == ("diffseg-frame", "majority")
    )
    # three colour regions found per frame; DiffSeg's NMS compares unnormalised proposals,
    # so the 4-cell square (peak 1/4) grows into the background (peak 1/60) by about a cell
    assert diffseg.result.miou > 0.5 and diffseg.result.pixel_acc > 0.85
    pngs = sorted((tmp_path / "runs").glob("*/*/*.png"))
    stamps = {p: p.stat().st_mtime_ns for p in pngs}
    assert len(pngs) == 5 * 20  # runs: vidseg with and without GT, kmeans, diffseg, propagation
    again = compare(
        dataset, backbone, CFG, METHODS, protocols, tmp_path, vc_ns=(4, 8), resume=True,
        progress=False,
    )  # fmt: skip
    assert {p: p.stat().st_mtime_ns for p in pngs} == stamps  # nothing recomputed
    assert [r.result.miou for r in again.rows] == [r.result.miou for r in result.rows]


def test_a_shard_segments_its_share_and_scores_nothing(dataset, tmp_path):
    result = compare(
        dataset, cells(), CFG, ["kmeans-frame"], ["majority"], tmp_path, shard=(0, 2),
        progress=False,
    )  # fmt: skip
    assert result.rows == [] and result.incomplete == [str(tmp_path / "runs" / "kmeans-frame")]
    assert (tmp_path / "runs" / "kmeans-frame" / "v0").is_dir()
    assert not (tmp_path / "runs" / "kmeans-frame" / "v1").exists()
    done = compare(
        dataset, cells(), CFG, ["kmeans-frame"], ["majority"], tmp_path, resume=True,
        progress=False,
    )  # fmt: skip
    assert len(done.rows) == 1 and not done.incomplete


def test_compare_refuses_what_it_cannot_run(dataset, tmp_path):
    with pytest.raises(ConfigError, match="emerdiff-frame needs masked modulation"):
        compare(dataset, cells(), CFG, ["emerdiff-frame"], out=tmp_path)
    with pytest.raises(ConfigError, match="protocols"):
        compare(dataset, cells(), CFG, ["vidseg"], ["per-pixel"], out=tmp_path)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------ the table


def result(miou: float, vc: float, acc: float, protocol: str) -> EvalResult:
    return EvalResult(miou, acc, {8: vc, 16: math.nan}, [miou], protocol, 10, 1, 1)


def table() -> Comparison:
    rows = [
        ComparisonRow("vidseg", "first-frame", True, result(0.5, 0.9, 0.8, "first-frame"), 2.0, 10),
        ComparisonRow("my_method", "first-frame", True, result(0.6, 0.7, 0.7, "ff"), 1.0, 10),
        ComparisonRow("vidseg", "hungarian", False, result(0.3, 0.9, 0.6, "hungarian"), 2.5, 10),
        ComparisonRow("kmeans-frame", "hungarian", False, result(0.4, 0.2, 0.6, "h"), 0.5, 10),
    ]
    meta = {"dataset": "camvid data/camvid", "videos": 2, "model": {"name": "m"}, "config": {}}
    return Comparison(
        rows, [("kmeans-frame", "first-frame", "its ids are per-frame clusters")], meta
    )


def test_the_best_value_of_each_protocol_is_marked():
    t = table()
    best = t.best()
    assert (1, "miou") in best and (0, "mvc8") in best and (0, "pixel_acc") in best
    assert (1, "seconds_per_frame") in best and (3, "seconds_per_frame") in best
    assert (2, "pixel_acc") in best and (3, "pixel_acc") in best  # a tie: both bold
    assert not any(key == "mvc16" for _, key in best)  # nan everywhere: nothing is best


def test_markdown_and_csv():
    t = table()
    md = t.markdown().splitlines()
    assert md[0] == "| method | protocol | GT | mIoU | mVC8 | mVC16 | pixel acc. | s/frame |"
    assert md[2] == "| vidseg | first-frame GT | yes | 50.0 | **90.0** | n/a | **80.0** | 2.00 |"
    assert "Not applicable: kmeans-frame under first-frame" in md[-1]
    rows = list(csv.DictReader(io.StringIO(t.csv())))
    assert len(rows) == 4 and rows[1]["method"] == "my_method"
    assert (
        float(rows[3]["miou"]) == 0.4
        and rows[0]["mvc16"] == ""
        and rows[2]["first_frame_gt"] == "0"
    )


def test_latex_is_a_booktabs_fragment():
    tex = table().latex()
    lines = tex.strip().splitlines()
    assert lines[0].startswith("% camvid")
    assert lines[1] == r"\begin{tabular}{lllrrrrr}"
    assert lines[2] == r"\toprule" and lines[-2] == r"\bottomrule"
    assert lines[-1] == r"\end{tabular}"
    assert lines[3].startswith("Method & Protocol & GT & mIoU & mVC$_{8}$ & mVC$_{16}$")
    assert [ln for ln in lines if ln == r"\midrule"] == [r"\midrule"] * 2  # one per protocol
    body = [ln for ln in lines if ln.endswith(r"\\")][1:]
    assert len(body) == 4 and all(ln.count(" & ") == 7 for ln in body)
    assert r"my\_method" in body[1] and r"\textbf{60.0}" in body[1] and "--" in body[1]
    assert latex_escape("a_b&c%") == r"a\_b\&c\%"


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no LaTeX installed")
def test_latex_compiles(tmp_path):
    (tmp_path / "table.tex").write_text(table().latex())
    (tmp_path / "doc.tex").write_text(
        "\\documentclass{article}\\usepackage{booktabs}\\begin{document}"
        "\\input{table.tex}\\end{document}\n"
    )
    done = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout.decode(errors="replace")[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 0


def test_figures_and_files(tmp_path):
    t = table()
    bars, scatter = t.bar_figure(), t.scatter_figure()
    assert isinstance(bars, Figure) and isinstance(scatter, Figure)
    assert len(bars.axes) == 2 and len(bars.axes[0].patches) == 2 * 3  # 3 methods x 2 protocols
    assert len(scatter.axes[0].collections) == 4  # one marker per row
    assert len(scatter.legends[0].get_texts()) == 3 + 2  # the methods, then the protocols
    paths = t.save(tmp_path)
    names = sorted(p.name for p in paths)
    assert names == sorted(
        [f"comparison.{s}" for s in ("md", "csv", "tex", "json")]
        + [f"comparison_{f}.{s}" for f in ("bars", "scatter") for s in ("pdf", "png")]
    )
    assert read_figure_metadata(tmp_path / "comparison_bars.png")["model"] == {"name": "m"}
    data = json.loads((tmp_path / "comparison.json").read_text())
    assert data["rows"][0]["result"]["mvc16"] is None  # nan written as null
    back = Comparison.from_dict(data)
    assert back.markdown() == t.markdown() and back.latex() == t.latex()


# ------------------------------------------------------------------ the command


def test_zsvss_compare_smoke_run_on_the_sample_clips(tmp_path, capsys):
    """The README's comparison with the tiny model, cut short: every method runs end to end."""
    out = tmp_path / "cmp"
    argv = ["-q", "compare", "camvid", str(DATA / "camvid"), "--model", "tiny", "--out"]
    argv += [str(out), "--max-frames", "3", "--max-side", "64", "--window", "2", "--k", "3"]
    argv += ["--videos", "0016E5_15Hz"]
    argv += ["--set", "n_init=2", "--vc", "2", "--protocol", "first-frame", "--protocol"]
    assert main([*argv, "majority"]) == 0
    text = capsys.readouterr().out
    for method in ("vidseg", "diffseg-frame", "emerdiff-frame", "propagate-first-frame"):
        assert f"| {method} |" in text
    rows = list(csv.DictReader(io.StringIO((out / "comparison.csv").read_text())))
    assert len(rows) == 5 + 8  # first-frame: 4 vidseg variants + propagation; majority: all 8
    assert all(0 <= float(r["miou"]) <= 1 and float(r["seconds_per_frame"]) > 0 for r in rows)
    assert (out / "comparison.tex").read_text().count(r"\midrule") == 2
    assert (out / "comparison_scatter.pdf").stat().st_size > 0
    assert main(["compare", "davis", str(DATA / "davis2016"), "--model", "tiny", "--out",
                 str(out), "--methods", "vidseg,nope"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "method 'nope' is not known" in err[0]


# ------------------------------------------------------------------ seeds


def test_compare_with_seeds_reports_mean_and_spread(dataset, tmp_path):
    protocols = ["hungarian"]
    result = compare(
        dataset, cells(), CFG, ["vidseg", "kmeans-frame"], protocols, tmp_path, vc_ns=(4,),
        progress=False, seeds=[0, 1, 2],
    )  # fmt: skip
    assert {p.name for p in tmp_path.iterdir()} == {"seed0", "seed1", "seed2"}
    singles = [
        compare(
            dataset, cells(), seeded(CFG, s), ["vidseg", "kmeans-frame"], protocols,
            tmp_path / f"seed{s}", vc_ns=(4,), resume=True, progress=False,
        )
        for s in (0, 1, 2)
    ]  # fmt: skip
    for i, row in enumerate(result.rows):
        assert row.seeds == 3 and row.frames == 20
        mious = [single.rows[i].result.miou for single in singles]
        assert row.result.miou == pytest.approx(np.mean(mious))
        assert row.std["miou"] == pytest.approx(np.std(mious))
    md = result.markdown()
    assert " ± " in md and "Mean ± std over 3 seeds" in md
    assert "$\\pm$" in result.latex()
    assert "miou_std" in result.csv().splitlines()[0]
    again = Comparison.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.rows[0].std == pytest.approx(result.rows[0].std) and again.seeds == 3


def test_values_within_the_spread_of_the_best_are_all_marked():
    rows = [
        ComparisonRow("a", "hungarian", False, result(0.50, 0.9, 0.8, "h"), 1.0, 10,
                      {"miou": 0.02}, 3),
        ComparisonRow("b", "hungarian", False, result(0.47, 0.5, 0.8, "h"), 1.0, 10,
                      {"miou": 0.02}, 3),
        ComparisonRow("c", "hungarian", False, result(0.40, 0.5, 0.8, "h"), 1.0, 10,
                      {"miou": 0.02}, 3),
    ]  # fmt: skip
    best = Comparison(rows).best()
    assert (0, "miou") in best and (1, "miou") in best and (2, "miou") not in best
    assert mean_result([result(0.5, 0.9, 0.8, "h")])[1] == {}
    assert parse_seeds("0, 1,2") == [0, 1, 2]
    with pytest.raises(ValueError):
        parse_seeds("x")

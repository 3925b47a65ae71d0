"""Tests of zsvss_nb.notebook.viz.export: paper-ready files (fonts, dpi, sizes) and their
provenance."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from zsvss_nb import SegmentConfig, Segmenter  # noqa: E402
from zsvss_nb.errors import InputError  # noqa: E402
from zsvss_nb.notebook import viz  # noqa: E402
from zsvss_nb.notebook.session import check_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class _Cfg:
    k: int = 20
    blocks: tuple[int, ...] = (6, 7, 8)
    name: str = "paper (sd)"


class _Model:
    identity = {"model_id": "tiny", "sha256": "ab\\c(d", "dtype": "float32"}


def _small_figure() -> Figure:
    return viz.show_frames(np.zeros((2, 8, 8, 3), dtype=np.uint8))


def test_save_figure_writes_formats_and_round_trips_provenance(tmp_path) -> None:
    fig = _small_figure()
    cfg = _Cfg()
    paths = viz.save_figure(fig, tmp_path / "sub" / "fig.v1", config=cfg, model=_Model())
    assert [p.name for p in paths] == ["fig.v1.pdf", "fig.v1.png"]
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["fig.v1.pdf", "fig.v1.png"]
    assert paths[0].read_bytes().startswith(b"%PDF")
    expected_cfg = {"k": 20, "blocks": [6, 7, 8], "name": "paper (sd)"}
    for p in paths:
        meta = viz.read_figure_metadata(p)
        assert meta["config"] == expected_cfg
        assert meta["model"] == _Model.identity
        assert meta["software"].startswith("zsvss ")
    plt.close(fig)


def test_save_figure_dict_config_svg_and_errors(tmp_path) -> None:
    fig = _small_figure()
    config = {"k": 3, "note": "éß (unicode)"}
    model = {"model_id": "sd-2-1-base", "revision": None}
    paths = viz.save_figure(
        fig, tmp_path / "f", config=config, model=model, formats=("png", "pdf", "svg")
    )
    assert len(paths) == 3
    for p in paths:
        meta = viz.read_figure_metadata(p)
        assert meta["config"] == config and meta["model"] == model
    bare = viz.save_figure(fig, tmp_path / "bare", formats=("png",))
    assert viz.read_figure_metadata(bare[0])["config"] is None
    with pytest.raises(InputError):
        viz.save_figure(fig, tmp_path / "x", formats=("jpg",))
    with pytest.raises(InputError):
        viz.save_figure(fig, tmp_path / "x", model=object())
    assert not list(tmp_path.glob(".*tmp"))
    plt.close(fig)


def test_publication_style_sets_and_restores_rcparams() -> None:
    before = matplotlib.rcParams["axes.spines.top"]
    with viz.publication_style():
        assert matplotlib.rcParams["savefig.dpi"] == 300
        assert matplotlib.rcParams["axes.spines.right"] is False
        fig = viz.plot_per_class_iou([0.5, 0.7])
    assert matplotlib.rcParams["axes.spines.top"] == before
    assert fig.axes[0].spines["top"].get_visible() is False
    plt.close(fig)


def pdf_fonts(data: bytes) -> set[bytes]:
    """The /Subtype of every font dictionary in a PDF, and which font files it embeds."""
    kinds = set(re.findall(rb"/Subtype\s*/(Type3|TrueType|Type0|Type1|CIDFontType2)", data))
    kinds |= set(re.findall(rb"/(FontFile2|FontFile3|FontFile)\b", data))
    return kinds


def test_pdf_fonts_are_truetype_png_is_300_dpi_whatever_style_made_the_figure(tmp_path) -> None:
    assert matplotlib.rcParams["pdf.fonttype"] == 3  # matplotlib's default: Type 3 fonts
    fig = viz.plot_per_class_iou({0: 0.5, 1: 0.25}, {0: "sky", 1: "road"}, title="λ ± run")
    pdf, png = viz.save_figure(fig, tmp_path / "bars")
    fonts = pdf_fonts(pdf.read_bytes())
    assert b"Type3" not in fonts
    assert b"FontFile2" in fonts  # TrueType outlines embedded (Type 42, as a CID font)
    with Image.open(png) as img:
        assert img.info["dpi"] == pytest.approx((300, 300), abs=0.5)
    assert matplotlib.rcParams["pdf.fonttype"] == 3  # the style is applied for the save only


@pytest.mark.parametrize("size,width", [("column", viz.COLUMN_WIDTH), ("page", viz.PAGE_WIDTH)])
def test_paper_sizes_set_the_file_width_and_leave_the_figure_alone(tmp_path, size, width) -> None:
    fig = Figure(figsize=(8.0, 4.0), layout="constrained")
    fig.add_subplot().plot([0, 1], [1, 0])
    (png,) = viz.save_figure(fig, tmp_path / size, formats=("png",), size=size)
    with Image.open(png) as img:
        assert img.size[0] == round(width * 300)
        assert abs(img.size[1] - width / 2 * 300) <= 1
    assert tuple(fig.get_size_inches()) == (8.0, 4.0)
    with pytest.raises(InputError):
        viz.save_figure(fig, tmp_path / "x", size="poster")


def test_metadata_names_every_model_with_the_manifests_hash_config_clip_and_commit(
    tmp_path, tiny
) -> None:
    frames = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    cfg = SegmentConfig.fast().replace(window=2, k=2)
    manifest = Segmenter(tiny, cfg).run(frames, tmp_path / "run", progress=False)
    dino = check_model("dinov2-s").load()
    dino_cfg = SegmentConfig.dinov2().replace(max_side=112, k=3)
    dino_manifest = Segmenter(dino, dino_cfg).run(frames, tmp_path / "dino", progress=False)
    fig = viz.show_frames(frames)
    paths = viz.save_figure(
        fig,
        tmp_path / "two",
        models={"tiny (sd)": (tiny, cfg), "dinov2-s": (dino, dino_cfg)},
        clip="data/camvid/0016E5_15Hz/images",
        frames=range(3, 5),
        formats=("pdf", "png", "svg"),
    )
    for path in paths:
        meta = viz.read_figure_metadata(path)
        sd, vit = meta["models"]["tiny (sd)"], meta["models"]["dinov2-s"]
        assert sd["identity"]["sha256"] == manifest["model"]["sha256"]
        assert vit["identity"]["sha256"] == dino_manifest["model"]["sha256"]
        assert sd["identity"] == manifest["model"] and vit["identity"] == dino_manifest["model"]
        assert (sd["preset"], vit["preset"]) == ("fast", "dinov2")  # as run, not "tiny"
        assert vit["changed"] == {"features.max_side": 112, "context.k": 3}
        assert SegmentConfig.from_dict(vit["config"]) == dino_cfg
        assert meta["clip"] == {"source": "data/camvid/0016E5_15Hz/images", "frames": [3, 4]}
        assert meta["zsvss"]["version"] == manifest["zsvss_version"]
        assert meta["versions"]["torch"] == torch.__version__
    git = shutil.which("git")
    if git and (ROOT / ".git").exists():
        head = subprocess.run([git, "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True)
        assert meta["zsvss"]["commit"] == head.stdout.decode().strip()
    single = viz.save_figure(fig, tmp_path / "one", config=cfg, model=tiny, formats=("png",))
    meta = viz.read_figure_metadata(single[0])
    assert meta["model"]["sha256"] == manifest["model"]["sha256"]  # a backbone gets its hash
    assert meta["models"]["tiny"]["preset"] == "fast" and meta["config"]["preset"] == "fast"
    with pytest.raises(InputError):
        viz.save_figure(fig, tmp_path / "bad", models={"m": object()})
    plt.close(fig)

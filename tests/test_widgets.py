"""Tests of zsvss_nb.notebook.widgets: explorers draw on build, redraw on change, cache, and
export."""

from __future__ import annotations

import base64

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from zsvss_nb import SegmentConfig  # noqa: E402
from zsvss_nb.backbones.base import FeatureResult  # noqa: E402
from zsvss_nb.errors import ConfigError, InputError  # noqa: E402
from zsvss_nb.io.video import take_frames  # noqa: E402
from zsvss_nb.notebook import viz, widgets  # noqa: E402
from zsvss_nb.upsample import UpsampleResult  # noqa: E402


def planted_features(b: int = 2, h: int = 4, w: int = 6) -> torch.Tensor:
    """Left half of every frame near e0, right half near e1 (plus small noise): two clusters."""
    gen = torch.Generator().manual_seed(0)
    feats = 0.05 * torch.randn(b, h, w, 8, generator=gen)
    feats[:, :, : w // 2, 0] += 1.0
    feats[:, :, w // 2 :, 1] += 1.0
    return feats


def frames_np(b: int = 2, h: int = 16, w: int = 24) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (b, h, w, 3), dtype=np.uint8)


def fake_result(feats: torch.Tensor, images: torch.Tensor) -> FeatureResult:
    return FeatureResult(
        features=feats,
        refine_features=feats,
        block_features={3: feats[:, ::2, ::2], 7: feats},
        images=images,
        geometry=None,
    )


# -------------------------------------------------------------------------- Explorer


def test_explorer_draws_on_build_and_redraws_on_change(tmp_path) -> None:
    calls = []

    def draw(n: int) -> Figure:
        calls.append(n)
        fig = Figure(figsize=(2, 2))
        fig.add_subplot().plot(range(n))
        return fig

    slider = widgets.widgets.IntSlider(value=2, min=1, max=5)
    ex = widgets.Explorer({"n": slider}, draw)
    assert calls == [2] and ex.values == {"n": 2}
    (out,) = ex.output.outputs
    png = base64.b64decode(out["data"]["image/png"])
    assert png.startswith(b"\x89PNG")
    bundle = ex._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert base64.b64decode(bundle["image/png"]) == png  # static renderers see the figure
    first = ex.figure
    slider.value = 4
    assert calls == [2, 4] and ex.figure is not first
    paths = ex.save(tmp_path / "fig", config={"k": 4}, model={"name": "m"})
    assert [p.suffix for p in paths] == [".pdf", ".png"]
    assert viz.read_figure_metadata(paths[1])["config"] == {"k": 4}


def test_explorer_shows_typed_errors_instead_of_raising_in_callbacks() -> None:
    def draw(k: int) -> Figure:
        if k > 3:
            raise ConfigError(f"k={k} is too large")
        return Figure()

    slider = widgets.widgets.IntSlider(value=1, min=1, max=5)
    ex = widgets.Explorer({"k": slider}, draw)
    slider.value = 5
    (out,) = ex.output.outputs
    assert out["output_type"] == "stream" and "k=5 is too large" in out["text"]
    with pytest.raises(ConfigError):  # at build time the error propagates
        widgets.Explorer({"k": widgets.widgets.IntSlider(value=4, max=5)}, draw)


# -------------------------------------------------------------------------- explorers


def test_similarity_explorer_maps_follow_the_relative_query() -> None:
    feats = planted_features()
    imgs = frames_np()
    ex = widgets.similarity_explorer(feats, imgs)
    assert set(ex.controls) == {"frame", "fy", "fx"}  # the convention of every explorer
    assert isinstance(ex.controls["fy"], widgets.widgets.FloatSlider)
    ex.controls["frame"].value = 1
    ex.controls["fy"].value = 0.0
    ex.controls["fx"].value = 1.0  # the last cell: (0, 5)
    want = viz.cosine_similarity_map(feats, 1, 0, 5)
    got = ex.figure.axes[0].images[1].get_array()
    np.testing.assert_allclose(got, want[0].numpy(), atol=1e-6)
    # the planted structure: the query (right half) is similar to the right half only
    assert got[:, 3:].min() > 0.9 and got[:, :3].max() < 0.2
    assert "cell (y=0, x=5) of 4x6" in ex.figure._suptitle.get_text()
    res = fake_result(feats, torch.rand(2, 3, 16, 24))
    assert widgets.similarity_explorer(res).figure is not None  # frames from the result


def test_kmeans_explorer_shows_the_pipelines_own_clustering_and_caches(monkeypatch) -> None:
    from zsvss_nb import context

    calls = []
    real = context.kmeans

    def counting(x, k, *args, **kw):
        calls.append((k, x.shape[0], args))
        return real(x, k, *args, **kw)

    monkeypatch.setattr(context, "kmeans", counting)
    cfg = SegmentConfig.tiny()  # window scope, n_init 2: what SceneContext.initialise uses
    feats = planted_features()
    ex = widgets.kmeans_explorer(feats, None, ks=range(2, 5), k=2, cfg=cfg)
    assert isinstance(ex.controls["k"], widgets.widgets.IntSlider)
    shown = ex.figure.axes[0].images[0].get_array()  # palette colours of frame 1's labels
    left, right = shown[:, :3].reshape(-1, 3), shown[:, 3:].reshape(-1, 3)
    assert len({tuple(c) for c in left}) == 1 and len({tuple(c) for c in right}) == 1
    assert tuple(left[0]) != tuple(right[0])
    want = context.SceneContext(cfg.context.replace(k=2)).initialise(feats)
    np.testing.assert_array_equal(shown, viz.cluster_palette()[want.numpy()])
    assert calls[0] == (2, 2 * 4 * 6, (cfg.context.n_init, 300, 1e-4, 0))  # window, as run
    ex.controls["k"].value = 3
    ex.controls["k"].value = 2
    assert [c[0] for c in calls] == [2, 2, 3]  # K = 2 came from the cache the second time
    title = ex.figure._suptitle.get_text()
    assert "all tokens of the window" in title and f"n_init {cfg.context.n_init}" in title
    frame1 = cfg.replace(kmeans_scope="frame1")
    one = widgets.kmeans_explorer(feats, frames_np(), ks=(2,), k=2, cfg=frame1)
    assert "frame 1's tokens" in one.figure._suptitle.get_text()


def test_feature_explorer_routes_options_to_config_and_caches(monkeypatch) -> None:
    seen = []

    def fake_extract(backbone, window, cfg, extra_blocks=(), keep_cache=None):
        seen.append((cfg.features.start_step, tuple(extra_blocks), keep_cache))
        return fake_result(planted_features(), torch.rand(2, 3, 16, 24))

    monkeypatch.setattr(widgets, "extract", fake_extract)
    window = torch.zeros(2, 3, 16, 24, dtype=torch.uint8)
    cfg = SegmentConfig.tiny()
    ex = widgets.block_explorer(None, window, cfg, blocks=(3, 7), start_steps=(20, 22))
    assert ex.controls["block"].value == 7 and ex.controls["start_step"].value == 22
    assert seen == [(22, (3, 7), False)]
    ex.controls["block"].value = 3  # same extraction, other block: no new pass
    assert len(seen) == 1
    assert "block 3 (2x3)" in ex.figure._suptitle.get_text()
    ex.controls["start_step"].value = 20
    ex.controls["start_step"].value = 22
    assert [s[0] for s in seen] == [22, 20]
    dino = widgets.dinov2_explorer(None, window, cfg, layers=(-1, 5))
    dino.controls["dinov2_layer"].value = 5
    dino.controls["normalisation"].value = "l2"
    assert set(dino.controls) == {"dinov2_layer", "normalisation", "frame", "fy", "fx"}
    assert dino.figure._suptitle.get_text().startswith("features")  # no backbone: no name
    assert len(seen) == 2 + 3
    with pytest.raises(ConfigError):
        widgets.feature_explorer(None, window, cfg, {"no_such_field": [1]})


def test_feature_explorer_with_tiny_model_extracts_every_block() -> None:
    from zsvss_nb import load_backbone

    backbone = load_backbone("tiny")
    window = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    cfg = SegmentConfig.tiny().replace(start_step=23)
    ex = widgets.block_explorer(backbone, window, cfg, blocks=(3, 7, 11), start_steps=(23, 24))
    ex.controls["block"].value = 11  # stride 8: an 8x8 grid
    assert "block 11 (8x8)" in ex.figure._suptitle.get_text()
    assert "DDPM t=" in ex.figure._suptitle.get_text()


def test_feature_explorer_draws_at_most_eight_frames_around_the_query_frame(monkeypatch) -> None:
    feats = planted_features(b=14)

    def fake_extract(backbone, window, cfg, extra_blocks=(), keep_cache=None):
        return fake_result(feats, torch.rand(14, 3, 16, 24))

    monkeypatch.setattr(widgets, "extract", fake_extract)
    window = torch.zeros(14, 3, 16, 24, dtype=torch.uint8)
    ex = widgets.dinov2_explorer(None, window, SegmentConfig.tiny(), layers=(-1,))

    def titles() -> list[list[str]]:
        rows: dict[int, list[str]] = {}
        for a in ex.figure.axes:
            if a.get_label() != "<colorbar>" and a.get_title():
                rows.setdefault(a.get_subplotspec().rowspan.start, []).append(a.get_title())
        return list(rows.values())

    assert titles() == [[f"frame {t}" for t in range(8)]] * 2  # PCA and similarity rows
    ex.controls["frame"].value = 12  # the slider picks which eight frames are drawn
    assert titles() == [[f"frame {t}" for t in range(6, 14)]] * 2
    ex.controls["frame"].value = 7
    assert titles() == [[f"frame {t}" for t in range(4, 12)]] * 2
    sim_row = [a for a in ex.figure.axes if a.lines]
    assert len(sim_row) == 1 and sim_row[0].get_title() == "frame 7"  # the query's cross
    assert viz.frames_around(5, 3) == [0, 1, 2, 3, 4] and viz.frames_around(20, 0, 3) == [0, 1, 2]


def test_lambda_explorer_modulates_once_per_lambda(monkeypatch) -> None:
    from zsvss_nb import upsample

    lams = []
    coarse = torch.tensor([[[0, 1], [1, 1]], [[0, 0], [1, 1]]])

    def fake_modulate(backbone, feats, coarse_in, cfg, classes=None):
        lams.append(cfg.upsample.lam)
        labels = torch.zeros(2, 16, 24, dtype=torch.long)
        diff = torch.rand(2, 2, 16, 24, generator=torch.Generator().manual_seed(0))
        return UpsampleResult(
            labels=labels, classes=torch.tensor([0, 1]), raw_labels=labels + 1, diff=diff
        )

    monkeypatch.setattr(upsample, "modulate", fake_modulate)
    res = fake_result(planted_features(), torch.rand(2, 3, 16, 24))
    cfg = SegmentConfig.tiny()
    ex = widgets.lambda_explorer(None, res, coarse, cfg, lams=(10, 50))
    assert lams == [50.0]
    assert isinstance(ex.controls["lam"], widgets.widgets.Dropdown)  # no ignored typed values
    ex.controls["frame"].value = 1
    ex.controls["lam"].value = 10.0
    ex.controls["lam"].value = 50.0
    assert lams == [50.0, 10.0]
    seeded = widgets.lambda_explorer(
        None,
        res,
        coarse,
        cfg,
        lams=(10, 50),
        precomputed={50: fake_modulate(None, res, coarse, cfg)},
    )
    assert lams == [50.0, 10.0, 50.0] and seeded.figure is not None  # only the seeding call
    titles = [a.get_title() for a in ex.figure.axes]
    assert "raw argmax D" in titles and "filtered" in titles and "0" in titles
    assert ex.figure.legends  # the class colours are named


def test_context_explorer_runs_each_memory_mode_once(monkeypatch) -> None:
    from zsvss_nb import pipeline
    from zsvss_nb.pipeline import FrameResult

    cfgs = []

    class FakeSegmenter:
        def __init__(self, backbone, cfg):
            cfgs.append(cfg)

        def segment(self, video, first_frame_gt=None, return_debug=False, progress=True):
            for i in range(3):
                coarse = torch.full((2, 3), i % 2)
                yield FrameResult(
                    index=i,
                    labels=torch.zeros(8, 12, dtype=torch.long),
                    frame=torch.zeros(3, 8, 12, dtype=torch.uint8),
                    coarse=coarse,
                    refined=torch.zeros(2, 3, dtype=torch.long),
                )

    monkeypatch.setattr(pipeline, "Segmenter", FakeSegmenter)
    ex = widgets.context_explorer(None, "video", SegmentConfig.tiny().replace(window=2))
    ex.controls["memory"].value = "bank"
    ex.controls["memory"].value = "last"
    assert [c.context.memory for c in cfgs] == ["last", "bank"]
    assert all(c.upsample.method == "bilinear" for c in cfgs)
    # coarse alternates every frame: flicker 1; refined is constant: flicker 0
    assert "coarse (KNN) 1.000, refined 0.000" in ex.figure._suptitle.get_text()


def shifting_features(b: int = 4, h: int = 6, w: int = 8, shift: int = 2) -> torch.Tensor:
    """A pattern that moves ``shift`` cells right per frame (one-hot per column, wrapped)."""
    cols = (torch.arange(w)[None, :] - shift * torch.arange(b)[:, None]) % w  # [B, w]
    feats = torch.zeros(b, h, w, h * w)
    rows = torch.arange(h)[None, :, None].expand(b, h, w)
    feats[
        torch.arange(b)[:, None, None],
        rows,
        torch.arange(w)[None, None, :],
        rows * w + cols[:, None, :],
    ] = 1
    return feats


def surviving_loop(positions: torch.Tensor, hop: int) -> int:
    kept = 0
    for n in range(positions.shape[1]):
        steps = [
            (positions[t + 1, n] - positions[t, n]).abs().max()
            for t in range(positions.shape[0] - 1)
        ]
        kept += all(int(s) <= hop for s in steps)
    return kept


def test_refine_explorer_counts_surviving_tracks_per_hop_threshold() -> None:
    from zsvss_nb.refine import refine, track

    feats = shifting_features()
    res = fake_result(feats, torch.rand(4, 3, 24, 32))
    coarse = torch.randint(0, 3, (4, 6, 8), generator=torch.Generator().manual_seed(0))
    cfg = SegmentConfig.tiny()
    ex = widgets.refine_explorer(res, coarse, cfg, frames=frames_np(4, 24, 32))
    assert isinstance(ex.controls["hop"], widgets.widgets.IntSlider)
    assert set(ex.controls) == {"hop", "fy", "fx"}
    positions = track(feats, cfg.refine).positions
    for hop in (1, 2, 0, 3):
        ex.controls["hop"].value = hop
        kept = surviving_loop(positions, hop)
        title = ex.figure._suptitle.get_text()
        assert f"{kept} of 48 tracks survive" in title
    ex.controls["hop"].value = 1
    assert (
        "0 of 48" in ex.figure._suptitle.get_text() and "dropped" in ex.figure._suptitle.get_text()
    )
    ex.controls["hop"].value = 2  # the pattern moves 2 cells a frame: tracks that do not wrap
    ex.controls["fx"].value = 0.0  # around the right edge (columns 0 and 1) all survive
    title = ex.figure._suptitle.get_text()
    assert "12 of 48" in title and "cell (y=3, x=0) kept" in title
    refined = refine(coarse, feats, cfg.refine.replace(hop_threshold=2))
    bottom = [a for a in ex.figure.axes if a.get_title().startswith("refined")]
    assert len(bottom) == 4
    pal = viz.cluster_palette()
    want = viz.overlay(frames_np(4, 24, 32)[3], viz.resize_labels(refined[3], (24, 32)), 0.5, pal)
    np.testing.assert_array_equal(bottom[3].images[0].get_array(), want)


def test_explorers_carry_a_static_copy_for_exports_without_widgets(monkeypatch) -> None:
    from zsvss_nb.notebook import explorer

    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj, raw=False: shown.append(obj))
    ex = widgets.similarity_explorer(planted_features(), frames_np())
    assert explorer.EXPLORER_CLASS in ex._dom_classes
    ex._ipython_display_()
    live, static = shown
    assert "application/vnd.jupyter.widget-view+json" in live
    html = static["text/html"]
    assert f'class="{explorer.STATIC_CLASS}"' in html
    assert base64.b64encode(ex._png).decode("ascii") in html
    assert f":has(.{explorer.EXPLORER_CLASS})" in html  # hidden where the live widget renders


# -------------------------------------------------------------------------- take_frames


def test_take_frames_keeps_names_of_a_frame_folder(tmp_path) -> None:
    for i in range(7):
        Image.fromarray(np.full((8, 8, 3), 10 * i, np.uint8)).save(tmp_path / f"img{i}.png")
    clip = take_frames(tmp_path, 3, start=1, step=2)
    assert clip.names == ["img1", "img3", "img5"]
    assert clip.read([2])[0, 0, 0, 0].item() == 50
    assert take_frames(tmp_path, None).names == [f"img{i}" for i in range(7)]
    with pytest.raises(InputError):
        take_frames(tmp_path, 2, start=7)
    with pytest.raises(ConfigError):
        take_frames(tmp_path, 0)


def test_take_frames_of_an_array_keeps_pixels_and_divides_fps() -> None:
    frames = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 3, 8, 8).contiguous()
    from zsvss_nb import open_video

    clip = take_frames(open_video(frames, fps=30.0), 2, step=3)
    assert len(clip) == 2 and clip.fps == 10.0
    assert clip.read([0, 1])[:, 0, 0, 0].tolist() == [0, 3]


def test_static_html_export_of_an_executed_notebook_shows_each_explorer(tmp_path) -> None:
    """``jupyter nbconvert --execute --to html`` stores the widget state, so the page shows the
    live widget only where its JavaScript loads; the static copy shows the figure regardless."""
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    code = (
        "import torch\nfrom zsvss_nb.notebook import widgets\n"
        "widgets.similarity_explorer(torch.randn(2, 4, 6, 8))"
    )
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    assert "application/vnd.jupyter.widget-state+json" in nb.metadata["widgets"]
    html, _ = HTMLExporter().from_notebook_node(nb)
    static = html[html.index('class="zsvss-static"') :]
    assert 'src="data:image/png;base64,' in static[: static.index("</figure>")]

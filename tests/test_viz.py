"""Tests of zsvss_nb.notebook.viz: colours, overlays, feature images, plots and figure
provenance."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from zsvss_nb.errors import InputError, LabelError  # noqa: E402
from zsvss_nb.notebook import viz  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"


def voc_colour_loop(i: int) -> tuple[int, int, int]:
    """PASCAL VOC colour of id ``i``, one bit at a time."""
    r = g = b = 0
    c = i
    for j in range(8):
        r |= ((c >> 0) & 1) << (7 - j)
        g |= ((c >> 1) & 1) << (7 - j)
        b |= ((c >> 2) & 1) << (7 - j)
        c >>= 3
    return r, g, b


def rng_frame(h: int = 12, w: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- colours


def test_palette_matches_voc_loop_and_is_deterministic() -> None:
    pal = viz.palette(256)
    assert pal.dtype == np.uint8 and pal.shape == (256, 3)
    np.testing.assert_array_equal(pal, viz.palette(256))
    for i in range(255):
        assert tuple(pal[i]) == voc_colour_loop(i)
    # known VOC colours: background, aeroplane, person
    assert tuple(pal[0]) == (0, 0, 0)
    assert tuple(pal[1]) == (128, 0, 0)
    assert tuple(pal[15]) == (192, 128, 128)
    assert tuple(pal[255]) == (255, 255, 255)
    np.testing.assert_array_equal(viz.palette(10), pal[:10])


def test_palette_first_32_distinct_and_void_unique() -> None:
    pal = viz.palette(256)
    assert len({tuple(c) for c in pal[:32]}) == 32
    assert len({tuple(c) for c in pal}) == 256
    with pytest.raises(InputError):
        viz.palette(0)
    with pytest.raises(InputError):
        viz.palette(257)


def test_colorize_round_trips_ids_through_png(tmp_path) -> None:
    labels = torch.tensor([[0, 1, 2, 255], [31, 7, 0, 200]], dtype=torch.long)
    img = viz.colorize(labels)
    assert img.mode == "P"
    np.testing.assert_array_equal(np.array(img), labels.numpy())
    img.save(tmp_path / "l.png")
    back = Image.open(tmp_path / "l.png")
    assert back.mode == "P"
    np.testing.assert_array_equal(np.array(back), labels.numpy())
    np.testing.assert_array_equal(np.array(back.convert("RGB")), viz.palette()[labels.numpy()])


def test_colorize_rejects_bad_ids() -> None:
    with pytest.raises(LabelError):
        viz.colorize(np.array([[0, 256]]))
    with pytest.raises(LabelError):
        viz.colorize(np.array([[-1, 0]]))
    with pytest.raises(LabelError):
        viz.colorize(np.zeros((2, 2, 2), dtype=np.int64))


def test_overlay_matches_loop_reference() -> None:
    frame = rng_frame()
    labels = np.random.default_rng(1).integers(0, 6, frame.shape[:2])
    alpha = 0.3
    out = viz.overlay(frame, labels, alpha)
    assert out.shape == frame.shape and out.dtype == np.uint8
    pal = viz.palette()
    ref = np.zeros_like(frame)
    for y in range(frame.shape[0]):
        for x in range(frame.shape[1]):
            for c in range(3):
                v = (1 - alpha) * float(frame[y, x, c]) + alpha * float(pal[labels[y, x], c])
                ref[y, x, c] = int(v + 0.5)
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1


def test_overlay_alpha_zero_and_one_and_chw_tensor() -> None:
    frame = rng_frame()
    labels = np.random.default_rng(2).integers(0, 6, frame.shape[:2])
    np.testing.assert_array_equal(viz.overlay(frame, labels, alpha=0.0), frame)
    np.testing.assert_array_equal(viz.overlay(frame, labels, alpha=1.0), viz.palette()[labels])
    chw = torch.from_numpy(frame).permute(2, 0, 1).float() / 255.0
    out = viz.overlay(chw, torch.from_numpy(labels), alpha=0.0)
    np.testing.assert_array_equal(out, frame)
    with pytest.raises(LabelError):
        viz.overlay(frame, labels[:-1])
    with pytest.raises(InputError):
        viz.overlay(frame, labels, alpha=1.5)


@pytest.mark.parametrize("h,w", [(12, 16), (13, 17), (7, 9)])
def test_overlay_panel_even_dims_and_layout(h: int, w: int) -> None:
    frame = rng_frame(h, w)
    labels = np.random.default_rng(3).integers(0, 12, (h, w))
    labels[0, 0] = 255
    panel = viz.overlay_panel(frame, labels, {0: "road", 1: "sky"})
    assert panel.dtype == np.uint8 and panel.ndim == 3 and panel.shape[2] == 3
    assert panel.shape[0] % 2 == 0 and panel.shape[1] % 2 == 0
    assert panel.shape[1] >= 3 * w and panel.shape[0] > h
    np.testing.assert_array_equal(panel[:h, :w], frame)
    np.testing.assert_array_equal(panel[:h, w : 2 * w], viz.palette()[labels])
    np.testing.assert_array_equal(panel[:h, 2 * w : 3 * w], viz.overlay(frame, labels))
    bare = viz.overlay_panel(frame, labels, legend=False)
    assert bare.shape == (h + h % 2, 3 * w + (3 * w) % 2, 3)


# ----------------------------------------------------------------------------- feature images


def test_feature_pca_separates_planted_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    c = 16
    centre_a, centre_b = torch.zeros(c), torch.zeros(c)
    centre_a[0], centre_b[0] = 5.0, -5.0
    feats = torch.randn(2, 4, 5, c, generator=g) * 0.1
    feats[0] += centre_a
    feats[1] += centre_b
    feats[1, 2, 3] = feats[0, 1, 1]  # an identical token in the other frame
    feats[0, 3, 4] = feats[0, 0, 0]
    rgb = viz.feature_pca_rgb(feats)
    assert rgb.shape == (2, 4, 5, 3)
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    torch.testing.assert_close(rgb[1, 2, 3], rgb[0, 1, 1])
    torch.testing.assert_close(rgb[0, 3, 4], rgb[0, 0, 0])
    mask1 = torch.ones(4, 5, dtype=torch.bool)
    mask1[2, 3] = False
    mean_a = rgb[0].reshape(-1, 3).mean(0)
    mean_b = rgb[1][mask1].mean(0)
    assert torch.linalg.vector_norm(mean_a - mean_b) > 0.7
    # the first component carries the cluster axis: one cluster near 0, the other near 1
    assert {round(float(mean_a[0])), round(float(mean_b[0]))} == {0, 1}


def test_feature_pca_channels_follow_principal_axes() -> None:
    g = torch.Generator().manual_seed(1)
    scales = torch.tensor([6.0, 3.0, 1.5, 0.2, 0.1, 0.05])
    x = torch.randn(3, 10, 10, 6, generator=g) * scales
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g))
    feats = x @ q.T + 20.0  # rotated axes and an offset: the PCA must centre first
    rgb = viz.feature_pca_rgb(feats).reshape(-1, 3)
    latent = x.reshape(-1, 6)
    for i in range(3):
        r = torch.corrcoef(torch.stack([rgb[:, i], latent[:, i]]))[0, 1]
        assert abs(float(r)) > 0.95


def test_feature_pca_fit_on_first_and_options() -> None:
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(3, 4, 4, 8, generator=g)
    feats[1:] += 100.0  # far from frame 0: clamps when fit on frame 0 only
    first = viz.feature_pca_rgb(feats, fit_on="first")
    assert first.shape == (3, 4, 4, 3) and first.min() >= 0 and first.max() <= 1
    assert not torch.allclose(first, viz.feature_pca_rgb(feats, fit_on="all"))
    grey = viz.feature_pca_rgb(feats, n_components=1)
    torch.testing.assert_close(grey[..., 0], grey[..., 2])
    two = viz.feature_pca_rgb(feats, n_components=2)
    assert torch.all(two[..., 2] == 0)
    with pytest.raises(InputError):
        viz.feature_pca_rgb(feats[0])
    with pytest.raises(InputError):
        viz.feature_pca_rgb(feats, fit_on="last")  # type: ignore[arg-type]


def test_cosine_map_matches_loop_reference() -> None:
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(3, 4, 5, 7, generator=g)
    sim = viz.cosine_similarity_map(feats, frame=1, y=2, x=3)
    assert sim.shape == (3, 4, 5)
    assert float(sim[1, 2, 3]) == pytest.approx(1.0, abs=1e-6)
    assert sim.min() >= -1.0 and sim.max() <= 1.0
    q = feats[1, 2, 3]
    for b in range(3):
        for y in range(4):
            for x in range(5):
                f = feats[b, y, x]
                ref = float(f @ q) / (float(f.norm()) * float(q.norm()))
                assert float(sim[b, y, x]) == pytest.approx(ref, abs=1e-5)
    with pytest.raises(InputError):
        viz.cosine_similarity_map(feats, frame=0, y=4, x=0)


# ----------------------------------------------------------------------------- figures


def test_plot_helpers_return_figures() -> None:
    g = torch.Generator().manual_seed(4)
    frames = torch.rand(3, 3, 16, 24, generator=g)
    labels = torch.randint(0, 4, (3, 16, 24), generator=g)
    feats = torch.randn(3, 4, 6, 8, generator=g)
    sims = viz.cosine_similarity_map(feats, 0, 1, 2)
    figs = [
        viz.show_frames(frames, titles=["a", "b", "c"], ncols=2),
        viz.show_labels(labels[0]),
        viz.show_labels(labels[0], frame=frames[0], alpha=0.4, class_names={0: "road"}),
        viz.show_similarity(sims, frames, point=(0, 1, 2)),
        viz.show_similarity(sims, None, point=(0, 1, 2)),
        viz.show_difference_maps(torch.rand(3, 16, 24, generator=g), [0, 2, 5]),
        viz.plot_per_class_iou({0: 0.5, 3: float("nan"), 7: 0.25}, {0: "road", 7: "car"}),
        viz.qualitative_strip(frames, labels, labels, every=2),
        viz.qualitative_strip(frames, None, labels),
    ]
    for fig in figs:
        assert isinstance(fig, Figure)
    strip = figs[7]
    assert len(strip.axes) == 3 * 2  # rows frame/GT/prediction, columns t = 0, 2
    iou_ax = figs[6].axes[0]
    assert len(iou_ax.patches) == 2  # the NaN class is left out
    for fig in figs:
        plt.close(fig)


def test_plot_helpers_draw_into_given_axes() -> None:
    fig, (a0, a1) = plt.subplots(1, 2)
    frames = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    assert viz.show_labels(np.zeros((8, 8), dtype=np.int64), ax=a0) is fig
    assert viz.show_frames(frames, ncols=2, ax=a1) is fig
    assert len(fig.axes) == 1 + 4  # a1 replaced by a 2x2 grid
    plt.close(fig)
    fig2, axes = plt.subplots(2, 2)
    assert viz.show_frames(frames[:3], ncols=2, ax=axes) is fig2
    plt.close(fig2)


def test_plot_tracks_draws_valid_tracks_in_pixels() -> None:
    b, n = 3, 6
    frames = np.zeros((b, 32, 64, 3), dtype=np.uint8)
    pos = torch.zeros(b, n, 2, dtype=torch.long)
    pos[:, :, 0] = torch.arange(n) % 2  # y cell
    pos[:, :, 1] = torch.arange(n)[None] + torch.arange(b)[:, None]  # x moves one cell a frame
    valid = torch.tensor([True, False, True, True, False, True])
    fig = viz.plot_tracks(frames, pos, valid, grid_hw=(2, 8), max_tracks=3)
    assert isinstance(fig, Figure)
    last = fig.axes[b - 1]
    (lines,) = [c for c in last.collections if isinstance(c, LineCollection)]
    segs = lines.get_segments()
    assert len(segs) == 3  # 4 valid tracks, thinned to 3: ids 0, 3, 5
    # track 0: y cell 0, x cells 0, 1, 2 on a 2x8 grid over 32x64 px: centres at (x+0.5)*8
    np.testing.assert_allclose(segs[0], [[4.0, 8.0], [12.0, 8.0], [20.0, 8.0]])
    np.testing.assert_allclose(segs[2][:, 0], [(5 + t + 0.5) * 8 for t in range(b)])
    plt.close(fig)
    with pytest.raises(InputError):
        viz.plot_tracks(frames, pos[:2], valid, grid_hw=(2, 8))


# ----------------------------------------------------------------------------- notebook panels


def resize_labels_loop(lab: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = lab.shape
    out = np.zeros(size, dtype=np.int64)
    for i in range(size[0]):
        for j in range(size[1]):
            y = min(int((i + 0.5) * h / size[0]), h - 1)
            x = min(int((j + 0.5) * w / size[1]), w - 1)
            out[i, j] = lab[y, x]
    return out


def boundary_box_loop(lab: np.ndarray, bh: int, bw: int) -> tuple[int, int, int, int]:
    h, w = lab.shape
    edge = np.zeros((h, w), dtype=bool)
    for y in range(h):
        for x in range(w):
            edge[y, x] = (x + 1 < w and lab[y, x] != lab[y, x + 1]) or (
                y + 1 < h and lab[y, x] != lab[y + 1, x]
            )
    best, arg = -1, (0, 0)
    for y in range(h - bh + 1):
        for x in range(w - bw + 1):
            s = int(edge[y : y + bh, x : x + bw].sum())
            if s > best:
                best, arg = s, (y, x)
    return arg[0], arg[1], arg[0] + bh, arg[1] + bw


@pytest.mark.parametrize("size", [(7, 9), (12, 16), (3, 5), (24, 8)])
def test_resize_labels_matches_loop(size) -> None:
    lab = np.random.default_rng(1).integers(0, 6, (4, 6))
    np.testing.assert_array_equal(viz.resize_labels(lab, size), resize_labels_loop(lab, size))
    batch = viz.resize_labels(torch.as_tensor(np.stack([lab, lab + 1])), size)
    assert batch.shape == (2, *size)
    np.testing.assert_array_equal(batch[1], resize_labels_loop(lab + 1, size))
    with pytest.raises(LabelError):
        viz.resize_labels(np.zeros((2, 2)), size)  # float ids


def test_resize_labels_integer_factor_repeats_cells() -> None:
    lab = np.array([[0, 1], [2, 3]])
    np.testing.assert_array_equal(viz.resize_labels(lab, (4, 6)), lab.repeat(2, 0).repeat(3, 1))


def test_relative_cell_picks_the_same_place_on_any_grid() -> None:
    assert viz.relative_cell((0.0, 0.0), (4, 8)) == (0, 0)
    assert viz.relative_cell((1.0, 1.0), (4, 8)) == (3, 7)
    assert viz.relative_cell((0.5, 0.26), (4, 8)) == (2, 2)
    assert viz.relative_cell((0.5, 0.26), (8, 16)) == (4, 4)
    with pytest.raises(InputError):
        viz.relative_cell((1.2, 0.0), (4, 4))


def test_boundary_box_matches_loop_and_finds_planted_edges() -> None:
    rng = np.random.default_rng(2)
    for _ in range(5):
        lab = rng.integers(0, 3, (9, 11))
        assert viz.boundary_box(lab, (4, 5)) == boundary_box_loop(lab, 4, 5)
    planted = np.zeros((40, 60), dtype=np.int64)
    planted[20:30, 40:50] = np.indices((10, 10)).sum(0) % 2  # a checkerboard patch
    y0, x0, y1, x1 = viz.boundary_box(planted, (10, 10))
    assert (y1 - y0, x1 - x0) == (10, 10)
    assert abs(y0 - 20) <= 1 and abs(x0 - 40) <= 1
    assert viz.boundary_box(planted, (100, 100)) == (0, 0, 40, 60)  # clipped to the frame


def test_show_label_maps_overlays_resized_maps_on_each_frame() -> None:
    frame = rng_frame(8, 12)
    coarse = np.array([[0, 1, 2], [3, 4, 5]])
    fine = np.random.default_rng(3).integers(0, 4, (8, 12))
    fig = viz.show_label_maps(frame, [coarse, fine], titles=["coarse", "fine"], alpha=0.5)
    a0, a1 = fig.axes[:2]
    clusters = viz.cluster_palette()
    np.testing.assert_array_equal(
        a0.images[0].get_array(),
        viz.overlay(frame, resize_labels_loop(coarse, (8, 12)), 0.5, clusters),
    )
    np.testing.assert_array_equal(a1.images[0].get_array(), viz.overlay(frame, fine, 0.5, clusters))
    assert a0.get_title() == "coarse"
    (legend,) = fig.legends  # one legend for the figure, below the panels
    assert [t.get_text() for t in legend.get_texts()] == [str(i) for i in range(6)]
    plain = viz.show_label_maps(None, torch.as_tensor(coarse)[None], legend=False)
    np.testing.assert_array_equal(plain.axes[0].images[0].get_array(), clusters[coarse])
    assert not plain.legends
    camvid = viz.show_label_maps(frame, [coarse], colours="camvid", legend=False)
    np.testing.assert_array_equal(
        camvid.axes[0].images[0].get_array(),
        viz.overlay(frame, resize_labels_loop(coarse, (8, 12)), 0.5, viz.dataset_palette("camvid")),
    )
    with pytest.raises(InputError):
        viz.show_label_maps(np.stack([frame] * 3), [coarse, fine])


def test_show_label_rows_one_row_per_stage_and_union_legend() -> None:
    frames = np.stack([rng_frame(8, 8, s) for s in range(3)])
    rows = {"a": np.zeros((3, 2, 2), np.int64), "b": np.full((3, 2, 2), 7, np.int64)}
    fig = viz.show_label_rows(frames, rows)
    axes = np.array(fig.axes).reshape(2, 3)
    assert axes[0, 0].get_ylabel() == "a" and axes[1, 0].get_ylabel() == "b"
    assert axes[0, 2].get_title() == "frame 2" and axes[1, 2].get_title() == ""
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert texts == ["0", "7"]
    with pytest.raises(InputError):
        viz.show_label_rows(frames, {"a": rows["a"], "b": rows["b"][:2]})


def test_show_feature_pca_shows_the_joint_projection() -> None:
    feats = torch.randn(2, 3, 4, 8, generator=torch.Generator().manual_seed(0))
    fig = viz.show_feature_pca(feats, titles=["x", "y"])
    want = viz.feature_pca_rgb(feats).numpy()
    got = fig.axes[1].images[0].get_array()
    np.testing.assert_array_equal(got, (np.clip(want[1], 0, 1) * 255 + 0.5).astype(np.uint8))
    assert fig.axes[1].get_title() == "y"


def test_show_feature_views_queries_each_model_at_the_same_relative_point() -> None:
    frames = np.stack([rng_frame(32, 64, s) for s in range(2)])
    coarse = torch.randn(2, 2, 4, 5, generator=torch.Generator().manual_seed(1))
    fine = torch.randn(2, 4, 8, 3, generator=torch.Generator().manual_seed(2))
    fig = viz.show_feature_views({"A": coarse, "B": fine}, frames, point=(1, 0.9, 0.3))
    grid = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    assert len(grid) == 4 * 2
    sim_b = grid[3 * 2 + 1]  # model B, similarity row, frame 1
    y, x = viz.relative_cell((0.9, 0.3), (4, 8))
    np.testing.assert_allclose(
        sim_b.images[1].get_array(), viz.cosine_similarity_map(fine, 1, y, x)[1].numpy(), atol=1e-6
    )
    (marker,) = sim_b.lines
    np.testing.assert_allclose(marker.get_xydata()[0], [(x + 0.5) * 64 / 8, (y + 0.5) * 32 / 4])
    assert grid[0].get_ylabel() == "A\nPCA" and grid[6].get_ylabel() == "B\nsimilarity"
    with pytest.raises(InputError):
        viz.show_feature_views({"A": coarse[:1]}, frames)


def test_show_zoom_crops_every_labelling_to_the_box() -> None:
    frame = rng_frame(16, 20)
    fine = np.random.default_rng(4).integers(0, 3, (16, 20))
    coarse = np.array([[0, 1], [1, 2]])
    fig = viz.show_zoom(frame, {"fine": fine, "coarse": coarse}, (4, 6, 12, 16))
    np.testing.assert_array_equal(
        fig.axes[1].images[0].get_array(), viz.overlay(frame, fine, 0.5, "clusters")[4:12, 6:16]
    )
    full = resize_labels_loop(coarse, (16, 20))
    np.testing.assert_array_equal(
        fig.axes[2].images[0].get_array(), viz.overlay(frame, full, 0.5, "clusters")[4:12, 6:16]
    )
    (rect,) = fig.axes[0].patches
    assert (rect.get_x(), rect.get_y(), rect.get_width(), rect.get_height()) == (6, 4, 10, 8)
    with pytest.raises(InputError):
        viz.show_zoom(frame, {"fine": fine}, (4, 6, 40, 16))


def test_show_images_sizes_the_figure_by_the_aspect_ratio() -> None:
    panels = [rng_frame(30, 90, s) for s in range(3)]
    fig = viz.show_images(panels, titles=["a", "b", "c"], width=9.0)
    w, h = fig.get_size_inches()
    assert w == pytest.approx(9.0) and h == pytest.approx(3 * (3.0 + 0.3))
    assert [a.get_title() for a in fig.axes] == ["a", "b", "c"]
    np.testing.assert_array_equal(fig.axes[2].images[0].get_array(), panels[2])
    with pytest.raises(InputError):
        viz.show_images([])


def test_cross_frame_similarity_and_matrices_figure() -> None:
    feats = torch.randn(3, 2, 4, 5, generator=torch.Generator().manual_seed(0))
    sim = viz.cross_frame_similarity(feats)
    assert sim.shape == (3, 3)
    torch.testing.assert_close(torch.diagonal(sim), torch.ones(3))
    fig = viz.show_similarity_matrices({"A": feats, "B": feats[:2]})
    assert isinstance(fig, Figure) and len(fig.axes) == 2 + 1  # two heat maps and a colour bar
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), sim.numpy())


# ----------------------------------------------------------------------------- palettes


def test_cluster_palette_gives_every_id_a_visible_distinct_colour() -> None:
    pal = viz.cluster_palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    assert pal[0].max() > 0  # id 0 is a colour, not black
    assert (pal[:255].max(axis=1) > 0).all()  # no cluster id is black
    assert len({tuple(c) for c in pal[:20]}) == 20
    assert tuple(pal[255]) == viz.VOID_COLOUR
    np.testing.assert_array_equal(pal[20:255], viz.palette()[20:255])
    np.testing.assert_array_equal(viz.resolve_palette(None), pal)
    np.testing.assert_array_equal(viz.resolve_palette("clusters"), pal)
    np.testing.assert_array_equal(viz.resolve_palette("voc"), viz.palette())


def test_dataset_palettes_are_the_datasets_own_colours(tmp_path) -> None:
    camvid = viz.dataset_palette("camvid")
    assert tuple(camvid[0]) == (128, 128, 128)  # sky is grey, not black
    assert tuple(camvid[3]) == (128, 64, 128) and tuple(camvid[10]) == (0, 128, 192)
    assert tuple(camvid[11]) == (0, 0, 0)  # void, as SegNet draws it
    city = viz.dataset_palette("cityscapes")
    assert tuple(city[0]) == (128, 64, 128) and tuple(city[18]) == (119, 11, 32)
    np.testing.assert_array_equal(viz.dataset_palette("davis"), viz.palette())
    # VSPW / DAVIS 2017 masks carry their palette: the dataset's own colours are read from it
    stored = np.random.default_rng(0).integers(0, 256, (256, 3), dtype=np.uint8)
    mask = Image.fromarray(np.zeros((4, 4), np.uint8), mode="P")
    mask.putpalette(stored.reshape(-1).tolist())
    mask.save(tmp_path / "00000.png")
    video = dataclasses.make_dataclass("V", ["labels"])({"00000": tmp_path / "00000.png"})
    dataset = dataclasses.make_dataclass("D", ["name", "videos"])("vspw", [video])
    np.testing.assert_array_equal(viz.dataset_palette(dataset), stored)
    np.testing.assert_array_equal(viz.resolve_palette("camvid"), camvid)
    short = viz.resolve_palette([(1, 2, 3)])
    assert tuple(short[0]) == (1, 2, 3) and tuple(short[1]) == tuple(viz.cluster_palette()[1])
    with pytest.raises(InputError):
        viz.resolve_palette("rainbow")
    with pytest.raises(InputError):
        viz.resolve_palette(np.zeros((3, 4)))


# ----------------------------------------------------------------------------- layout


def spread_loop(count: int, max_count: int) -> list[int]:
    if count <= max_count:
        return list(range(count))
    step = (count - 1) / (max_count - 1)
    return sorted({int(round(i * step)) for i in range(max_count)})


@pytest.mark.parametrize("count,max_count", [(3, 8), (8, 8), (30, 8), (9, 8), (14, 4), (50, 7)])
def test_spread_indices_keeps_ends_and_spreads_evenly(count, max_count) -> None:
    got = viz.spread_indices(count, max_count)
    assert got == spread_loop(count, max_count)
    assert got[0] == 0 and got[-1] == count - 1 and len(got) <= max_count


def _panel_sizes(fig: Figure) -> list[tuple[int, int]]:
    fig.draw_without_rendering()  # runs the layout and each Axes' aspect adjustment
    boxes = [a.get_window_extent() for a in fig.axes if a.images]
    return [(round(b.width), round(b.height)) for b in boxes]


def test_label_rows_wrap_long_clips_and_the_legend_never_resizes_a_panel() -> None:
    frames = np.stack([rng_frame(36, 48, s) for s in range(30)])
    rows = {"coarse": np.arange(30)[:, None, None] % 12 * np.ones((30, 3, 4), np.int64)}
    rows["refined"] = rows["coarse"] + 100
    fig = viz.show_label_rows(frames, rows, indices=range(100, 130), class_names={0: "sky"})
    image_axes = [a for a in fig.axes if a.images]
    assert len(image_axes) == 2 * 8  # at most 8 frames per row
    titles = [a.get_title() for a in image_axes[:8]]
    assert titles == [f"frame {100 + i}" for i in spread_loop(30, 8)]
    sizes = _panel_sizes(fig)
    assert max(w for w, _ in sizes) - min(w for w, _ in sizes) <= 1  # 24 legend entries and
    assert max(h for _, h in sizes) - min(h for _, h in sizes) <= 1  # every panel the same size
    w, h = sizes[0]
    assert abs(w / h - 48 / 36) < 0.05  # the frames' aspect ratio
    (legend,) = fig.legends
    assert legend.get_window_extent().y1 <= min(a.get_window_extent().y0 for a in image_axes)
    assert fig.get_size_inches()[0] < 20  # not one 30-panel row


def test_similarity_colour_range_follows_the_data_and_is_labelled() -> None:
    sims = torch.linspace(0.2, 0.9, 2 * 3 * 4).reshape(2, 3, 4)
    frames = np.stack([rng_frame(30, 40, s) for s in range(2)])
    fig = viz.show_similarity(sims, frames, point=(0, 1, 1))
    maps = [a.images[1] for a in fig.axes if len(a.images) == 2]
    assert all(m.get_clim() == pytest.approx((0.2, 0.9)) for m in maps)
    assert all(m.get_extent() == [0.0, 40.0, 30.0, 0.0] for m in maps)
    (bar,) = [a for a in fig.axes if a.get_label() == "<colorbar>"]
    assert bar.get_ylabel() == "cosine similarity"
    fixed = viz.show_similarity(sims, frames, point=(0, 1, 1), vmin=-1.0, vmax=1.0)
    assert fixed.axes[0].images[1].get_clim() == (-1.0, 1.0)


def test_difference_maps_and_pca_are_drawn_at_the_frame_aspect_ratio() -> None:
    maps = torch.rand(2, 64, 128)  # processed 2:1, frame 4:3
    fig = viz.show_difference_maps(maps, [3, 5], size=(360, 480))
    panels = [a for a in fig.axes if a.images]
    assert all(a.images[0].get_extent() == [0.0, 480.0, 360.0, 0.0] for a in panels)
    bars = [a for a in fig.axes if a.get_label() == "<colorbar>"]
    assert len(bars) == 2 and all(b.get_ylabel() == "D_c" for b in bars)
    for a, m in zip(panels, maps, strict=True):
        assert a.images[0].get_clim() == pytest.approx((float(m.min()), float(m.max())))
    pca = viz.show_feature_pca(torch.randn(2, 4, 8, 6), size=(360, 480))
    assert all(a.images[0].get_extent() == [0.0, 480.0, 360.0, 0.0] for a in pca.axes)
    w, h = _panel_sizes(pca)[0]
    assert abs(w / h - 4 / 3) < 0.05


def test_per_class_iou_bars_are_percent_titled_and_show_the_tables_miou() -> None:
    ious = {0: 0.5, 1: float("nan"), 3: 0.25, 8: 0.7}
    fig = viz.plot_per_class_iou(
        ious, {0: "sky", 3: "road", 8: "car"}, title="CamVid, m, first-frame", colours="camvid",
        miou=0.3167,
    )  # fmt: skip
    a = fig.axes[0]
    assert [round(p.get_height(), 6) for p in a.patches] == [50.0, 25.0, 70.0]
    assert a.get_ylim() == (0.0, 100.0) and a.get_ylabel() == "IoU (%)"
    assert a.get_title() == "CamVid, m, first-frame"
    (line,) = a.lines
    assert line.get_ydata()[0] == pytest.approx(31.67)
    assert a.get_legend().get_texts()[0].get_text() == "mIoU 31.67"
    camvid = viz.dataset_palette("camvid") / 255.0
    np.testing.assert_allclose(a.patches[2].get_facecolor()[:3], camvid[8])
    plain = viz.plot_per_class_iou([0.2, 0.4]).axes[0]
    assert plain.lines[0].get_ydata()[0] == pytest.approx(30.0)


def test_qualitative_strip_subsamples_names_frames_and_has_a_class_legend() -> None:
    frames = np.stack([rng_frame(12, 16, s) for s in range(20)])
    gts = np.zeros((20, 12, 16), np.int64)
    gts[:, 6:] = 3
    preds = gts.copy()
    preds[:, :, :4] = 8
    fig = viz.qualitative_strip(
        frames, gts, preds, class_names=["sky", "building", "pole", "road", "", "", "", "", "car"],
        colours="camvid", title="CamVid x, model, first-frame protocol", indices=range(50, 70),
    )  # fmt: skip
    panels = [a for a in fig.axes if a.images]
    assert len(panels) == 3 * 8
    assert [a.get_title() for a in panels[:8]] == [f"frame {50 + i}" for i in spread_loop(20, 8)]
    assert fig._suptitle.get_text() == "CamVid x, model, first-frame protocol"
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["0 sky", "3 road", "8 car"]
    np.testing.assert_array_equal(
        panels[8].images[0].get_array(), viz.dataset_palette("camvid")[gts[0]]
    )


def test_plot_tracks_highlights_one_track_on_chosen_frames() -> None:
    frames = np.zeros((4, 16, 32, 3), dtype=np.uint8)
    pos = np.zeros((4, 3, 2), np.int64)
    pos[:, 1, 1] = np.arange(4)  # track 1 moves right one cell per frame
    fig = viz.plot_tracks(
        frames, pos, np.array([True, False, True]), (4, 8), highlight=1, shown=[0, 3]
    )
    assert [a.get_title() for a in fig.axes] == ["frame 0", "frame 3"]
    path, _ = fig.axes[1].lines
    assert path.get_linestyle() == "--"  # dropped by the filter
    np.testing.assert_allclose(path.get_xdata(), (np.arange(4) + 0.5) * 4)
    with pytest.raises(InputError):
        viz.plot_tracks(frames, pos, None, (4, 8), shown=[4])


# ----------------------------------------------------------------------------- import side effects


def _run_fresh(code: str) -> None:
    """Run ``code`` in a fresh interpreter (no MPLBACKEND, no display) importing this checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "DISPLAY")}
    env.pop("WAYLAND_DISPLAY", None)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    check = f"import zsvss_nb; assert zsvss_nb.__file__.startswith({root!r}), zsvss_nb.__file__\n"
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code) + check],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_viz_and_colors_import_without_matplotlib() -> None:
    _run_fresh(
        """
        import sys
        import zsvss_nb.notebook.viz
        import zsvss_nb.notebook.viz.colors
        from zsvss_nb.notebook.viz import colorize, overlay_panel, palette
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "matplotlib")
        assert not loaded, loaded
        """
    )


def test_viz_import_and_figures_leave_the_backend_alone(tmp_path) -> None:
    _run_fresh(
        f"""
        import sys
        import matplotlib
        import numpy as np

        before = dict.__getitem__(matplotlib.rcParams, "backend")
        from zsvss_nb.notebook import viz

        fig = viz.show_frames(np.zeros((2, 8, 8, 3), dtype=np.uint8))
        paths = viz.save_figure(fig, {str(tmp_path / "fig")!r}, formats=("png", "pdf"))
        assert [p.stat().st_size > 0 for p in paths] == [True, True]
        with viz.publication_style():
            viz.plot_per_class_iou([0.5])
        assert "matplotlib.pyplot" not in sys.modules
        assert dict.__getitem__(matplotlib.rcParams, "backend") is before
        """
    )


def test_legend_names_come_from_a_mapping_or_a_list_by_id() -> None:
    from zsvss_nb.notebook.viz.colors import VOID_ID, label_text

    assert label_text(2, ["sky", "road", "car"]) == "2 car"
    assert label_text(2, {2: "car"}) == "2 car"
    assert label_text(7, ["sky"]) == "7"  # no name: the id alone
    assert label_text(VOID_ID, None) == f"{VOID_ID} void"


def test_dataset_names_call_the_datasets_own_ignore_id_void() -> None:
    from zsvss_nb.datasets import open_dataset
    from zsvss_nb.notebook.viz.colors import label_text

    camvid = open_dataset("camvid", DATA / "camvid")  # 11 classes, void 11 ignored
    names = viz.dataset_names(camvid)
    assert [label_text(i, names) for i in (0, 10, 11)] == ["0 sky", "10 bicyclist", "11 void"]
    assert label_text(11, camvid.class_names) == "11"  # the plain list knows no void
    davis = open_dataset("davis", DATA / "davis2016")
    assert viz.dataset_names(davis) == {0: "background", 1: "object"}  # DAVIS 2016: no ignore id

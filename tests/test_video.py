"""Tests of zsvss_nb.io.video: inputs, windows, pixel formats, errors, size policy, writers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from zsvss_nb.datasets import natural_key
from zsvss_nb.errors import (
    ConfigError,
    EmptyVideoError,
    FrameSizeError,
    InputError,
    LabelError,
    UnsupportedImageError,
    VideoDecodeError,
    VideoNotFoundError,
)
from zsvss_nb.io import decoders as D
from zsvss_nb.io.video import open_video, window_spans
from zsvss_nb.io.writers import atomic_write_png, write_video
from zsvss_nb.kernels.frames import Geometry, geometry_for, prepare_frames, restore, to_grid

DATA = Path(__file__).resolve().parents[1] / "data"
BEDROOM = DATA / "unlabelled" / "bedroom"


# ------------------------------------------------------------------------------------ helpers


def synthetic_frames(n: int, h: int = 96, w: int = 128) -> np.ndarray:
    """uint8 [n, h, w, 3]: smooth background plus a bright square that moves 4 px per frame,
    so every frame is distinguishable even after lossy coding."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        frame = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 60)], axis=-1)
        x0 = (4 * i) % (w - 16)
        frame[20:36, x0 : x0 + 16] = 240
        out[i] = frame
    return out


def save_png(path: Path, value: int, size: tuple[int, int] = (64, 48)) -> None:
    """A constant RGB PNG of size (W, H) whose pixels all equal ``value``."""
    Image.new("RGB", size, (value, value, value)).save(path)


def open_fds() -> int:
    if Path("/proc/self/fd").exists():
        return len(os.listdir("/proc/self/fd"))
    import psutil

    return psutil.Process().num_fds()


@pytest.fixture(scope="module")
def mp4(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    frames = synthetic_frames(20)
    path = tmp_path_factory.mktemp("mp4") / "clip.mp4"
    write_video(path, frames, fps=10)
    return path, frames


def assert_one_line_naming(err: pytest.ExceptionInfo[BaseException], name: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    assert name in message


# ------------------------------------------------------------------------------------ inputs


def test_folder_natural_order_ignores_other_files(tmp_path: Path) -> None:
    for value in (10, 2, 1, 33):
        save_png(tmp_path / f"{value}.png", value)
    save_png(tmp_path / "20.PNG", 20)  # extension case must not matter
    (tmp_path / "notes.txt").write_text("not a frame")
    Image.new("RGB", (9, 9)).save(tmp_path / ".hidden.png")  # would be a size mismatch
    with open_video(tmp_path) as video:
        assert video.names == ["1", "2", "10", "20", "33"]
        assert len(video) == 5 and video.size == (64, 48) and video.fps is None
        frames = video.read(range(5))
    assert frames.dtype == torch.uint8 and frames.shape == (5, 3, 48, 64)
    assert frames[:, :, 0, 0].tolist() == [[v] * 3 for v in (1, 2, 10, 20, 33)]
    # an entry named like a frame that is no image file is an error, never dropped (issue 25)
    (tmp_path / "3.png").mkdir()
    with pytest.raises(InputError, match=r"3\.png: frame entry is a folder"):
        open_video(tmp_path)


def test_natural_key_on_dataset_style_names() -> None:
    names = ["f10", "f9", "0006R0_f01800", "0006R0_f00930", "g1", "f010"]
    ordered = sorted(names, key=natural_key)
    assert ordered == ["0006R0_f00930", "0006R0_f01800", "f9", "f010", "f10", "g1"]


def test_list_of_paths_keeps_given_order(tmp_path: Path) -> None:
    paths = []
    for value in (5, 1, 3):
        paths.append(tmp_path / f"{value:05d}.png")
        save_png(paths[-1], value)
    with open_video([str(p) for p in paths], fps=12.5) as video:
        assert video.names == ["00005", "00001", "00003"]
        assert video.fps == 12.5
        assert video.read([0, 1, 2])[:, 0, 0, 0].tolist() == [5, 1, 3]
        assert video.frame(2)[1, 5, 5].item() == 3


def test_read_any_order_and_repeats() -> None:
    frames = synthetic_frames(6)
    with open_video(frames) as video:
        got = video.read([4, 1, 4, 0])
    want = torch.from_numpy(frames[[4, 1, 4, 0]]).permute(0, 3, 1, 2)
    assert torch.equal(got, want)


def test_array_inputs_agree() -> None:
    frames = synthetic_frames(7, 64, 80)
    nhwc = torch.from_numpy(frames)
    nchw = nhwc.permute(0, 3, 1, 2).contiguous()
    sources = [frames, nchw, frames.astype(np.float32) / 255, nchw.double() / 255]
    for src in sources:
        with open_video(src, fps=25) as video:
            assert len(video) == 7 and video.size == (80, 64) and video.fps == 25
            assert video.names[0] == "00000" and video.names[-1] == "00006"
            assert torch.equal(video.read(range(7)), nchw)


def test_array_input_errors() -> None:
    frames = synthetic_frames(3, 64, 64)
    with pytest.raises(InputError, match=r"\[N, H, W, 3\]"):
        open_video(frames.transpose(0, 3, 1, 2))  # numpy must be channels-last
    with pytest.raises(InputError, match=r"\[N, 3, H, W\]"):
        open_video(torch.from_numpy(frames))  # torch must be channels-first
    with pytest.raises(InputError, match="0, 1"):
        open_video(frames.astype(np.float32))  # floats in 0..255
    with pytest.raises(InputError, match="uint8"):
        open_video(frames.astype(np.int16))
    with pytest.raises(EmptyVideoError):
        open_video(frames[:0])
    with pytest.raises(InputError):
        open_video(12345)  # type: ignore[arg-type]


def test_mp4_decord_and_pyav_agree(mp4: tuple[Path, np.ndarray]) -> None:
    path, original = mp4
    with open_video(path, backend="decord") as a, open_video(path, backend="pyav") as b:
        assert type(a._reader).__name__ == "DecordReader"
        assert type(b._reader).__name__ == "PyAVReader"
        assert len(a) == len(b) == 20 and a.size == b.size == (128, 96)
        assert a.fps == pytest.approx(10) and b.fps == pytest.approx(10)
        assert a.names[:2] == ["00000", "00001"]
        fa, fb = a.read(range(20)), b.read(range(20))
        # random access in both directions gives the same frames as a sequential read
        assert torch.equal(b.read([17, 3]), fb[[17, 3]])
        assert torch.equal(a.read([17, 3]), fa[[17, 3]])
    diff = (fa.int() - fb.int()).abs()
    assert diff.max() <= 2
    orig = torch.from_numpy(original).permute(0, 3, 1, 2).int()
    # each decoded frame is closest to its own original (right order, none skipped)
    dist = (fa.int()[:, None] - orig[None]).abs().float().mean(dim=(2, 3, 4))
    assert torch.equal(dist.argmin(dim=1), torch.arange(20))
    assert dist.diagonal().max() < 4.0


def test_pyav_fallback_when_decord_missing_or_failing(
    mp4: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = mp4
    with open_video(path, backend="decord") as ref:
        want = ref.read(range(20))
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "decord", None)  # "import decord" now raises ImportError
        with open_video(path) as video:
            assert type(video._reader).__name__ == "PyAVReader"
            assert (video.read(range(20)).int() - want.int()).abs().max() <= 2

    def broken(self: object, path: Path) -> None:
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(D.DecordReader, "__init__", broken)
    with open_video(path) as video:
        assert type(video._reader).__name__ == "PyAVReader"
        got = torch.cat([w.frames[w.is_new] for w in video.windows(6)])
    assert (got.int() - want.int()).abs().max() <= 2


def test_bedroom_mp4_matches_its_jpeg_frames() -> None:
    with open_video(BEDROOM / "bedroom.mp4") as video, open_video(BEDROOM / "frames") as jpgs:
        assert len(video) == 200 and video.size == (960, 540) and video.fps == pytest.approx(30)
        assert len(jpgs) == 30 and jpgs.names[-1] == "00029"
        idx = [0, 1, 28, 29]
        err = (video.read(idx).float() - jpgs.read(idx).float()).abs().mean(dim=(1, 2, 3))
        shifted = (video.read([1]).float() - jpgs.read([0]).float()).abs().mean()
    assert err.max() < 3.0  # JPEG re-encoding noise only
    assert shifted > err.max()  # and the frames are aligned, not off by one


def test_bedroom_decoders_agree_across_a_seek() -> None:
    path = BEDROOM / "bedroom.mp4"
    with open_video(path, backend="pyav") as b, open_video(path, backend="decord") as a:
        for idx in ([186, 199], [0, 1], [120]):
            assert torch.equal(a.read(idx), b.read(idx))


# ------------------------------------------------------------------------------------ windows


def reference_spans(n: int, b: int) -> list[tuple[int, int, list[int]]]:
    """Plain loop: (start, stop, new frame indices) of each window."""
    spans, done, start = [], set(), 0
    while start < n:
        s = start if start + b <= n else max(0, n - b)
        indices = list(range(s, min(s + b, n)))
        spans.append((s, s + len(indices), [i for i in indices if i not in done]))
        done.update(indices)
        start += b
    return spans


@pytest.mark.parametrize("n", [1, 5, 13, 14, 15, 28, 29, 30])
def test_windows_cover_each_frame_once(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    frames = synthetic_frames(n, 64, 64)
    video = open_video(frames)
    reads: list[list[int]] = []
    real_read = D.ArrayReader.read

    def counting_read(self: D.ArrayReader, indices: list[int]) -> torch.Tensor:
        reads.append(list(indices))
        return real_read(self, indices)

    monkeypatch.setattr(D.ArrayReader, "read", counting_read)
    gen = video.windows(14)
    assert reads == []  # nothing is read before the first window is asked for
    windows = []
    for window in gen:
        windows.append(window)
        assert reads[-1] == window.indices and len(reads) == len(windows)  # one read each
    ref = reference_spans(n, 14)
    assert [(w.indices[0], w.indices[-1] + 1, w.new_indices) for w in windows] == ref
    assert window_spans(n, 14) == [(s, e) for s, e, _ in ref]
    new = [i for w in windows for i in w.new_indices]
    assert sorted(new) == list(range(n)) and len(new) == n
    assert windows[-1].indices[-1] == n - 1
    assert all(len(w.indices) == min(14, n) for w in windows)
    assert len({tuple(w.indices) for w in windows}) == len(windows)  # no window repeated
    for w in windows:
        assert w.frames.shape == (len(w.indices), 3, 64, 64) and w.is_new.dtype == torch.bool
        want = torch.from_numpy(frames[w.indices]).permute(0, 3, 1, 2)
        assert torch.equal(w.frames, want)
        assert w.names == [f"{i:05d}" for i in w.indices]


def test_window_special_cases() -> None:
    assert window_spans(15, 14) == [(0, 14), (1, 15)]
    assert window_spans(28, 14) == [(0, 14), (14, 28)]
    assert window_spans(5, 14) == [(0, 5)]
    assert window_spans(0, 14) == []
    video = open_video(synthetic_frames(15, 64, 64))
    last = list(video.windows(14))[-1]
    assert last.indices == list(range(1, 15)) and last.new_indices == [14]
    assert last.is_new.tolist() == [False] * 13 + [True]


def test_folder_windows_decode_only_their_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(9):
        save_png(tmp_path / f"{i:05d}.png", i)
    decoded: list[str] = []
    real_load = D.load_rgb

    def counting_load(path: Path) -> np.ndarray:
        decoded.append(path.stem)
        return real_load(path)

    monkeypatch.setattr(D, "load_rgb", counting_load)
    with open_video(tmp_path) as video:
        assert decoded == []  # opening reads headers only
        gen = video.windows(4)
        first = next(gen)
        assert decoded == ["00000", "00001", "00002", "00003"]
        assert first.frames[:, 0, 0, 0].tolist() == [0, 1, 2, 3]
        rest = list(gen)
    assert [w.indices for w in rest] == [[4, 5, 6, 7], [5, 6, 7, 8]]
    assert rest[-1].names == ["00005", "00006", "00007", "00008"]
    assert len(decoded) == 12


# ------------------------------------------------------------------------------ pixel formats


def test_pixel_formats(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (8, 10), dtype=np.uint8)

    def read(img: Image.Image, name: str) -> np.ndarray:
        path = tmp_path / name
        img.save(path)
        with open_video([path]) as video:
            return video.frame(0).permute(1, 2, 0).numpy()

    assert np.array_equal(read(Image.fromarray(rgb), "rgb.png"), rgb)
    assert np.array_equal(read(Image.fromarray(gray), "gray.png"), np.repeat(gray[..., None], 3, 2))
    bilevel = Image.fromarray(gray > 128).convert("1")
    assert np.array_equal(read(bilevel, "bilevel.png")[..., 0], np.where(gray > 128, 255, 0))
    opaque = np.dstack([rgb, np.full((8, 10), 255, np.uint8)])
    assert np.array_equal(read(Image.fromarray(opaque, "RGBA"), "rgba.png"), rgb)
    # palette: ids into a 4-colour palette come back as the palette's colours
    ids = rng.integers(0, 4, (8, 10), dtype=np.uint8)
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 99, 199]], np.uint8)
    pal = Image.fromarray(ids)
    pal.putpalette(colours.tobytes())
    assert np.array_equal(read(pal, "pal.png"), colours[ids])
    # 16-bit grayscale: round(x / 257)
    values = np.array([[0, 128, 129, 257, 1000], [32896, 65278, 65407, 65408, 65535]])
    big = np.tile(values, (4, 2)).astype(np.uint16)
    want = np.round(big.astype(np.float64) / 257).astype(np.uint8)
    assert np.array_equal(read(Image.fromarray(big), "deep.png")[..., 2], want)
    assert want[0, :5].tolist() == [0, 0, 1, 1, 4] and want[1, 4] == 255
    cmyk = Image.fromarray(rgb).convert("CMYK")
    got = read(cmyk, "cmyk.jpg").astype(int)
    assert np.abs(got - np.asarray(cmyk.convert("RGB")).astype(int)).mean() < 12


def test_transparent_images_are_refused(tmp_path: Path) -> None:
    rgba = np.full((8, 10, 4), 200, np.uint8)
    rgba[3, 4, 3] = 254
    Image.fromarray(rgba, "RGBA").save(tmp_path / "00000.png")
    with open_video(tmp_path) as video:
        with pytest.raises(UnsupportedImageError, match="transparent") as err:
            video.read([0])
    assert_one_line_naming(err, "00000.png")
    pal = Image.fromarray(np.zeros((8, 10), np.uint8))
    pal.putpalette([0, 0, 0, 255, 255, 255])
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    with open_video([tmp_path / "p.png"]) as video, pytest.raises(UnsupportedImageError):
        video.read([0])


def test_float_image_mode_refused() -> None:
    float_img = Image.fromarray(np.zeros((8, 10), np.float32))
    assert float_img.mode == "F"  # no known range, so no safe 8-bit conversion
    with pytest.raises(UnsupportedImageError, match="mode F"):
        D.to_rgb(float_img, "x")


def test_mixed_sizes_are_refused_at_open_without_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_png(tmp_path / "00000.png", 1, (64, 48))
    save_png(tmp_path / "00001.png", 1, (64, 48))
    save_png(tmp_path / "00002.png", 1, (80, 48))
    save_png(tmp_path / "00003.png", 1, (90, 48))

    def no_decoding(path: Path) -> np.ndarray:
        raise AssertionError("pixels decoded at open time")

    monkeypatch.setattr(D, "load_rgb", no_decoding)
    with pytest.raises(FrameSizeError) as err:
        open_video(tmp_path)
    assert_one_line_naming(err, "00002.png")
    assert "80x48" in str(err.value) and "64x48" in str(err.value)


# ------------------------------------------------------------------------------------ errors


def test_path_errors(tmp_path: Path, mp4: tuple[Path, np.ndarray]) -> None:
    missing = tmp_path / "nope.mp4"
    with pytest.raises(VideoNotFoundError) as err:
        open_video(missing)
    assert_one_line_naming(err, "nope.mp4")
    with pytest.raises(VideoNotFoundError):
        open_video([tmp_path / "gone.png"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EmptyVideoError) as err:
        open_video(empty)
    assert_one_line_naming(err, "empty")
    no_images = tmp_path / "no_images"
    no_images.mkdir()
    (no_images / "a.txt").write_text("x")
    (no_images / "b.mp4").write_bytes(b"")
    with pytest.raises(EmptyVideoError):
        open_video(no_images)
    with pytest.raises(EmptyVideoError):
        open_video([])
    gif = tmp_path / "clip.gif"
    gif.write_bytes(b"GIF89a")
    with pytest.raises(InputError, match="unsupported extension") as err:
        open_video(gif)
    assert_one_line_naming(err, "clip.gif")
    with pytest.raises(InputError):
        open_video([mp4[0]])  # a list must hold images


@pytest.mark.parametrize("kind", ["zero", "text", "truncated", "truncated_at_start"])
def test_undecodable_video_files(
    kind: str, tmp_path: Path, mp4: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / f"{kind}.mp4"
    data = mp4[0].read_bytes()
    if kind == "zero":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is a text file, not a video\n")
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(data[:700])
    before = open_fds()
    for backend in ("auto", "pyav"):
        with pytest.raises(VideoDecodeError) as err:
            open_video(path, backend=backend)
        assert_one_line_naming(err, path.name)
    assert open_fds() <= before  # failed opens release their handles


def test_corrupt_jpeg_in_folder(tmp_path: Path) -> None:
    save_png(tmp_path / "00000.png", 3)
    Image.new("RGB", (64, 48), (1, 2, 3)).save(tmp_path / "00001.jpg")
    data = (tmp_path / "00001.jpg").read_bytes()
    (tmp_path / "00001.jpg").write_bytes(data[:20])
    with pytest.raises(VideoDecodeError) as err:
        open_video(tmp_path).read([1])
    assert_one_line_naming(err, "00001.jpg")


def test_closed_video_refuses_reads() -> None:
    video = open_video(synthetic_frames(2, 64, 64))
    with video:
        video.read([1])
    with pytest.raises(InputError, match="closed"):
        video.read([0])
    with pytest.raises(IndexError):
        open_video(synthetic_frames(2, 64, 64)).read([2])


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_file_handles_do_not_leak(backend: str, mp4: tuple[Path, np.ndarray]) -> None:
    path = mp4[0]
    with open_video(path, backend=backend) as video:  # warm-up: lazy library state
        list(video.windows(6))
    before = open_fds()
    for _ in range(6):
        with open_video(path, backend=backend) as video:
            for window in video.windows(6):
                assert window.frames.shape[1:] == (3, 96, 128)
        video = open_video(path, backend=backend)
        video.read([19, 0])
        video.close()
    assert open_fds() <= before


# ------------------------------------------------------------------------------- size policy


def test_geometry_arithmetic() -> None:
    g = geometry_for(480, 853, "resize64")
    assert g == Geometry((480, 853), (448, 832), "resize64", (0, 0, 0, 0))  # METHOD 1.1
    g = geometry_for(480, 854, "pad64")
    assert g.processed == (512, 896) and g.pad == (0, 32, 0, 42)
    assert geometry_for(512, 512, "pad64").pad == (0, 0, 0, 0)
    with pytest.raises(
        FrameSizeError, match="frame is 70x50; the feature grid needs at least 64x64"
    ):
        geometry_for(50, 70, "resize64")
    with pytest.raises(ConfigError, match="crop"):
        geometry_for(64, 64, "crop")  # type: ignore[arg-type]


def test_pad64_round_trip_is_exact() -> None:
    frames = torch.from_numpy(synthetic_frames(2, 100, 130)).permute(0, 3, 1, 2).contiguous()
    x, g = prepare_frames(frames, "pad64")
    assert x.dtype == torch.float32 and x.shape == (2, 3, 128, 192)
    ref = np.pad(frames.numpy(), ((0, 0), (0, 0), (0, 28), (0, 62)), mode="reflect")
    assert torch.equal(x, torch.from_numpy(ref).float() / 255)
    assert torch.equal(restore(x, g), frames.float() / 255)
    labels = torch.randint(0, 5, (4, 128, 192))
    assert torch.equal(restore(labels, g, "nearest"), labels[:, :100, :130])


def bilinear_reference(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Loop reference of half-pixel-centre bilinear resampling without antialiasing."""
    h, w = img.shape
    out = np.empty((out_h, out_w))
    for i in range(out_h):
        y = max((i + 0.5) * h / out_h - 0.5, 0.0)
        y0 = min(int(np.floor(y)), h - 1)
        y1, fy = min(y0 + 1, h - 1), y - y0
        for j in range(out_w):
            x = max((j + 0.5) * w / out_w - 0.5, 0.0)
            x0 = min(int(np.floor(x)), w - 1)
            x1, fx = min(x0 + 1, w - 1), x - x0
            top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
            bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
            out[i, j] = top * (1 - fy) + bottom * fy
    return out


def test_resize64_bilinear_option_matches_bilinear_reference_and_cv2() -> None:
    frames = torch.from_numpy(synthetic_frames(1, 100, 130)).permute(0, 3, 1, 2).contiguous()
    x, g = prepare_frames(frames, "resize64", resize_filter="bilinear")
    assert x.shape == (1, 3, 64, 128) and g.processed == (64, 128)
    ref = bilinear_reference(frames[0, 1].double().numpy() / 255, 64, 128)
    assert np.abs(x[0, 1].double().numpy() - ref).max() < 1e-5
    cv2 = pytest.importorskip("cv2")
    img = frames[0].permute(1, 2, 0).numpy()
    want = cv2.resize(img, (128, 64), interpolation=cv2.INTER_LINEAR)
    got = (x[0].permute(1, 2, 0).numpy() * 255).round()
    assert np.abs(got - want.astype(np.float64)).max() <= 1.0


@pytest.mark.parametrize("clip", ["davis2016/blackswan", "camvid/0016E5_15Hz"])
def test_resize64_default_is_pils_resize_of_the_reference(clip) -> None:
    """The reference's ``frame_img.resize((width, height))``: PIL's default BICUBIC filter."""
    root = Path(__file__).resolve().parents[1] / "data" / clip
    path = sorted(
        p
        for p in root.rglob("*")
        if p.suffix in (".jpg", ".png") and "abel" not in str(p) and "nnotation" not in str(p)
    )[0]
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    w, h = rgb.size
    want = np.asarray(rgb.resize((w - w % 64, h - h % 64)))
    frames = torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)[None].contiguous()
    x, g = prepare_frames(frames, "resize64")
    assert g.processed == (h - h % 64, w - w % 64)
    got = (x[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.05
    assert np.array_equal(got, want)  # in fact byte-identical (zsvss_nb.kernels.resample)


def test_resize64_default_matches_pil_on_random_images() -> None:
    gen = np.random.default_rng(3)
    # sizes where every Pillow runs the horizontal pass first (test_resample covers the order)
    for (h, w), (ph, pw) in (((130, 100), (128, 64)), ((200, 333), (192, 320))):
        img = gen.integers(0, 256, (h, w, 3), dtype=np.uint8)
        want = np.asarray(Image.fromarray(img).resize((pw, ph), Image.BICUBIC))
        x, _ = prepare_frames(torch.from_numpy(img).permute(2, 0, 1)[None].contiguous())
        got = (x[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        assert np.array_equal(got, want)


def test_resize64_restore() -> None:
    ramp = torch.linspace(0, 1, 130).expand(1, 3, 100, 130)
    frames = (ramp * 255).round().to(torch.uint8)
    x, g = prepare_frames(frames, "resize64")
    back = restore(x, g)
    assert back.shape == (1, 3, 100, 130)
    inner = (back - frames.float() / 255)[..., 2:-2, 2:-2].abs()
    assert inner.max() < 0.01  # a linear ramp survives down- and up-sampling
    labels = torch.zeros(64, 128, dtype=torch.long)
    labels[:, 64:] = 7
    lab = restore(labels, g, "nearest")
    assert lab.shape == (100, 130) and lab.dtype == torch.long
    assert set(lab.unique().tolist()) == {0, 7} and (lab[:, :64] == 0).all()
    assert (lab[:, 66:] == 7).all()
    with pytest.raises(InputError):
        restore(labels, g, "bilinear")  # ids must not be blended
    with pytest.raises(FrameSizeError):
        restore(torch.zeros(3, 100, 130), g)
    same, g_same = prepare_frames(frames[..., :64, :128], "resize64")
    assert torch.equal(same, frames[..., :64, :128].float() / 255)
    assert restore(same, g_same) is same


def test_prepare_frames_rejects_bad_input() -> None:
    with pytest.raises(InputError):
        prepare_frames(torch.zeros(1, 3, 64, 64), "resize64")  # float, not uint8
    with pytest.raises(FrameSizeError, match="frame is 63x64"):
        prepare_frames(torch.zeros(1, 3, 64, 63, dtype=torch.uint8), "pad64")


@settings(max_examples=150, deadline=None)
@given(
    h=st.integers(1, 4000),
    w=st.integers(1, 4000),
    policy=st.sampled_from(["resize64", "pad64"]),
    multiple=st.sampled_from([8, 16, 64]),
)
def test_any_size_round_trips_or_is_refused(h: int, w: int, policy: str, multiple: int) -> None:
    small = h * w <= 160 * 160
    device = "cpu" if small else "meta"  # meta tensors carry shapes only: no memory, no time
    frames = torch.zeros(1, 3, h, w, dtype=torch.uint8, device=device)
    if min(h, w) < multiple:
        with pytest.raises(FrameSizeError):
            geometry_for(h, w, policy, multiple)  # type: ignore[arg-type]
        with pytest.raises(FrameSizeError):
            prepare_frames(frames, policy, multiple)  # type: ignore[arg-type]
        return
    g = geometry_for(h, w, policy, multiple)  # type: ignore[arg-type]
    ph, pw = g.processed
    assert ph % multiple == 0 and pw % multiple == 0
    if policy == "resize64":
        assert h - multiple < ph <= h and w - multiple < pw <= w and g.pad == (0, 0, 0, 0)
    else:
        assert h <= ph < h + multiple and w <= pw < w + multiple
        assert g.pad == (0, ph - h, 0, pw - w)
    x, g2 = prepare_frames(frames, policy, multiple)  # type: ignore[arg-type]
    assert g2 == g and tuple(x.shape) == (1, 3, ph, pw)
    assert tuple(restore(x, g).shape) == (1, 3, h, w)
    assert tuple(restore(x[:, 0], g, "nearest").shape) == (1, h, w)
    if small:
        assert torch.equal(restore(x, g), torch.zeros(1, 3, h, w))


def to_grid_reference(mask: np.ndarray, g: Geometry, hw: tuple[int, int]) -> np.ndarray:
    """Loop reference: each grid cell takes the label under its centre (reflect for pad64)."""
    h, w = hw
    H, W = g.original
    ph, pw = g.processed if g.policy == "pad64" else g.original
    out = np.empty(hw, dtype=np.int64)
    for r in range(h):
        pr = min(int((r + 0.5) * ph / h), ph - 1)
        sr = pr if pr < H else 2 * (H - 1) - pr
        for c in range(w):
            pc = min(int((c + 0.5) * pw / w), pw - 1)
            sc = pc if pc < W else 2 * (W - 1) - pc
            out[r, c] = mask[sr, sc]
    return out


def test_to_grid_on_planted_mask() -> None:
    mask = torch.zeros(100, 130, dtype=torch.long)
    mask[:, 65:] = 2
    mask[:50, :65] = 3
    mask[90:, 120:] = 5  # bottom-right corner: reflected into the pad64 padding
    for policy in ("resize64", "pad64"):
        g = geometry_for(100, 130, policy)  # type: ignore[arg-type]
        hw = (g.processed[0] // 16, g.processed[1] // 16)
        grid = to_grid(mask, g, hw)
        assert grid.dtype == torch.long and grid.shape == hw
        assert np.array_equal(grid.numpy(), to_grid_reference(mask.numpy(), g, hw))
    g = geometry_for(100, 130, "resize64")
    grid = to_grid(mask, g, (4, 8))
    assert grid.tolist() == [[3] * 4 + [2] * 4] * 2 + [[0] * 4 + [2] * 4] * 2
    # pad64: the grid agrees with sampling the padded *pixels* at the cell centres
    g = geometry_for(100, 130, "pad64")
    padded, _ = prepare_frames(mask.to(torch.uint8).expand(1, 3, -1, -1).contiguous(), "pad64")
    centres = padded[0, 0, 8::16, 8::16] * 255
    assert torch.equal(to_grid(mask, g, (8, 12)), centres.round().long())
    # cell (6, 8) is centred at processed pixel (104, 136), in the padding: it reflects to
    # original pixel (94, 122), inside the planted corner
    assert to_grid(mask, g, (8, 12))[6, 8] == 5
    with pytest.raises(LabelError):
        to_grid(mask[:99], g, (8, 12))
    with pytest.raises(LabelError):
        to_grid(mask.float(), g, (8, 12))


# ------------------------------------------------------------------------------------ writers


def test_write_video_odd_size_round_trip(tmp_path: Path) -> None:
    frames = synthetic_frames(9, 47, 63)
    path = write_video(tmp_path / "out" / "odd.mp4", iter(list(frames)), fps=7.5)
    assert sorted(p.name for p in path.parent.iterdir()) == ["odd.mp4"]  # no temp left
    with open_video(path) as video:
        assert len(video) == 9 and video.size == (64, 48) and video.fps == pytest.approx(7.5)
        got = video.read(range(9))[:, :, :47, :63].permute(0, 2, 3, 1).float()
        edge = video.read([0])[0, :, 47, :63].float()
    assert (got - torch.from_numpy(frames).float()).abs().mean() < 4.0
    assert (edge - torch.from_numpy(frames[0, 46]).T.float()).abs().mean() < 8.0


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
def test_write_video_writes_its_bytes_once(tmp_path: Path) -> None:
    def wchar() -> int:
        line = next(x for x in Path("/proc/self/io").read_text().splitlines() if "wchar" in x)
        return int(line.split(": ")[1])

    frames = synthetic_frames(12, 64, 96)
    before = wchar()
    path = write_video(tmp_path / "once.mp4", frames, fps=10)
    written = wchar() - before
    # one pass: no rewrite of the file to move its index (faststart would double this)
    assert path.stat().st_size <= written <= path.stat().st_size + 64


def test_write_video_failure_leaves_target_untouched(tmp_path: Path) -> None:
    path = tmp_path / "keep.mp4"
    path.write_bytes(b"previous")

    def frames_then_crash():
        yield from synthetic_frames(3, 64, 64)
        raise RuntimeError("renderer crashed")

    with pytest.raises(RuntimeError, match="renderer crashed"):
        write_video(path, frames_then_crash(), fps=10)
    with pytest.raises(FrameSizeError):
        write_video(path, [np.zeros((64, 64, 3), np.uint8), np.zeros((64, 66, 3), np.uint8)], 10)
    with pytest.raises(EmptyVideoError):
        write_video(path, [], fps=10)
    assert path.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.mp4"]


def test_atomic_write_png(tmp_path: Path) -> None:
    ids = torch.randint(0, 12, (30, 40))
    path = atomic_write_png(tmp_path / "labels" / "00000.png", ids)
    with Image.open(path) as im:
        assert im.mode == "L" and np.array_equal(np.asarray(im), ids.numpy())
    palette = np.array([[i * 20, 255 - i * 20, 7] for i in range(12)], np.uint8)
    path = atomic_write_png(tmp_path / "color.png", ids.numpy(), palette=palette)
    with Image.open(path) as im:
        assert im.mode == "P" and np.array_equal(np.asarray(im), ids.numpy())
        assert np.array_equal(np.asarray(im.convert("RGB")), palette[ids.numpy()])
    rgb = synthetic_frames(1, 16, 32)[0]
    with Image.open(atomic_write_png(tmp_path / "rgb.png", rgb)) as im:
        assert np.array_equal(np.asarray(im), rgb)
    with pytest.raises(LabelError):
        atomic_write_png(tmp_path / "bad.png", torch.full((4, 4), 300))
    with pytest.raises(InputError):
        atomic_write_png(tmp_path / "bad.png", np.zeros((4, 4), np.float32))
    assert not (tmp_path / "bad.png").exists()
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]

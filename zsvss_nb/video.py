"""Video input, windowing, the frame-size policy, and the atomic writers.

``open_video`` turns a frame folder, a list of image paths, a video file or an in-memory array
into a :class:`Video`: a lazy sequence of 8-bit RGB frames, consumed in windows of B frames
(METHOD.md 1.5) that read only their own frames. ``prepare_frames``/``restore``/``to_grid``
implement the size policy (METHOD.md 1.1): the paper resizes each side down to a multiple of 64
("resize64"); "pad64" reflect-pads bottom/right instead, so no pixel is resampled.
``write_video``/``atomic_write_png`` write to a temporary name and rename, so an interrupted run
never leaves a half-written file.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import re
import secrets
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import (
    ConfigError,
    EmptyVideoError,
    FrameSizeError,
    InputError,
    LabelError,
    MissingDependencyError,
    UnsupportedImageError,
    VideoDecodeError,
    VideoNotFoundError,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
Policy = Literal["resize64", "pad64"]
_POLICIES = ("resize64", "pad64")
ResizeFilter = Literal["pil-bicubic", "bilinear"]
_RESIZE_FILTERS = ("pil-bicubic", "bilinear")
# Pixel formats that _to_rgb converts (checked from the header at open time).
_MODES = {"RGB", "L", "1", "P", "PA", "RGBA", "RGBa", "LA", "La", "CMYK", "YCbCr"}
_MODES |= {"I", "I;16", "I;16L", "I;16B", "I;16N"}


# --------------------------------------------------------------------------------------------
# Pixel formats


def _to_rgb(im: Image.Image, name: str) -> np.ndarray:
    """Convert a decoded PIL image to 8-bit RGB ``[H, W, 3]`` where that is lossless in meaning.

    Grayscale is replicated to three channels; palette, CMYK and YCbCr go through PIL's
    conversion. An alpha channel is dropped only when every pixel is fully opaque: the colour
    under a transparent pixel is undefined, so guessing a background would invent content.
    16-bit grayscale ("I;16*", or "I" with values in 0..65535, as PIL opens 16-bit PNGs) is
    scaled to 8 bits by round(x / 257), which maps 0 -> 0 and 65535 -> 255 exactly.
    """
    mode = im.mode
    if mode == "P" and "transparency" in im.info:
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        alpha = np.asarray(im.getchannel("A"))
        if alpha.size and int(alpha.min()) < 255:
            raise UnsupportedImageError(
                f"{name}: image mode {mode} has transparent pixels (alpha < 255); the colour "
                "under them is undefined, so flatten it onto a background first"
            )
        im = im.convert("RGBA") if mode == "PA" else im
        return np.asarray(im.convert("RGB"))
    if mode in ("L", "1"):
        gray = np.asarray(im.convert("L"))
    elif mode.startswith("I"):
        values = np.asarray(im).astype(np.int64)
        if values.size and (int(values.min()) < 0 or int(values.max()) > 65535):
            raise UnsupportedImageError(
                f"{name}: integer image (mode {mode}) has values outside the 16-bit range 0..65535"
            )
        gray = ((values + 128) // 257).astype(np.uint8)  # == round(x / 257); no ties exist
    elif mode in ("RGB", "P", "CMYK", "YCbCr"):
        return np.asarray(im.convert("RGB"))
    else:
        raise UnsupportedImageError(
            f"{name}: image mode {mode} has no safe conversion to 8-bit RGB"
        )
    return np.repeat(gray[:, :, None], 3, axis=2)


def _load_rgb(path: Path) -> np.ndarray:
    """Decode one image file to 8-bit RGB ``[H, W, 3]``."""
    try:
        with Image.open(path) as im:
            im.load()
            return _to_rgb(im, str(path))
    except (OSError, Image.DecompressionBombError) as err:
        raise VideoDecodeError(f"{path}: cannot decode image ({_one_line(err)})") from err


def _one_line(err: BaseException, limit: int = 200) -> str:
    """First non-empty line of an exception message, shortened (decord's span several lines).

    decord's C++ log prefix ("[10:20:09] /src/video/video_reader.cc:486: ") is dropped.
    """
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = lines[0] if lines else type(err).__name__
    text = re.sub(r"^\[\d{2}:\d{2}:\d{2}\] \S+:\d+: ", "", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null while native decoders run.

    decord's C++ logger and FFmpeg print their failures straight to fd 2, bypassing Python;
    the VideoDecodeError raised afterwards already carries the reason, so the CLI keeps its
    one-line error. Python-level writes in between are flushed first and restored after.
    """
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        pass
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _natural_key(name: str) -> tuple[Any, ...]:
    """Sort key in which digit runs compare as numbers, so "2" < "10"."""
    parts = re.split(r"(\d+)", name)
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts)) + (name,)


# --------------------------------------------------------------------------------------------
# Frame readers: each returns uint8 [n, 3, H, W] for sorted, unique, in-range indices


class _Reader(Protocol):
    def read(self, indices: list[int]) -> torch.Tensor: ...

    def close(self) -> None: ...


class _ImageReader:
    """Frames from image files; only the requested files are decoded."""

    def __init__(self, paths: list[Path], size: tuple[int, int]) -> None:
        self._paths = paths
        self._size = size  # (W, H)

    def read(self, indices: list[int]) -> torch.Tensor:
        width, height = self._size
        out = np.empty((len(indices), height, width, 3), dtype=np.uint8)
        for row, i in enumerate(indices):
            rgb = _load_rgb(self._paths[i])
            if rgb.shape[:2] != (height, width):
                raise FrameSizeError(
                    f"{self._paths[i]}: decoded size {rgb.shape[1]}x{rgb.shape[0]} differs "
                    f"from its header size {width}x{height}"
                )
            out[row] = rgb
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()

    def close(self) -> None:
        pass


class _ArrayReader:
    """Frames from an in-memory array; float input in [0, 1] is rounded to uint8 per read."""

    def __init__(self, array: np.ndarray | torch.Tensor) -> None:
        self._array = array

    def read(self, indices: list[int]) -> torch.Tensor:
        if isinstance(self._array, np.ndarray):
            chunk = torch.from_numpy(np.ascontiguousarray(self._array[indices]))
            chunk = chunk.permute(0, 3, 1, 2)
        else:
            chunk = self._array[torch.as_tensor(indices, device=self._array.device)]
        if chunk.dtype != torch.uint8:
            chunk = (chunk.float() * 255).round_().to(torch.uint8)
        return chunk.contiguous()

    def close(self) -> None:
        pass


class _DecordReader:
    """Frames from a video file through decord; the reader is released in ``close``.

    decord holds the file open until its ``VideoReader`` is garbage-collected, so we keep
    exactly one reference and drop it on close.
    """

    def __init__(self, path: Path) -> None:
        import decord

        self._vr: Any = decord.VideoReader(str(path), ctx=decord.cpu(0))
        try:
            self.length = len(self._vr)
            if self.length == 0:
                raise VideoDecodeError("no frames")
            # Decoding the first and last frame at open time catches truncated files early.
            first = self._vr[0].asnumpy()
            self._vr[self.length - 1].asnumpy()
            self._vr.seek(0)
            self.size = (int(first.shape[1]), int(first.shape[0]))
            fps = float(self._vr.get_avg_fps())
            self.fps = fps if np.isfinite(fps) and fps > 0 else None
        except BaseException:
            self.close()
            raise
        self._path = path

    def read(self, indices: list[int]) -> torch.Tensor:
        try:
            with _quiet_native_stderr():
                frames = self._vr.get_batch(indices).asnumpy()
        except Exception as err:  # decord raises its own DECORDError and RuntimeErrors
            raise VideoDecodeError(
                f"{self._path}: decord failed on frames {indices[0]}..{indices[-1]} "
                f"({_one_line(err)})"
            ) from err
        return torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()

    def close(self) -> None:
        self._vr = None


class _PyAVReader:
    """Frames from a video file through PyAV (FFmpeg).

    At open time the packets are demuxed (not decoded) to learn the frame count and each
    frame's presentation timestamp; a read seeks to the keyframe before its first frame and
    decodes forward. Files whose packets lack distinct timestamps are decoded sequentially.
    """

    def __init__(self, path: Path) -> None:
        import av

        self._av = av
        self._path = path
        self._container: Any = av.open(str(path))
        self._seq: Iterator[Any] | None = None
        self._seq_pos = 0
        try:
            if not self._container.streams.video:
                raise VideoDecodeError("no video stream")
            self._stream = self._container.streams.video[0]
            self._stream.thread_type = "AUTO"
            pts: list[int | None] = []
            keys: list[int | None] = []
            for packet in self._container.demux(self._stream):
                if packet.size == 0:  # the demuxer's final flush packet
                    continue
                pts.append(packet.pts)
                if packet.is_keyframe:
                    keys.append(packet.pts)
            self.length = len(pts)
            if self.length == 0:
                raise VideoDecodeError("no frames")
            self._pts: list[int] | None = None
            if None not in pts and len(set(pts)) == len(pts):
                self._pts = sorted(p for p in pts if p is not None)
                self._keys = sorted({k for k in keys if k is not None} | {self._pts[0]})
            first = self.read([0])
            self.read([self.length - 1])
            self.size = (int(first.shape[-1]), int(first.shape[-2]))
            rate = self._stream.average_rate or self._stream.guessed_rate
            self.fps = float(rate) if rate else None
        except BaseException:
            self.close()
            raise

    def _rgb(self, frame: Any) -> np.ndarray:
        return frame.to_ndarray(format="rgb24")

    def _read_by_pts(self, indices: list[int]) -> dict[int, np.ndarray]:
        assert self._pts is not None
        want = {self._pts[i]: i for i in indices}
        low, high = self._pts[indices[0]], self._pts[indices[-1]]
        got: dict[int, np.ndarray] = {}
        # Seek to the keyframe at or before the first wanted frame; should a frame still be
        # missing (open GOP), step back one more keyframe once.
        start = max(bisect.bisect_right(self._keys, low) - 1, 0)
        for k in range(start, max(start - 2, -1), -1):
            self._container.seek(self._keys[k], stream=self._stream, backward=True)
            for frame in self._container.decode(self._stream):
                if frame.pts in want and want[frame.pts] not in got:
                    got[want[frame.pts]] = self._rgb(frame)
                if len(got) == len(want) or (frame.pts is not None and frame.pts > high):
                    break
            if len(got) == len(want):
                break
        return got

    def _read_sequential(self, indices: list[int]) -> dict[int, np.ndarray]:
        if self._seq is None or self._seq_pos > indices[0]:
            self._container.seek(0)
            self._seq, self._seq_pos = iter(self._container.decode(self._stream)), 0
        want, got = set(indices), {}
        while self._seq_pos <= indices[-1]:
            frame = next(self._seq, None)
            if frame is None:
                break
            if self._seq_pos in want:
                got[self._seq_pos] = self._rgb(frame)
            self._seq_pos += 1
        return got

    def read(self, indices: list[int]) -> torch.Tensor:
        try:
            if self._pts is not None:
                got = self._read_by_pts(indices)
            else:
                got = self._read_sequential(indices)
        except (self._av.error.FFmpegError, OSError) as err:
            raise VideoDecodeError(
                f"{self._path}: PyAV failed on frames {indices[0]}..{indices[-1]} "
                f"({_one_line(err)})"
            ) from err
        missing = [i for i in indices if i not in got]
        if missing:
            raise VideoDecodeError(
                f"{self._path}: frame {missing[0]} of {self.length} could not be decoded "
                "(truncated or corrupt file?)"
            )
        frames = np.stack([got[i] for i in indices])
        return torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
            self._seq = None


# --------------------------------------------------------------------------------------------
# Video and windows


@dataclass(frozen=True)
class Window:
    """One window of B consecutive frames of a video.

    frames: uint8 [B, 3, H, W]; indices: the video frame indices; names: their frame names;
    is_new: bool [B], True for frames that no earlier window produced (the last window of a
    video is shifted back to end at the last frame, so it can repeat frames).
    """

    frames: torch.Tensor
    indices: list[int]
    names: list[str]
    is_new: torch.Tensor

    @property
    def new_indices(self) -> list[int]:
        """Video frame indices first produced by this window."""
        return [i for i, new in zip(self.indices, self.is_new.tolist(), strict=True) if new]


def window_spans(length: int, size: int = 14) -> list[tuple[int, int]]:
    """Half-open frame ranges ``(start, stop)`` of the windows over a video of ``length`` frames.

    Windows are [0, B), [B, 2B), ...; the last one is shifted back to end at the last frame,
    i.e. it starts at max(0, N - B) (METHOD.md 1.5). Unlike the reference code, no window is
    computed twice when N is a multiple of B, and N < B gives one short window of N frames.
    The frames of a window that are new are those at or after the previous window's stop.
    """
    if size < 1:
        raise ConfigError(f"window size {size} must be at least 1")
    spans = []
    for start in range(0, length, size):
        start = min(start, max(0, length - size))
        spans.append((start, min(start + size, length)))
    return spans


class Video:
    """A lazily read video: ``len``, ``fps``, ``size`` (W, H), ``names``, ``read``, ``windows``.

    Create it with :func:`open_video`. Frames are decoded on demand; nothing holds the whole
    video in memory. Use it as a context manager (or call ``close``) to release file handles.
    """

    def __init__(
        self,
        reader: _Reader,
        length: int,
        size: tuple[int, int],
        fps: float | None,
        names: Sequence[str],
        source: str,
    ) -> None:
        self._reader: _Reader | None = reader
        self._length = length
        self._size = size
        self._fps = fps
        self._names = tuple(names)
        self._source = source

    def __len__(self) -> int:
        return self._length

    @property
    def fps(self) -> float | None:
        """Frames per second: from the file, or as given to ``open_video``; else None."""
        return self._fps

    @property
    def size(self) -> tuple[int, int]:
        """Original frame size as (W, H)."""
        return self._size

    @property
    def names(self) -> list[str]:
        """Frame names: file stems for image input, zero-padded indices ("00000") otherwise."""
        return list(self._names)

    @property
    def source(self) -> str:
        """Where the frames come from (a path, or a description of the array)."""
        return self._source

    def __repr__(self) -> str:
        w, h = self._size
        return f"Video({self._source!r}, frames={self._length}, size={w}x{h}, fps={self._fps})"

    def read(self, indices: Sequence[int]) -> torch.Tensor:
        """Frames ``indices`` (any order, repeats allowed) as uint8 ``[n, 3, H, W]``."""
        if self._reader is None:
            raise InputError(f"video {self._source} is closed")
        idx = [int(i) for i in indices]
        bad = [i for i in idx if not 0 <= i < self._length]
        if bad:
            raise IndexError(f"frame {bad[0]} out of range for {self._length}-frame video")
        w, h = self._size
        if not idx:
            return torch.empty((0, 3, h, w), dtype=torch.uint8)
        unique = sorted(set(idx))
        frames = self._reader.read(unique)
        if unique == idx:
            return frames
        pos = {i: p for p, i in enumerate(unique)}
        return frames[torch.as_tensor([pos[i] for i in idx], device=frames.device)]

    def frame(self, i: int) -> torch.Tensor:
        """One frame as uint8 ``[3, H, W]``."""
        return self.read([i])[0]

    def windows(self, size: int = 14) -> Iterator[Window]:
        """Windows of ``size`` frames (see :func:`window_spans`); each reads only its frames."""
        previous_stop = 0
        for start, stop in window_spans(self._length, size):
            indices = list(range(start, stop))
            frames = self.read(indices)
            is_new = torch.arange(start, stop, device=frames.device) >= previous_stop
            names = [self._names[i] for i in indices]
            yield Window(frames=frames, indices=indices, names=names, is_new=is_new)
            previous_stop = stop

    def close(self) -> None:
        """Release file handles (idempotent)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> Video:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _index_names(length: int) -> list[str]:
    width = max(5, len(str(length - 1)))
    return [f"{i:0{width}d}" for i in range(length)]


def _open_images(paths: list[Path], fps: float | None, source: str) -> Video:
    """Check headers (size and pixel format) without decoding pixels, then wrap the files."""
    seen: dict[str, Path] = {}
    size: tuple[int, int] | None = None
    for path in paths:
        if path.stem in seen:
            raise InputError(f"{path}: frame name {path.stem!r} also used by {seen[path.stem]}")
        seen[path.stem] = path
        try:
            with Image.open(path) as im:
                this, mode = im.size, im.mode
        except (OSError, Image.DecompressionBombError) as err:
            raise VideoDecodeError(f"{path}: cannot read image ({_one_line(err)})") from err
        if mode not in _MODES:
            raise UnsupportedImageError(f"{path}: image mode {mode} cannot be converted to RGB")
        if size is None:
            size = this
        elif this != size:
            raise FrameSizeError(
                f"{path}: frame is {this[0]}x{this[1]} but {paths[0].name} is "
                f"{size[0]}x{size[1]}; all frames must have one size"
            )
    assert size is not None
    return Video(_ImageReader(paths, size), len(paths), size, fps, [p.stem for p in paths], source)


def _open_video_file(path: Path, fps: float | None, backend: str) -> Video:
    """Open with decord, falling back to PyAV; both failing is a VideoDecodeError."""
    if path.stat().st_size == 0:
        raise VideoDecodeError(f"{path}: file is empty (0 bytes)")
    failures: list[str] = []
    reader: _DecordReader | _PyAVReader | None = None
    if backend in ("auto", "decord"):
        try:
            with _quiet_native_stderr():
                reader = _DecordReader(path)
        except ImportError:
            failures.append("decord is not installed")
        except Exception as err:  # any decord failure means: try the next decoder
            failures.append(f"decord: {_one_line(err)}")
    if reader is None and backend in ("auto", "pyav"):
        try:
            with _quiet_native_stderr():
                reader = _PyAVReader(path)
        except ImportError:
            failures.append("PyAV is not installed")
        except Exception as err:
            failures.append(f"PyAV: {_one_line(err)}")
    if reader is None:
        if all("not installed" in f for f in failures):
            raise MissingDependencyError(
                f"{path}: no video decoder available ({'; '.join(failures)}); pip install av"
            )
        raise VideoDecodeError(f"{path}: cannot decode video ({'; '.join(failures)})")
    fps = fps if fps is not None else reader.fps
    return Video(reader, reader.length, reader.size, fps, _index_names(reader.length), str(path))


def _open_array(array: np.ndarray | torch.Tensor, fps: float | None) -> Video:
    numpy = isinstance(array, np.ndarray)
    layout = "[N, H, W, 3]" if numpy else "[N, 3, H, W]"
    shape = tuple(array.shape)
    if len(shape) != 4 or shape[3 if numpy else 1] != 3:
        raise InputError(f"array of shape {list(shape)}: expected {layout}")
    kind = "numpy" if numpy else "torch"
    source = f"<{kind} array {list(shape)} {str(array.dtype).replace('torch.', '')}>"
    if shape[0] == 0:
        raise EmptyVideoError(f"{source}: has no frames")
    height, width = (shape[1], shape[2]) if numpy else (shape[2], shape[3])
    if height == 0 or width == 0:
        raise FrameSizeError(f"{source}: frames are {width}x{height}")
    floating = array.dtype.kind == "f" if numpy else array.dtype.is_floating_point
    if floating:
        lo, hi = (float(array.min()), float(array.max()))
        if not (0.0 <= lo and hi <= 1.0):  # also rejects NaN
            raise InputError(f"{source}: float frames must lie in [0, 1], got [{lo}, {hi}]")
    elif array.dtype != (np.uint8 if numpy else torch.uint8):
        raise InputError(f"{source}: expected uint8, or float in [0, 1]")
    length = shape[0]
    return Video(_ArrayReader(array), length, (width, height), fps, _index_names(length), source)


def open_video(
    src: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | np.ndarray | torch.Tensor,
    fps: float | None = None,
    *,
    backend: Literal["auto", "decord", "pyav"] = "auto",
) -> Video:
    """Open frames for lazy, windowed reading.

    src: a folder of jpg/jpeg/png frames (natural order of file stems, so 2.png < 10.png;
    other and hidden files are ignored), one image file, a list of image paths (kept in the
    given order), a video file (mp4/mov/mkv/webm/avi; decord, falling back to PyAV), a numpy
    uint8 array [N, H, W, 3], or a torch uint8 tensor [N, 3, H, W]; arrays may also be float
    in [0, 1]. fps overrides the file's rate (folders and arrays have none otherwise).
    backend: which video decoder to try ("auto" = decord, then PyAV).
    """
    if fps is not None and not (np.isfinite(fps) and fps > 0):
        raise InputError(f"fps={fps}: must be a positive number")
    if backend not in ("auto", "decord", "pyav"):
        raise ConfigError(f"backend={backend!r}: use 'auto', 'decord' or 'pyav'")
    if isinstance(src, (np.ndarray, torch.Tensor)):
        return _open_array(src, fps)
    if isinstance(src, (str, os.PathLike)):
        path = Path(src).expanduser()
        if not path.exists():
            raise VideoNotFoundError(f"{path}: no such file or folder")
        if path.is_dir():
            frames = [
                p
                for p in path.iterdir()
                if p.suffix.lower() in IMAGE_EXTENSIONS
                and p.is_file()
                and not p.name.startswith(".")
            ]
            if not frames:
                raise EmptyVideoError(f"{path}: folder holds no jpg/jpeg/png frames")
            frames.sort(key=lambda p: _natural_key(p.stem))
            return _open_images(frames, fps, str(path))
        suffix = path.suffix.lower()
        if suffix in VIDEO_EXTENSIONS:
            return _open_video_file(path, fps, backend)
        if suffix in IMAGE_EXTENSIONS:
            return _open_images([path], fps, str(path))
        raise InputError(
            f"{path}: unsupported extension {path.suffix!r}; use a frame folder, "
            f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)}"
        )
    if isinstance(src, Sequence) and all(isinstance(p, (str, os.PathLike)) for p in src):
        if not src:
            raise EmptyVideoError("empty list of frame paths")
        paths = [Path(p).expanduser() for p in src]
        for path in paths:
            if not path.is_file():
                raise VideoNotFoundError(f"{path}: no such image file")
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise InputError(f"{path}: not a jpg/jpeg/png frame")
        return _open_images(paths, fps, f"<list of {len(paths)} images from {paths[0].parent}>")
    raise InputError(f"cannot open {type(src).__name__} as a video")


# --------------------------------------------------------------------------------------------
# Size policy


@dataclass(frozen=True)
class Geometry:
    """How frames of one size map to the processed size and back.

    original: (H, W); processed: (H', W'), both multiples of the grid multiple; policy:
    "resize64" (resize each side down to a multiple, as the paper) or "pad64" (reflect-pad
    bottom/right up to the next multiple); pad: (top, bottom, left, right) pixels added.
    """

    original: tuple[int, int]
    processed: tuple[int, int]
    policy: str
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)


def geometry_for(
    height: int,
    width: int,
    policy: Policy = "resize64",
    multiple: int = 64,
    max_side: int | None = None,
) -> Geometry:
    """The :class:`Geometry` of ``height`` x ``width`` frames, computed without pixels.

    ``max_side`` (resize64 only, beyond the paper) first scales the frame down so its longer
    side is at most ``max_side``: a cheaper run at the cost of detail.
    """
    if policy not in _POLICIES:
        raise ConfigError(f"size policy {policy!r}: use 'resize64' or 'pad64'")
    if multiple < 1:
        raise ConfigError(f"multiple={multiple} must be at least 1")
    if height < multiple or width < multiple:
        raise FrameSizeError(
            f"frame is {width}x{height}; the feature grid needs at least "
            f"{multiple}x{multiple} pixels"
        )
    if policy == "resize64":
        scale = 1.0
        if max_side is not None:
            if max_side < multiple:
                raise ConfigError(f"max_side={max_side} must be at least {multiple}")
            scale = min(1.0, max_side / max(height, width))
        processed = (
            max(multiple, int(height * scale) // multiple * multiple),
            max(multiple, int(width * scale) // multiple * multiple),
        )
        return Geometry((height, width), processed, policy)
    if max_side is not None:
        raise ConfigError("max_side works with the resize64 policy only")
    processed = (-(-height // multiple) * multiple, -(-width // multiple) * multiple)
    pad = (0, processed[0] - height, 0, processed[1] - width)
    return Geometry((height, width), processed, policy, pad)


def prepare_frames(
    frames: torch.Tensor,
    policy: Policy = "resize64",
    multiple: int = 64,
    max_side: int | None = None,
    resize_filter: ResizeFilter = "pil-bicubic",
) -> tuple[torch.Tensor, Geometry]:
    """Frames uint8 ``[B, 3, H, W]`` -> float32 ``[B, 3, H', W']`` in [0, 1], and the geometry.

    "resize64" resizes with ``resize_filter``: "pil-bicubic" (default, METHOD 1.1) is what the
    reference code's ``frame_img.resize((width, height))`` does, PIL's antialiased bicubic on
    the 8-bit frame, reproduced byte for byte (:func:`zsvss_nb.resample.resize_uint8`);
    "bilinear" is zsvss 0.1's filter (``F.interpolate`` with half-pixel centres, antialiased only
    for a ``max_side`` downscale), kept to reproduce earlier results. "pad64" reflect-pads.
    """
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
        raise InputError(f"frames {frames.dtype} {list(frames.shape)}: expected uint8 [B, 3, H, W]")
    if resize_filter not in _RESIZE_FILTERS:
        raise ConfigError(f"resize_filter={resize_filter!r}: use 'pil-bicubic' or 'bilinear'")
    geometry = geometry_for(frames.shape[2], frames.shape[3], policy, multiple, max_side)
    if geometry.processed == geometry.original:
        return frames.to(torch.float32) / 255.0, geometry
    if geometry.policy == "pad64":
        top, bottom, left, right = geometry.pad
        x = frames.to(torch.float32) / 255.0
        return F.pad(x, (left, right, top, bottom), mode="reflect"), geometry
    if resize_filter == "pil-bicubic":
        from .resample import resize_uint8

        return resize_uint8(frames, geometry.processed, "bicubic").to(
            torch.float32
        ) / 255.0, geometry
    paper = tuple(side // multiple * multiple for side in geometry.original)
    x = F.interpolate(
        frames.to(torch.float32) / 255.0,
        size=geometry.processed,
        mode="bilinear",
        align_corners=False,
        antialias=geometry.processed != paper,
    ).clamp_(0.0, 1.0)
    return x, geometry


def _nearest_index(n_out: int, n_in: int, device: torch.device) -> torch.Tensor:
    """Source index of each of ``n_out`` samples over ``n_in`` pixels, sampling pixel centres."""
    centres = (torch.arange(n_out, device=device, dtype=torch.float64) + 0.5) * (n_in / n_out)
    return centres.floor().long().clamp_(0, n_in - 1)


def _reflect_index(n_out: int, n_in: int, device: torch.device) -> torch.Tensor:
    """Source index of each of ``n_out >= n_in`` positions, reflected past the end like
    ``F.pad(mode="reflect")`` (the edge pixel is not repeated)."""
    i = torch.arange(n_out, device=device)
    return torch.where(i < n_in, i, 2 * (n_in - 1) - i).clamp_(min=0)


def restore(
    x: torch.Tensor, geometry: Geometry, mode: Literal["bilinear", "nearest"] = "bilinear"
) -> torch.Tensor:
    """Map ``x: [..., H', W']`` at the processed size back to ``[..., H, W]``.

    pad64 crops the padding away (exact, any dtype, ``mode`` unused). resize64 interpolates:
    "bilinear" (floating x; half-pixel centres, as cv2 bilinear in the reference code) or
    "nearest" (any dtype, e.g. label ids; samples each output pixel's centre).
    """
    if tuple(x.shape[-2:]) != geometry.processed:
        raise FrameSizeError(
            f"tensor {list(x.shape)}: last two sides should be {list(geometry.processed)}"
        )
    if mode not in ("bilinear", "nearest"):
        raise ConfigError(f"restore mode {mode!r}: use 'bilinear' or 'nearest'")
    height, width = geometry.original
    if geometry.policy == "pad64":
        top, _, left, _ = geometry.pad
        return x[..., top : top + height, left : left + width]
    if geometry.processed == geometry.original:
        return x
    if mode == "nearest":
        rows = _nearest_index(height, geometry.processed[0], x.device)
        cols = _nearest_index(width, geometry.processed[1], x.device)
        return x.index_select(-2, rows).index_select(-1, cols)
    if not x.is_floating_point():
        raise InputError(f"bilinear restore needs a floating tensor, got {x.dtype}")
    flat = x.reshape(-1, 1, *geometry.processed)
    out = F.interpolate(flat, size=(height, width), mode="bilinear", align_corners=False)
    return out.reshape(*x.shape[:-2], height, width)


def to_grid(mask: torch.Tensor, geometry: Geometry, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Label mask ``[H, W]`` at the original size -> ``[h, w]`` on the feature grid (nearest).

    Follows the frames' geometry: for pad64 the mask is reflect-padded like the pixels, so a
    grid cell over reflected pixels gets the reflected label; then each grid cell takes the
    label at its centre. Used to label first-frame tokens from ground truth.
    """
    if mask.ndim != 2 or tuple(mask.shape) != geometry.original:
        raise LabelError(f"mask {list(mask.shape)}: expected {list(geometry.original)}")
    if mask.is_floating_point() or mask.is_complex():
        raise LabelError(f"mask dtype {mask.dtype}: expected integer label ids")
    h, w = grid_hw
    if h < 1 or w < 1:
        raise ConfigError(f"grid size {grid_hw} must be positive")
    if geometry.policy == "pad64":
        ph, pw = geometry.processed
        rows = _reflect_index(ph, geometry.original[0], mask.device)[
            _nearest_index(h, ph, mask.device)
        ]
        cols = _reflect_index(pw, geometry.original[1], mask.device)[
            _nearest_index(w, pw, mask.device)
        ]
    else:
        rows = _nearest_index(h, geometry.original[0], mask.device)
        cols = _nearest_index(w, geometry.original[1], mask.device)
    return mask.index_select(0, rows).index_select(1, cols).long()


# --------------------------------------------------------------------------------------------
# Writers


def _temp_path(path: Path) -> Path:
    """A fresh temporary name next to ``path`` (same filesystem, so os.replace is atomic).

    Only the name: the caller creates the file inside its try block, so an interrupt (SIGTERM,
    Ctrl-C) can never land between creating a temp file and knowing what to remove.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def _as_numpy(array: Any) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def write_video(
    path: str | os.PathLike[str],
    frames: Iterable[np.ndarray | torch.Tensor] | np.ndarray | torch.Tensor,
    fps: float,
    *,
    crf: int = 18,
) -> Path:
    """Write uint8 frames ``[H, W, 3]`` (an iterable, or an array ``[N, H, W, 3]``) as H.264 mp4.

    yuv420p needs even sides, so odd frames get one edge-replicated row/column at the
    bottom/right. Frames are encoded as they arrive (nothing is held in memory) into a temp
    file next to ``path``, renamed over ``path`` only on success.
    """
    import av

    if not (np.isfinite(fps) and fps > 0):
        raise InputError(f"{path}: fps={fps} must be a positive number")
    path = Path(path)
    codec = next((c for c in ("libx264", "h264", "libopenh264") if c in av.codecs_available), None)
    if codec is None:
        raise MissingDependencyError(f"{path}: this PyAV build has no H.264 encoder")
    tmp = _temp_path(path)
    count = 0
    try:
        # no "faststart": it rewrites the whole file to move the index to the front, doubling
        # the bytes written; local players and browsers play the single-pass file as it is
        with av.open(str(tmp), mode="w", format="mp4") as out:
            stream: Any = None
            for item in frames:
                frame = _as_numpy(item)
                if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                    raise InputError(
                        f"{path}: frame {count} is {frame.dtype} {list(frame.shape)}; "
                        "expected uint8 [H, W, 3]"
                    )
                if stream is None:
                    height, width = frame.shape[:2]
                    stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(100_000))
                    stream.width, stream.height = width + width % 2, height + height % 2
                    stream.pix_fmt = "yuv420p"
                    if codec == "libx264":
                        stream.options = {"crf": str(crf)}
                elif frame.shape[:2] != (height, width):
                    raise FrameSizeError(
                        f"{path}: frame {count} is {frame.shape[1]}x{frame.shape[0]}, "
                        f"frame 0 is {width}x{height}"
                    )
                if height % 2 or width % 2:
                    frame = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
                video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), "rgb24")
                out.mux(stream.encode(video_frame))
                count += 1
            if stream is None:
                raise EmptyVideoError(f"{path}: no frames to write")
            out.mux(stream.encode(None))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_png(
    path: str | os.PathLike[str],
    image: np.ndarray | torch.Tensor | Image.Image,
    palette: Sequence[int] | np.ndarray | None = None,
) -> Path:
    """Write a PNG through a temp file and rename, so no half-written PNG is ever visible.

    image: a PIL image, integer ids ``[H, W]`` in 0..255 (saved as mode "L", or as mode "P"
    when ``palette`` is given, so PIL reads the ids back), or uint8 RGB ``[H, W, 3]``.
    palette: flat [r, g, b, r, g, b, ...] or ``[n, 3]``, n <= 256.
    """
    path = Path(path)
    if isinstance(image, Image.Image):
        img = image
    else:
        arr = _as_numpy(image)
        if arr.dtype == np.bool_:
            arr = arr.astype(np.uint8)
        if arr.ndim == 2 and np.issubdtype(arr.dtype, np.integer):
            if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 255):
                raise LabelError(
                    f"{path}: ids span {int(arr.min())}..{int(arr.max())}; PNG ids need 0..255"
                )
            img = Image.fromarray(arr.astype(np.uint8))
        elif arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8:
            img = Image.fromarray(arr)
        else:
            raise InputError(
                f"{path}: image {arr.dtype} {list(arr.shape)}; expected integer [H, W] or "
                "uint8 [H, W, 3]"
            )
    if palette is not None:
        flat = np.asarray(palette).reshape(-1)
        if flat.size % 3 or flat.size > 768 or (flat.size and (flat.min() < 0 or flat.max() > 255)):
            raise InputError(f"{path}: palette needs at most 256 RGB triples in 0..255")
        if img.mode not in ("L", "P"):
            raise InputError(f"{path}: a palette needs an id image (mode L or P), got {img.mode}")
        img = img.copy()
        img.putpalette(flat.astype(np.uint8).tobytes())
    tmp = _temp_path(path)
    try:
        img.save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path

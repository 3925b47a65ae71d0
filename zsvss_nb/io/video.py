"""Video input and windowing: ``open_video`` and the window sequence (METHOD.md 1.5).

``open_video`` turns a frame folder, a list of image paths, a video file or an in-memory array
into a :class:`Video`: a lazy sequence of 8-bit RGB frames, consumed in windows of B frames that
read only their own frames (decoding in :mod:`zsvss_nb.io.decoders`). The frame-size policy
lives in :mod:`zsvss_nb.kernels.frames` and the writers in :mod:`zsvss_nb.io.writers`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from ..datasets import natural_key
from ..errors import (
    ConfigError,
    EmptyVideoError,
    FrameSizeError,
    InputError,
    MissingDependencyError,
    PathError,
    UnsupportedImageError,
    VideoDecodeError,
    VideoNotFoundError,
    os_problem,
)
from .decoders import (
    IMAGE_EXTENSIONS,
    SUPPORTED_MODES,
    VIDEO_EXTENSIONS,
    ArrayReader,
    DecordReader,
    ImageReader,
    PyAVReader,
    Reader,
    check_regular,
    one_line,
    open_regular,
    quiet_native_stderr,
)
from .writers import check_fps

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
        reader: Reader,
        length: int,
        size: tuple[int, int],
        fps: float | None,
        names: Sequence[str],
        source: str,
        inputs: Sequence[Path] = (),
    ) -> None:
        self._reader: Reader | None = reader
        self._length = length
        self._size = size
        self._fps = fps
        self._names = tuple(names)
        self._source = source
        self._inputs = tuple(inputs)

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

    @property
    def inputs(self) -> list[Path]:
        """The files and folders the frames are read from (none for an array): what an
        output must never overwrite."""
        return list(self._inputs)

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


def _open_images(
    paths: list[Path], fps: float | None, source: str, inputs: Sequence[Path] = ()
) -> Video:
    """Check headers (size and pixel format) without decoding pixels, then wrap the files."""
    seen: dict[str, Path] = {}
    size: tuple[int, int] | None = None
    for path in paths:
        if path.stem in seen:
            raise InputError(f"{path}: frame name {path.stem!r} also used by {seen[path.stem]}")
        seen[path.stem] = path
        f = open_regular(path)  # a folder, pipe or device named like a frame: an error
        try:
            with f, Image.open(f) as im:
                this, mode = im.size, im.mode
        except (OSError, Image.DecompressionBombError) as err:
            raise VideoDecodeError(f"{path}: cannot read image ({one_line(err)})") from err
        if mode not in SUPPORTED_MODES:
            raise UnsupportedImageError(f"{path}: image mode {mode} cannot be converted to RGB")
        if size is None:
            size = this
        elif this != size:
            raise FrameSizeError(
                f"{path}: frame is {this[0]}x{this[1]} but {paths[0].name} is "
                f"{size[0]}x{size[1]}; all frames must have one size"
            )
    assert size is not None
    names = [p.stem for p in paths]
    return Video(ImageReader(paths, size), len(paths), size, fps, names, source, inputs or paths)


def _open_video_file(path: Path, fps: float | None, backend: str) -> Video:
    """Open with decord, falling back to PyAV; both failing is a VideoDecodeError."""
    check_regular(path, "video file")  # a named pipe would block the decoder
    if path.stat().st_size == 0:
        raise VideoDecodeError(f"{path}: file is empty (0 bytes)")
    failures: list[str] = []
    reader: DecordReader | PyAVReader | None = None
    if backend in ("auto", "decord"):
        try:
            with quiet_native_stderr():
                reader = DecordReader(path)
        except ImportError:
            failures.append("decord is not installed")
        except Exception as err:  # any decord failure means: try the next decoder
            failures.append(f"decord: {one_line(err)}")
    if reader is None and backend in ("auto", "pyav"):
        try:
            with quiet_native_stderr():
                reader = PyAVReader(path)
        except ImportError:
            failures.append("PyAV is not installed")
        except Exception as err:
            failures.append(f"PyAV: {one_line(err)}")
    if reader is None:
        if all("not installed" in f for f in failures):
            raise MissingDependencyError(
                f"{path}: no video decoder available ({'; '.join(failures)}); pip install av"
            )
        raise VideoDecodeError(f"{path}: cannot decode video ({'; '.join(failures)})")
    fps = fps if fps is not None else reader.fps
    names = _index_names(reader.length)
    return Video(reader, reader.length, reader.size, fps, names, str(path), [path])


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
    return Video(ArrayReader(array), length, (width, height), fps, _index_names(length), source)


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
    if fps is not None:
        fps = check_fps(fps)
    if backend not in ("auto", "decord", "pyav"):
        raise ConfigError(f"backend={backend!r}: use 'auto', 'decord' or 'pyav'")
    if isinstance(src, (np.ndarray, torch.Tensor)):
        return _open_array(src, fps)
    if isinstance(src, (str, os.PathLike)):
        path = Path(src).expanduser()
        if not path.exists():
            raise VideoNotFoundError(f"{path}: no such file or folder")
        if path.is_dir():
            try:
                entries = list(path.iterdir())
            except OSError as err:
                raise PathError(f"{path}: cannot list the folder ({os_problem(err)})") from err
            # every entry named like a frame is one: anything but a readable regular image
            # file is an error naming it, never dropped (that would shift the frame indices)
            frames = [
                p
                for p in entries
                if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
            ]
            if not frames:
                raise EmptyVideoError(f"{path}: folder holds no jpg/jpeg/png frames")
            frames.sort(key=lambda p: natural_key(p.stem))
            return _open_images(frames, fps, str(path), [path])
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
            check_regular(path)
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise InputError(f"{path}: not a jpg/jpeg/png frame")
        source = f"<list of {len(paths)} images from {paths[0].parent}>"
        return _open_images(paths, fps, source, list(dict.fromkeys(p.parent for p in paths)))
    raise InputError(f"cannot open {type(src).__name__} as a video")


def take_frames(src: Any, n: int | None = None, start: int = 0, step: int = 1) -> Any:
    """A shorter video: frames ``start, start + step, ...``, at most ``n`` of them.

    ``src``: anything :func:`zsvss_nb.open_video` takes, or a Video. A folder of frames stays a
    list of its image files (frame names kept, so outputs and GT still match by name); other
    sources become an in-memory array video (names ``00000``...), fps divided by ``step``.
    """
    if (n is not None and n < 1) or start < 0 or step < 1:
        raise ConfigError(f"take_frames n={n}, start={start}, step={step}: need n, step >= 1")
    video = src if isinstance(src, Video) else open_video(src)
    idx = list(range(start, len(video), step))[:n]
    if not idx:
        raise InputError(f"{video.source}: no frame at start={start} of {len(video)} frames")
    fps = None if video.fps is None else video.fps / step
    folder = Path(video.source)
    if folder.is_dir():
        files = {p.stem: p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
        names = video.names
        if all(names[i] in files for i in idx):
            return open_video([files[names[i]] for i in idx], fps=fps)
    return open_video(video.read(idx), fps=fps)


__all__ = [
    "Video",
    "Window",
    "open_video",
    "take_frames",
    "window_spans",
]

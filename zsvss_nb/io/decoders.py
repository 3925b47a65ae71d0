"""Decoding: image files and video containers to 8-bit RGB frames, one reader per source kind.

Every reader returns uint8 [n, 3, H, W] for sorted, unique, in-range frame indices and holds
its file handles until :meth:`close`. :func:`to_rgb` is the one conversion of PIL's pixel
formats to RGB (lossless in meaning, or an error); decoder failures become one-line
:class:`~zsvss_nb.errors.VideoDecodeError` s naming the file.

Rotation: both video readers return frames as a player shows them, with the container's
rotation (the display matrix phones write) applied. decord applies it itself; PyAV reports it as
``VideoFrame.rotation`` (degrees counter-clockwise), which :class:`PyAVReader` applies, so
labels have the same size and orientation whichever decoder is installed.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import re
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import torch
from PIL import Image

from ..errors import (
    FrameSizeError,
    InputError,
    UnsupportedImageError,
    VideoDecodeError,
    VideoNotFoundError,
    os_problem,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
# Pixel formats that to_rgb converts (checked from the header at open time).
SUPPORTED_MODES = {"RGB", "L", "1", "P", "PA", "RGBA", "RGBa", "LA", "La", "CMYK", "YCbCr"}
SUPPORTED_MODES |= {"I", "I;16", "I;16L", "I;16B", "I;16N"}


# --------------------------------------------------------------------------------------------
# Pixel formats


def to_rgb(im: Image.Image, name: str) -> np.ndarray:
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


_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def open_regular(path: Path, what: str = "frame") -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file (links followed), else an
    InputError naming it. Opened non-blocking first, so a named pipe never blocks the run."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as err:
        if path.is_symlink():
            raise VideoNotFoundError(f"{path}: {what} is a broken symbolic link") from err
        raise VideoNotFoundError(f"{path}: {what} does not exist") from err
    except OSError as err:
        raise VideoDecodeError(f"{path}: cannot read the {what} ({os_problem(err)})") from err
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        raise InputError(f"{path}: {what} entry is {kind}, not an image file; move it away")
    return os.fdopen(fd, "rb")


def check_regular(path: Path, what: str = "frame") -> Path:
    """``path`` when it is a readable regular file (see :func:`open_regular`)."""
    open_regular(path, what).close()
    return path


def load_rgb(path: Path) -> np.ndarray:
    """Decode one image file to 8-bit RGB ``[H, W, 3]``."""
    f = open_regular(path)
    try:
        with f, Image.open(f) as im:
            im.load()
            return to_rgb(im, str(path))
    except (OSError, Image.DecompressionBombError) as err:
        raise VideoDecodeError(f"{path}: cannot decode image ({one_line(err)})") from err


def one_line(err: BaseException, limit: int = 200) -> str:
    """First non-empty line of an exception message, shortened (decord's span several lines).

    decord's C++ log prefix ("[10:20:09] /src/video/video_reader.cc:486: ") is dropped.
    """
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = lines[0] if lines else type(err).__name__
    text = re.sub(r"^\[\d{2}:\d{2}:\d{2}\] \S+:\d+: ", "", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
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


# --------------------------------------------------------------------------------------------
# Frame readers: each returns uint8 [n, 3, H, W] for sorted, unique, in-range indices


class Reader(Protocol):
    def read(self, indices: list[int]) -> torch.Tensor: ...

    def close(self) -> None: ...


class ImageReader:
    """Frames from image files; only the requested files are decoded."""

    def __init__(self, paths: list[Path], size: tuple[int, int]) -> None:
        self._paths = paths
        self._size = size  # (W, H)

    def read(self, indices: list[int]) -> torch.Tensor:
        width, height = self._size
        out = np.empty((len(indices), height, width, 3), dtype=np.uint8)
        for row, i in enumerate(indices):
            rgb = load_rgb(self._paths[i])
            if rgb.shape[:2] != (height, width):
                raise FrameSizeError(
                    f"{self._paths[i]}: decoded size {rgb.shape[1]}x{rgb.shape[0]} differs "
                    f"from its header size {width}x{height}"
                )
            out[row] = rgb
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()

    def close(self) -> None:
        pass


class ArrayReader:
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


class DecordReader:
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
            with quiet_native_stderr():
                frames = self._vr.get_batch(indices).asnumpy()
        except Exception as err:  # decord raises its own DECORDError and RuntimeErrors
            raise VideoDecodeError(
                f"{self._path}: decord failed on frames {indices[0]}..{indices[-1]} "
                f"({one_line(err)})"
            ) from err
        return torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()

    def close(self) -> None:
        self._vr = None


class PyAVReader:
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
        """The frame as displayed: RGB [H, W, 3] turned by its rotation (as decord does)."""
        rgb = frame.to_ndarray(format="rgb24")
        turns = round(float(getattr(frame, "rotation", 0) or 0) / 90) % 4
        return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb

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
                f"{self._path}: PyAV failed on frames {indices[0]}..{indices[-1]} ({one_line(err)})"
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

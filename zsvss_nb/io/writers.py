"""Every file zsvss writes goes through :func:`atomic_write`: a temp name, then a rename.

The temp file lives next to its target (same filesystem, so ``os.replace`` is atomic) and is
named ``.<target name>.<12 hex digits>.tmp``, one scheme for labels, colour PNGs, the overlay
video, manifests, model caches and figures, so :func:`remove_stale_temps` recognises what a
killed process left behind. A half-written file is never visible under its final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import sys
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import (
    EmptyVideoError,
    FrameSizeError,
    InputError,
    LabelError,
    MissingDependencyError,
    PathError,
    os_problem,
)

if TYPE_CHECKING:  # numpy, torch and PIL load on first use: the CLI takes its locks first
    import numpy as np
    import torch
    from PIL import Image

TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")


def temp_path(path: Path) -> Path:
    """A fresh temporary name next to ``path`` (only the name: the caller creates the file).

    Choosing the name before the file exists means an interrupt (SIGTERM, Ctrl-C) can never
    land between creating a temp file and knowing what to remove.
    """
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")


def is_temp_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is named like a temp file of :func:`atomic_write`."""
    return bool(_TEMP_NAME.match(Path(path).name))


def remove_stale_temps(folder: str | os.PathLike[str], recursive: bool = False) -> list[Path]:
    """Delete the temp files a killed process left in ``folder``; returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    candidates = folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")
    removed = []
    for path in candidates:
        if is_temp_file(path) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` to create the file at a temp name, then rename it over ``path``.

    On any failure (or interrupt) the temp file is removed and ``path`` is left as it was. A
    file-system failure (permission, read-only, disk full...) is a :class:`PathError` naming
    ``path``.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None:
            raise PathError(f"{path}: cannot write ({os_problem(err)})") from err
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON atomically (non-JSON values via ``str``)."""
    return atomic_write_text(path, json.dumps(data, indent=2, default=str))


FPS_RANGE = (0.001, 1000.0)  # frame rates an mp4 stores exactly (rate kept to 1/100000)


def check_fps(fps: Any, what: str = "fps") -> float:
    """``fps`` as a float, or an InputError: a number in :data:`FPS_RANGE` (a rate outside it
    would be stored as 0 or a rounded rate, and players fall back to 24)."""
    lo, hi = FPS_RANGE
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not lo <= fps <= hi:
        raise InputError(f"{what}={fps!r} must be a number in [{lo:g}, {hi:g}]")
    return float(fps)


def _as_numpy(array: Any) -> np.ndarray:
    import numpy as np

    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported
    if torch is not None and isinstance(array, torch.Tensor):
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
    import numpy as np

    check_fps(fps, f"{path}: fps")
    path = Path(path)
    codec = next((c for c in ("libx264", "h264", "libopenh264") if c in av.codecs_available), None)
    if codec is None:
        raise MissingDependencyError(f"{path}: this PyAV build has no H.264 encoder")

    def encode(tmp: Path) -> None:
        count = 0
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

    return atomic_write(path, encode)


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
    import numpy as np
    from PIL import Image

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
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))

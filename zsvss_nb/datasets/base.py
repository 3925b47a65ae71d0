"""What every dataset format shares: the video list, the format record, the registry, GT reading.

A format is a :class:`DatasetFormat`: its name, the reader that lists a root's videos, frames and
labels, its class set and ignore id, how a label PNG becomes ids, its colours, whether unknown
GT ids are an error when scoring, and the settings recommended for it. :func:`register` adds one
to the registry, :func:`open_dataset` opens a root with the registered format of that name; the
built-in formats are registered by :mod:`zsvss_nb.datasets`. The listing helpers here
(:func:`list_images`, :func:`label_map`, :func:`read_split`, :func:`select_videos`) are what the
readers are made of.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ConfigError, DatasetLayoutError, LabelError, PathError, os_problem

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".webm", ".avi")

RGB = tuple[int, int, int]


@dataclass
class VideoItem:
    """One video: ordered frame paths and the GT label PNGs that exist (frame stem -> path).

    ``source`` is the frame folder or, for a video file, the file itself (then ``frames`` is
    empty and label keys are zero-padded frame indices ``00000``, ``00001``...).
    """

    name: str
    frames: list[Path]
    labels: dict[str, Path] = field(default_factory=dict)
    source: Path | None = None

    @property
    def frame_names(self) -> list[str]:
        """Frame stems in time order (the label stems, sorted, when the frames are not listed)."""
        if self.frames:
            return [p.stem for p in self.frames]
        return sorted(self.labels, key=natural_key)

    @property
    def first_frame_gt(self) -> Path | None:
        """The label PNG of the first frame, or None when that frame is unlabelled."""
        if self.frames:
            return self.labels.get(self.frames[0].stem)
        if self.source is not None and self.source.suffix.lower() in VIDEO_EXTS:
            return self.labels.get(f"{0:05d}")
        return None


@dataclass
class Dataset:
    """A dataset root read in one format: class set, ignore id and the ordered video list.

    ``name`` is the format's registry name; :attr:`format` looks the format up.
    """

    name: str
    root: Path
    num_classes: int
    ignore_index: int | None
    class_names: list[str] | None
    videos: list[VideoItem]
    binary_gt: bool = False  # 0/255 object masks read as {0, 1} (DAVIS 2016)

    @property
    def format(self) -> DatasetFormat | None:
        """The registered format this dataset was read in (None for a name not registered)."""
        return find_format(self.name)

    @property
    def recommended(self) -> dict[str, Any]:
        """The settings recommended for this dataset's format (empty for an unregistered name)."""
        fmt = self.format
        return {} if fmt is None else dict(fmt.recommended)

    def read_label(self, path: str | os.PathLike[str]) -> np.ndarray:
        """GT ids of one label PNG under this dataset's conventions: [H, W] int64."""
        fmt = self.format
        reader = load_gt if fmt is None else fmt.read_label
        return reader(path, binary=self.binary_gt)

    def video(self, name: str) -> VideoItem:
        """The video called ``name``."""
        for v in self.videos:
            if v.name == name:
                return v
        raise DatasetLayoutError(f"{self.root}: {self.name} dataset has no video {name!r}")


def natural_key(text: str) -> tuple[Any, ...]:
    """Sort key in which digit runs compare as numbers ("f2" < "f10"), case-insensitively,
    with the name itself as the tie-break so the order never depends on directory order."""
    parts = re.split(r"(\d+)", text)
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts)) + (text,)


def load_gt(path: str | os.PathLike[str], binary: bool | None = None) -> np.ndarray:
    """Read a label PNG as ids: [H, W] int64.

    Mode ``P`` gives palette indices (DAVIS 2017 object ids, VSPW), ``L``/``I`` the stored values.
    ``binary=True`` maps an object mask to {0, 1} (any non-zero value -> 1); ``None`` does so only
    when a mode-``L`` mask holds exactly the values {0, 255} (DAVIS 2016 style). Dataset readers
    pass the flag explicitly, so a semantic mask that happens to hold only 0 and 255 is not
    mistaken for an object mask.
    """
    p = Path(path)
    try:
        with Image.open(p) as im:
            im.load()
            mode = im.mode
            if mode in ("RGB", "RGBA", "CMYK", "YCbCr", "HSV", "LAB"):
                raise LabelError(
                    f"{p}: label is a {mode} colour image; expected single-channel ids (mode L/P)"
                )
            arr = np.array(im)
    except FileNotFoundError as e:
        raise LabelError(f"{p}: label file does not exist") from e
    except (UnidentifiedImageError, OSError) as e:
        raise LabelError(f"{p}: cannot read label image ({e})") from e
    if arr.ndim == 3:  # LA / PA: the id is the first channel
        arr = arr[..., 0]
    ids = arr.astype(np.int64)
    if binary is None:
        binary = mode == "L" and _is_zero_255(ids)
    if binary:
        ids = (ids != 0).astype(np.int64)
    return ids


def _is_zero_255(ids: np.ndarray) -> bool:
    values = np.unique(ids)
    return bool(255 in values and np.isin(values, (0, 255)).all())


# ---------------------------------------------------------------- the format record


@dataclass(frozen=True)
class Palette:
    """A format's class colours: a published ``table`` (RGB by id; every other id, the ignore id
    among them, gets ``fill``), or with ``embedded`` the palette stored in its mode "P" label
    PNGs instead (the VOC palette when a dataset's masks carry none)."""

    table: tuple[RGB, ...] = ()
    fill: RGB = (0, 0, 0)
    embedded: bool = False


@dataclass(frozen=True)
class OpenOptions:
    """What the caller of :func:`open_dataset` asked for beyond root and split: class count and
    ignore id overrides (a reader that infers the class count needs them), DAVIS's resolution."""

    num_classes: int | None = None
    ignore_index: int | None = None
    resolution: str = "480p"


Reader = Callable[["DatasetFormat", Path, "str | None", OpenOptions], Dataset]


@dataclass(frozen=True)
class DatasetFormat:
    """One dataset format, as the registry holds it.

    ``read(fmt, root, split, options)`` lists the videos of an existing folder ``root`` (raising
    DatasetLayoutError naming root, format and the expected layout when it does not match) and
    returns the :class:`Dataset`, normally through :meth:`dataset`. ``num_classes`` /
    ``ignore_index`` / ``class_names`` are the format's defaults (a reader may find others, e.g.
    DAVIS's object count); ``read_label(path, binary=...)`` turns a label PNG into ids [H, W];
    ``palette``: its colours (None: cluster colours); ``strict_ids``: scoring treats a GT id
    outside the classes that is not the ignore id as an error (VSPW's official evaluator does
    not). ``recommended``: settings recommended for this format (config field -> value),
    recorded in run manifests.
    """

    name: str
    read: Reader
    num_classes: int | None
    ignore_index: int | None
    class_names: tuple[str, ...] | None = None
    read_label: Callable[..., np.ndarray] = load_gt
    palette: Palette | None = None
    strict_ids: bool = True
    recommended: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def dataset(self, root: Path, videos: list[VideoItem], **changes: Any) -> Dataset:
        """The :class:`Dataset` of ``videos`` with this format's defaults, ``changes`` applied
        (``num_classes``, ``ignore_index``, ``class_names``, ``binary_gt``)."""
        names = None if self.class_names is None else list(self.class_names)
        values: dict[str, Any] = {
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "class_names": names,
        }
        values.update(changes)
        return Dataset(self.name, root, videos=videos, **values)


_REGISTRY: dict[str, DatasetFormat] = {}


def register(fmt: DatasetFormat) -> DatasetFormat:
    """Add ``fmt`` to the registry (open_dataset, the CLI, evaluation and the palettes read it);
    a name already registered is a ConfigError."""
    if fmt.name in _REGISTRY:
        raise ConfigError(f"dataset format {fmt.name!r} is already registered")
    _REGISTRY[fmt.name] = fmt
    return fmt


def unregister(name: str) -> None:
    """Remove the format ``name`` from the registry (a name not registered is a ConfigError)."""
    lookup(name)
    del _REGISTRY[name]


def find_format(name: str) -> DatasetFormat | None:
    """The registered format called ``name``, or None."""
    return _REGISTRY.get(name)


def lookup(name: str) -> DatasetFormat:
    """The registered format called ``name``; ConfigError listing the formats otherwise."""
    fmt = _REGISTRY.get(name)
    if fmt is None:
        raise ConfigError(
            f"dataset format {name!r} is unknown; choose one of {', '.join(format_names())}"
        )
    return fmt


def formats() -> tuple[DatasetFormat, ...]:
    """The registered formats in registration order."""
    return tuple(_REGISTRY.values())


def format_names() -> tuple[str, ...]:
    """The names of the registered formats in registration order."""
    return tuple(_REGISTRY)


def open_dataset(
    fmt: str,
    root: str | os.PathLike[str],
    split: str | None = None,
    *,
    num_classes: int | None = None,
    ignore_index: int | None = None,
    resolution: str = "480p",
) -> Dataset:
    """Open ``root`` as a dataset of the registered format ``fmt`` (see :func:`format_names`).

    ``num_classes`` / ``ignore_index`` override the format's defaults; ``resolution`` picks the
    DAVIS image folder. A root whose layout does not match raises DatasetLayoutError.
    """
    spec = lookup(fmt)
    r = Path(root)
    if not r.is_dir():
        raise DatasetLayoutError(f"{r}: {fmt} dataset root does not exist or is not a folder")
    ds = spec.read(spec, r, split, OpenOptions(num_classes, ignore_index, resolution))
    if num_classes is not None:
        if num_classes < 1:
            raise ConfigError(f"num_classes={num_classes} must be at least 1")
        ds.num_classes = num_classes
    if ignore_index is not None:
        ds.ignore_index = ignore_index
    if ds.class_names is not None and len(ds.class_names) != ds.num_classes:
        ds.class_names = None
    return ds


# ---------------------------------------------------------------- listing helpers


def layout_error(root: Path, fmt: str, expected: str) -> DatasetLayoutError:
    """The error of a root that is not laid out as format ``fmt`` expects."""
    return DatasetLayoutError(f"{root}: not a {fmt} dataset; expected {expected}")


def list_entries(folder: Path) -> list[Path]:
    """The entries of ``folder`` (unordered); PathError when it cannot be listed."""
    try:
        return list(folder.iterdir())
    except OSError as err:
        raise PathError(f"{folder}: cannot list the folder ({os_problem(err)})") from err


def list_images(folder: Path, exts: Sequence[str] = IMAGE_EXTS) -> list[Path]:
    """The image files of ``folder`` in natural order; a broken symbolic link among them is an
    error naming it (skipping it would shift every later frame index)."""
    if not folder.is_dir():
        return []
    files = []
    for p in list_entries(folder):
        if p.suffix.lower() not in exts:
            continue
        if p.is_symlink() and not p.exists():
            raise DatasetLayoutError(f"{p}: frame or label is a broken symbolic link")
        if p.is_file():
            files.append(p)
    return sorted(files, key=lambda p: natural_key(p.name))


def label_map(folder: Path) -> dict[str, Path]:
    """The label PNGs of ``folder`` by stem (empty when the folder does not exist)."""
    return {p.stem: p for p in list_images(folder, (".png",))}


def read_split(path: Path, fmt: str, root: Path) -> list[str]:
    """The video names a split file lists, one per line; a missing file is a layout error."""
    if not path.is_file():
        raise layout_error(root, fmt, f"split file {path}")
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def select_videos(
    names: Sequence[str], wanted: Sequence[str] | None, root: Path, fmt: str
) -> list[str]:
    """``wanted`` (split order ignored, natural sort) checked against the videos present."""
    if wanted is None:
        return sorted(names, key=natural_key)
    present = set(names)
    missing = [w for w in wanted if w not in present]
    if missing:
        raise DatasetLayoutError(
            f"{root}: {fmt} split lists video {missing[0]!r} that has no frame folder "
            f"({len(missing)} missing)"
        )
    return sorted(dict.fromkeys(wanted), key=natural_key)

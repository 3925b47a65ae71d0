"""Dataset readers: VSPW, DAVIS, CamVid (11 and 32 classes), Cityscapes sequences, plain folders.

Every reader returns a :class:`Dataset` listing its videos as :class:`VideoItem` s (ordered frame
paths plus the ground-truth label PNGs that exist, keyed by frame stem). Nothing is decoded at
open time except, where the class count must be inferred, the label PNGs. Layouts:

- ``vspw``: ``root/data/<video>/origin/*.jpg`` + ``root/data/<video>/mask/*.png``; the split
  files ``root/{train,val,test}.txt`` list one video per line. 124 classes, ignore 255. Videos
  are sorted naturally ("2" before "10"), as the reference script sorts them numerically.
- ``davis``: ``root/JPEGImages/<res>/<video>/*.jpg`` + ``root/Annotations/<res>/<video>/*.png``
  (``res`` = ``480p``), split ``root/ImageSets/{2017,2016}/<split>.txt`` (``split="val"`` tries
  2017 then 2016; ``"2016/val"`` picks one); or the flat layout ``root/<video>/JPEGImages`` +
  ``root/<video>/Annotations``. 0/255 masks (DAVIS 2016) read as 2 classes {0, 1} with no
  ignore id; palette masks (DAVIS 2017) read as their palette indices (object ids), ignore 255.
- ``camvid`` / ``camvid32``: the SegNet layout ``root/{train,val,test}/*.png`` +
  ``root/{train,val,test}annot/*.png``, frames grouped into videos by the sequence prefix before
  the last ``_`` (``0006R0_f00930`` -> ``0006R0``); or the flat layout
  ``root/<clip>/{images,labels}/*.png``. ``camvid``: 11 classes, void 11 ignored; ``camvid32``:
  32 classes, ignore 255 (both overridable). Labels are id PNGs; colour-coded RGB labels are not
  decoded.
- ``cityscapes``: ``root/leftImg8bit_sequence/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png``
  grouped into one video per ``(city, seq)`` (the 30-frame snippets); the GT
  ``root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png`` exists for the
  20th frame only. 19 classes, ignore 255. ``split`` defaults to ``val``.
- ``folder``: ``root/<video>/`` holding frame images (or ``root/<video>/frames/``), or a video
  file ``root/<video>.mp4`` (also .mov, .mkv, .webm, .avi); a root that itself holds images is one
  video. Optional labels ``root/labels/<video>/<frame stem>.png``; for a video file the label
  stems are 0-based frame indices. ``num_classes`` comes from the caller or is inferred as the
  largest label id (other than ``ignore_index``, default 255) + 1; 0 when there are no labels.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ConfigError, DatasetLayoutError, LabelError, PathError, os_problem

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
FORMATS = ("vspw", "davis", "camvid", "camvid32", "cityscapes", "folder")

# fmt: off
CAMVID11_CLASSES = [
    "sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car",
    "pedestrian", "bicyclist",
]
CITYSCAPES_CLASSES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
]
# fmt: on


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
    """A dataset root read in one format: class set, ignore id and the ordered video list."""

    name: str
    root: Path
    num_classes: int
    ignore_index: int | None
    class_names: list[str] | None
    videos: list[VideoItem]
    binary_gt: bool = False  # 0/255 object masks read as {0, 1} (DAVIS 2016)

    def read_label(self, path: str | os.PathLike[str]) -> np.ndarray:
        """GT ids of one label PNG under this dataset's conventions: [H, W] int64."""
        return load_gt(path, binary=self.binary_gt)

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


def open_dataset(
    fmt: str,
    root: str | os.PathLike[str],
    split: str | None = None,
    *,
    num_classes: int | None = None,
    ignore_index: int | None = None,
    resolution: str = "480p",
) -> Dataset:
    """Open ``root`` as a dataset of format ``fmt`` (one of :data:`FORMATS`).

    ``num_classes`` / ``ignore_index`` override the format's defaults; ``resolution`` picks the
    DAVIS image folder. A root whose layout does not match raises DatasetLayoutError.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"dataset format {fmt!r} is unknown; choose one of {', '.join(FORMATS)}")
    r = Path(root)
    if not r.is_dir():
        raise DatasetLayoutError(f"{r}: {fmt} dataset root does not exist or is not a folder")
    if fmt == "vspw":
        ds = _open_vspw(r, split)
    elif fmt == "davis":
        ds = _open_davis(r, split, resolution)
    elif fmt in ("camvid", "camvid32"):
        ds = _open_camvid(r, split, fmt)
    elif fmt == "cityscapes":
        ds = _open_cityscapes(r, split or "val")
    else:
        ds = _open_folder(r, split, num_classes, 255 if ignore_index is None else ignore_index)
    if num_classes is not None:
        if num_classes < 1:
            raise ConfigError(f"num_classes={num_classes} must be at least 1")
        ds.num_classes = num_classes
    if ignore_index is not None:
        ds.ignore_index = ignore_index
    if ds.class_names is not None and len(ds.class_names) != ds.num_classes:
        ds.class_names = None
    return ds


def _layout_error(root: Path, fmt: str, expected: str) -> DatasetLayoutError:
    return DatasetLayoutError(f"{root}: not a {fmt} dataset; expected {expected}")


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError as err:
        raise PathError(f"{folder}: cannot list the folder ({os_problem(err)})") from err


def _images(folder: Path, exts: Sequence[str] = IMAGE_EXTS) -> list[Path]:
    """The image files of ``folder`` in natural order; a broken symbolic link among them is an
    error naming it (skipping it would shift every later frame index)."""
    if not folder.is_dir():
        return []
    files = []
    for p in _entries(folder):
        if p.suffix.lower() not in exts:
            continue
        if p.is_symlink() and not p.exists():
            raise DatasetLayoutError(f"{p}: frame or label is a broken symbolic link")
        if p.is_file():
            files.append(p)
    return sorted(files, key=lambda p: natural_key(p.name))


def _label_map(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in _images(folder, (".png",))}


def _read_split(path: Path, fmt: str, root: Path) -> list[str]:
    if not path.is_file():
        raise _layout_error(root, fmt, f"split file {path}")
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def _select(names: Sequence[str], wanted: Sequence[str] | None, root: Path, fmt: str) -> list[str]:
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


def _open_vspw(root: Path, split: str | None) -> Dataset:
    data = root / "data"
    if not data.is_dir():
        raise _layout_error(root, "vspw", "root/data/<video>/origin/*.jpg and mask/*.png")
    names = [d.name for d in data.iterdir() if (d / "origin").is_dir()]
    if not names:
        raise _layout_error(root, "vspw", "root/data/<video>/origin/*.jpg and mask/*.png")
    wanted = None if split is None else _read_split(root / f"{split}.txt", "vspw", root)
    videos = [
        VideoItem(n, _images(data / n / "origin"), _label_map(data / n / "mask"), data / n)
        for n in _select(names, wanted, root, "vspw")
    ]
    return Dataset("vspw", root, 124, 255, None, videos)


def _open_davis(root: Path, split: str | None, resolution: str) -> Dataset:
    img_root = root / "JPEGImages" / resolution
    expected = (
        f"root/JPEGImages/{resolution}/<video>/*.jpg + root/Annotations/{resolution}/<video>/*.png"
        " or root/<video>/JPEGImages/*.jpg + root/<video>/Annotations/*.png"
    )
    if img_root.is_dir():
        ann_root = root / "Annotations" / resolution
        names = [d.name for d in img_root.iterdir() if d.is_dir()]
        wanted = None
        if split is not None:
            if "/" in split:
                cands = [root / "ImageSets" / f"{split}.txt"]
            else:
                cands = [root / "ImageSets" / y / f"{split}.txt" for y in ("2017", "2016")]
            found = next((c for c in cands if c.is_file()), cands[0])
            wanted = _read_split(found, "davis", root)
        videos = [
            VideoItem(n, _images(img_root / n), _label_map(ann_root / n), img_root / n)
            for n in _select(names, wanted, root, "davis")
        ]
    else:
        flat = [d for d in root.iterdir() if (d / "JPEGImages").is_dir()]
        if (root / "JPEGImages").is_dir():
            flat = [root]
        if not flat:
            raise _layout_error(root, "davis", expected)
        wanted = None if split is None else _read_split(root / f"{split}.txt", "davis", root)
        by_name = {d.name: d for d in flat}
        videos = [
            VideoItem(
                n,
                _images(by_name[n] / "JPEGImages"),
                _label_map(by_name[n] / "Annotations"),
                by_name[n] / "JPEGImages",
            )
            for n in _select(list(by_name), wanted, root, "davis")
        ]
    first = next((v.labels[k] for v in videos for k in v.frame_names if k in v.labels), None)
    if first is None:
        return Dataset("davis", root, 2, None, None, videos, binary_gt=True)
    with Image.open(first) as im:
        palette = im.mode == "P"
    if not palette:
        return Dataset("davis", root, 2, None, ["background", "object"], videos, binary_gt=True)
    # Object ids of DAVIS 2017 all appear in the first annotated frame of their video.
    top = 0
    for v in videos:
        if v.first_frame_gt is not None:
            ids = load_gt(v.first_frame_gt, binary=False)
            top = max(top, int(ids[ids != 255].max(initial=0)))
    return Dataset("davis", root, top + 1, 255, None, videos)


def _camvid_defaults(fmt: str) -> tuple[int, int, list[str] | None]:
    return (11, 11, list(CAMVID11_CLASSES)) if fmt == "camvid" else (32, 255, None)


def _open_camvid(root: Path, split: str | None, fmt: str) -> Dataset:
    num_classes, ignore, names = _camvid_defaults(fmt)
    expected = (
        "root/{train,val,test}/*.png + root/{train,val,test}annot/*.png "
        "or root/<clip>/images/*.png + root/<clip>/labels/*.png"
    )
    splits = [s for s in ("train", "val", "test") if (root / s).is_dir()]
    if splits:
        if split is not None:
            if split not in splits:
                raise _layout_error(root, fmt, f"split folder {root / split}")
            splits = [split]
        videos: list[VideoItem] = []
        for s in splits:
            groups: dict[str, list[Path]] = {}
            for p in _images(root / s):
                groups.setdefault(p.stem.rsplit("_", 1)[0], []).append(p)
            labels = _label_map(root / f"{s}annot")
            for prefix in sorted(groups, key=natural_key):
                frames = groups[prefix]
                name = prefix if len(splits) == 1 else f"{s}-{prefix}"
                lab = {p.stem: labels[p.stem] for p in frames if p.stem in labels}
                videos.append(VideoItem(name, frames, lab, root / s))
        return Dataset(fmt, root, num_classes, ignore, names, videos)
    clips = [d for d in root.iterdir() if (d / "images").is_dir()]
    if (root / "images").is_dir():
        clips = [root]
    if not clips:
        raise _layout_error(root, fmt, expected)
    if split is not None:
        raise _layout_error(root, fmt, f"split folders root/{split} (the flat layout has none)")
    videos = [
        VideoItem(d.name, _images(d / "images"), _label_map(d / "labels"), d / "images")
        for d in sorted(clips, key=lambda d: natural_key(d.name))
    ]
    return Dataset(fmt, root, num_classes, ignore, names, videos)


_CITY_FRAME = re.compile(r"^(?P<city>.+)_(?P<seq>\d+)_(?P<frame>\d+)_leftImg8bit$")


def _open_cityscapes(root: Path, split: str) -> Dataset:
    seq_root = root / "leftImg8bit_sequence" / split
    expected = (
        f"root/leftImg8bit_sequence/{split}/<city>/<city>_<seq>_<frame>_leftImg8bit.png"
        f" (+ root/gtFine/{split}/<city>/*_gtFine_labelTrainIds.png)"
    )
    if not seq_root.is_dir():
        raise _layout_error(root, "cityscapes", expected)
    groups: dict[str, list[Path]] = {}
    for city in sorted(d for d in seq_root.iterdir() if d.is_dir()):
        for p in _images(city, (".png",)):
            m = _CITY_FRAME.match(p.stem)
            if m:
                groups.setdefault(f"{m['city']}_{m['seq']}", []).append(p)
    if not groups:
        raise _layout_error(root, "cityscapes", expected)
    gt_root = root / "gtFine" / split
    labels: dict[str, Path] = {}
    if gt_root.is_dir():
        for city in (d for d in gt_root.iterdir() if d.is_dir()):
            for p in city.glob("*_gtFine_labelTrainIds.png"):
                labels[p.name.removesuffix("_gtFine_labelTrainIds.png")] = p
        if not labels and any(gt_root.glob("*/*_gtFine_labelIds.png")):
            raise _layout_error(
                root,
                "cityscapes",
                "*_gtFine_labelTrainIds.png in gtFine (make them with cityscapesscripts' "
                "createTrainIdLabelImgs)",
            )
    videos = []
    for name in sorted(groups, key=natural_key):
        frames = groups[name]
        lab = {}
        for p in frames:
            key = p.stem.removesuffix("_leftImg8bit")
            if key in labels:
                lab[p.stem] = labels[key]
        videos.append(VideoItem(name, frames, lab, frames[0].parent))
    return Dataset("cityscapes", root, 19, 255, list(CITYSCAPES_CLASSES), videos)


def _open_folder(
    root: Path, split: str | None, num_classes: int | None, ignore_index: int
) -> Dataset:
    expected = (
        "root/<video>/*.jpg|png (or root/<video>/frames/), root/<video>.mp4, or images in root; "
        "optional labels root/labels/<video>/<frame>.png"
    )
    if split is not None:
        raise _layout_error(root, "folder", "no split (the folder format has none)")
    found: dict[str, tuple[list[Path], Path, Path]] = {}  # name -> frames, source, entry
    for entry in [] if _images(root) else sorted(_entries(root), key=lambda p: p.name):
        if entry.is_symlink() and not entry.exists():
            raise DatasetLayoutError(f"{entry}: video is a broken symbolic link")
        name, frames, source = entry.name, [], None
        if entry.is_file() and entry.suffix.lower() in VIDEO_EXTS:
            name, source = entry.stem, entry
        elif entry.is_dir() and entry.name != "labels":
            cand = next((c for c in (entry, entry / "frames") if _images(c)), None)
            vids = [p for p in _entries(entry) if p.suffix.lower() in VIDEO_EXTS]
            if cand is None and len(vids) > 1:
                raise DatasetLayoutError(
                    f"{entry}: holds {len(vids)} video files; use one per folder"
                )
            frames, source = (_images(cand), cand) if cand else ([], vids[0] if vids else None)
        if source is None:
            continue
        if name in found:  # entries are sorted by name, so the message does not depend on order
            both = f"{found[name][2].name} and {entry.name}"
            raise DatasetLayoutError(f"{root}: {both} are both video {name!r}; rename one")
        found[name] = (frames, source, entry)
    if _images(root):
        found[root.name] = (_images(root), root, root)
    if not found:
        raise _layout_error(root, "folder", expected)
    videos = []
    for name in sorted(found, key=natural_key):
        frames, source, _ = found[name]
        labels = _label_map(root / "labels" / name)
        if not frames:
            bad = [k for k in labels if not k.isdigit()]
            if bad:
                raise DatasetLayoutError(
                    f"{root / 'labels' / name}: label {bad[0]!r}.png of video file {source.name} "
                    "must be named by its 0-based frame index"
                )
            labels = {f"{int(k):05d}": p for k, p in labels.items()}
        else:
            stems = {p.stem for p in frames}
            stray = sorted((k for k in labels if k not in stems), key=natural_key)
            if stray:
                raise DatasetLayoutError(
                    f"{root / 'labels' / name}: label {stray[0]}.png matches no frame of {source}"
                )
        videos.append(VideoItem(name, frames, labels, source))
    if num_classes is None:
        top = -1
        for v in videos:
            for p in v.labels.values():
                ids = load_gt(p, binary=False)
                top = max(top, int(ids[ids != ignore_index].max(initial=-1)))
        num_classes = top + 1
    return Dataset("folder", root, num_classes, ignore_index, None, videos)

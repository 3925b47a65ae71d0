"""Plain folders: one video per frame folder or video file, optional id-PNG labels.

``root/<video>/`` holding frame images (or ``root/<video>/frames/``), or a video file
``root/<video>.mp4`` (also .mov, .mkv, .webm, .avi); a root that itself holds images is one
video. Optional labels ``root/labels/<video>/<frame stem>.png``; for a video file the label stems
are 0-based frame indices. ``num_classes`` comes from the caller or is inferred as the largest
label id (other than the ignore id, default 255) + 1; 0 when there are no labels.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DatasetLayoutError
from .base import (
    VIDEO_EXTS,
    Dataset,
    DatasetFormat,
    OpenOptions,
    VideoItem,
    label_map,
    layout_error,
    list_entries,
    list_images,
    load_gt,
    natural_key,
)

EXPECTED = (
    "root/<video>/*.jpg|png (or root/<video>/frames/), root/<video>.mp4, or images in root; "
    "optional labels root/labels/<video>/<frame>.png"
)


def _sources(root: Path) -> dict[str, tuple[list[Path], Path]]:
    """Video name -> (frames, source) for every video of ``root``."""
    found: dict[str, tuple[list[Path], Path, Path]] = {}  # name -> frames, source, entry
    for entry in [] if list_images(root) else sorted(list_entries(root), key=lambda p: p.name):
        if entry.is_symlink() and not entry.exists():
            raise DatasetLayoutError(f"{entry}: video is a broken symbolic link")
        name, frames, source = entry.name, [], None
        if entry.is_file() and entry.suffix.lower() in VIDEO_EXTS:
            name, source = entry.stem, entry
        elif entry.is_dir() and entry.name != "labels":
            cand = next((c for c in (entry, entry / "frames") if list_images(c)), None)
            vids = [p for p in list_entries(entry) if p.suffix.lower() in VIDEO_EXTS]
            if cand is None and len(vids) > 1:
                raise DatasetLayoutError(
                    f"{entry}: holds {len(vids)} video files; use one per folder"
                )
            frames, source = (list_images(cand), cand) if cand else ([], vids[0] if vids else None)
        if source is None:
            continue
        if name in found:  # entries are sorted by name, so the message does not depend on order
            both = f"{found[name][2].name} and {entry.name}"
            raise DatasetLayoutError(f"{root}: {both} are both video {name!r}; rename one")
        found[name] = (frames, source, entry)
    if list_images(root):
        found[root.name] = (list_images(root), root, root)
    return {name: (frames, source) for name, (frames, source, _) in found.items()}


def _labels(root: Path, name: str, frames: list[Path], source: Path) -> dict[str, Path]:
    """The labels of video ``name``, checked against its frames (or frame indices)."""
    labels = label_map(root / "labels" / name)
    if not frames:
        bad = [k for k in labels if not k.isdigit()]
        if bad:
            raise DatasetLayoutError(
                f"{root / 'labels' / name}: label {bad[0]!r}.png of video file {source.name} "
                "must be named by its 0-based frame index"
            )
        return {f"{int(k):05d}": p for k, p in labels.items()}
    stems = {p.stem for p in frames}
    stray = sorted((k for k in labels if k not in stems), key=natural_key)
    if stray:
        raise DatasetLayoutError(
            f"{root / 'labels' / name}: label {stray[0]}.png matches no frame of {source}"
        )
    return labels


def read(fmt: DatasetFormat, root: Path, split: str | None, options: OpenOptions) -> Dataset:
    """The videos of ``root``; the class count inferred from the labels unless given."""
    if split is not None:
        raise layout_error(root, fmt.name, "no split (the folder format has none)")
    ignore = fmt.ignore_index if options.ignore_index is None else options.ignore_index
    found = _sources(root)
    if not found:
        raise layout_error(root, fmt.name, EXPECTED)
    videos = []
    for name in sorted(found, key=natural_key):
        frames, source = found[name]
        videos.append(VideoItem(name, frames, _labels(root, name, frames, source), source))
    num_classes = options.num_classes
    if num_classes is None:
        top = -1
        for v in videos:
            for p in v.labels.values():
                ids = load_gt(p, binary=False)
                top = max(top, int(ids[ids != ignore].max(initial=-1)))
        num_classes = top + 1
    return fmt.dataset(root, videos, num_classes=num_classes, ignore_index=ignore)


FORMAT = DatasetFormat("folder", read, None, 255)

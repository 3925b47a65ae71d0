"""VSPW: ``root/data/<video>/origin/*.jpg`` + ``root/data/<video>/mask/*.png``.

The split files ``root/{train,val,test}.txt`` list one video per line. 124 classes, ignore 255,
palette masks. Videos are sorted naturally ("2" before "10"), as the reference script sorts them
numerically. The official evaluator counts only GT ids in [0, 124), so scoring is lenient.
"""

from __future__ import annotations

from pathlib import Path

from .base import (
    Dataset,
    DatasetFormat,
    OpenOptions,
    Palette,
    VideoItem,
    label_map,
    layout_error,
    list_images,
    read_split,
    select_videos,
)

EXPECTED = "root/data/<video>/origin/*.jpg and mask/*.png"


def read(fmt: DatasetFormat, root: Path, split: str | None, options: OpenOptions) -> Dataset:
    """The VSPW videos of ``root`` (all, or those ``root/<split>.txt`` lists)."""
    data = root / "data"
    if not data.is_dir():
        raise layout_error(root, fmt.name, EXPECTED)
    names = [d.name for d in data.iterdir() if (d / "origin").is_dir()]
    if not names:
        raise layout_error(root, fmt.name, EXPECTED)
    wanted = None if split is None else read_split(root / f"{split}.txt", fmt.name, root)
    videos = [
        VideoItem(n, list_images(data / n / "origin"), label_map(data / n / "mask"), data / n)
        for n in select_videos(names, wanted, root, fmt.name)
    ]
    return fmt.dataset(root, videos)


FORMAT = DatasetFormat("vspw", read, 124, 255, palette=Palette(embedded=True), strict_ids=False)

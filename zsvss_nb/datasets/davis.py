"""DAVIS: ``root/JPEGImages/<res>/<video>/*.jpg`` + ``root/Annotations/<res>/<video>/*.png``.

``res`` is ``480p`` unless asked otherwise; the split is ``root/ImageSets/{2017,2016}/<split>.txt``
(``split="val"`` tries 2017 then 2016; ``"2016/val"`` picks one). Or the flat layout
``root/<video>/JPEGImages`` + ``root/<video>/Annotations``. 0/255 masks (DAVIS 2016) read as 2
classes {0, 1} with no ignore id; palette masks (DAVIS 2017) read as their palette indices
(object ids), ignore 255, the class count being the largest object id + 1.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from .base import (
    Dataset,
    DatasetFormat,
    OpenOptions,
    Palette,
    VideoItem,
    label_map,
    layout_error,
    list_images,
    load_gt,
    read_split,
    select_videos,
)


def _standard(fmt: DatasetFormat, root: Path, split: str | None, res: str) -> list[VideoItem]:
    img_root = root / "JPEGImages" / res
    ann_root = root / "Annotations" / res
    names = [d.name for d in img_root.iterdir() if d.is_dir()]
    wanted = None
    if split is not None:
        if "/" in split:
            cands = [root / "ImageSets" / f"{split}.txt"]
        else:
            cands = [root / "ImageSets" / y / f"{split}.txt" for y in ("2017", "2016")]
        found = next((c for c in cands if c.is_file()), cands[0])
        wanted = read_split(found, fmt.name, root)
    return [
        VideoItem(n, list_images(img_root / n), label_map(ann_root / n), img_root / n)
        for n in select_videos(names, wanted, root, fmt.name)
    ]


def _flat(fmt: DatasetFormat, root: Path, split: str | None, expected: str) -> list[VideoItem]:
    flat = [d for d in root.iterdir() if (d / "JPEGImages").is_dir()]
    if (root / "JPEGImages").is_dir():
        flat = [root]
    if not flat:
        raise layout_error(root, fmt.name, expected)
    wanted = None if split is None else read_split(root / f"{split}.txt", fmt.name, root)
    by_name = {d.name: d for d in flat}
    return [
        VideoItem(
            n,
            list_images(by_name[n] / "JPEGImages"),
            label_map(by_name[n] / "Annotations"),
            by_name[n] / "JPEGImages",
        )
        for n in select_videos(list(by_name), wanted, root, fmt.name)
    ]


def read(fmt: DatasetFormat, root: Path, split: str | None, options: OpenOptions) -> Dataset:
    """The DAVIS videos of ``root``; the first label file tells 2016 (0/255) from 2017 (P)."""
    res = options.resolution
    expected = (
        f"root/JPEGImages/{res}/<video>/*.jpg + root/Annotations/{res}/<video>/*.png"
        " or root/<video>/JPEGImages/*.jpg + root/<video>/Annotations/*.png"
    )
    if (root / "JPEGImages" / res).is_dir():
        videos = _standard(fmt, root, split, res)
    else:
        videos = _flat(fmt, root, split, expected)
    first = next((v.labels[k] for v in videos for k in v.frame_names if k in v.labels), None)
    if first is None:
        return fmt.dataset(root, videos, ignore_index=None, binary_gt=True)
    with Image.open(first) as im:
        palette = im.mode == "P"
    if not palette:
        names = ["background", "object"]
        return fmt.dataset(root, videos, ignore_index=None, class_names=names, binary_gt=True)
    # Object ids of DAVIS 2017 all appear in the first annotated frame of their video.
    top = 0
    for v in videos:
        if v.first_frame_gt is not None:
            ids = load_gt(v.first_frame_gt, binary=False)
            top = max(top, int(ids[ids != 255].max(initial=0)))
    return fmt.dataset(root, videos, num_classes=top + 1)


# k: measured with dinov2-s on the sample clips (README, "Per-dataset settings")
FORMAT = DatasetFormat("davis", read, 2, 255, palette=Palette(embedded=True), recommended={"k": 4})

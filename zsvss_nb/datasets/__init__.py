"""Dataset formats: VSPW, DAVIS, CamVid (11 and 32 classes), Cityscapes sequences, plain folders.

Every format is a :class:`~zsvss_nb.datasets.base.DatasetFormat` in a module of its own
(:mod:`.vspw`, :mod:`.davis`, :mod:`.camvid`, :mod:`.cityscapes`, :mod:`.folder`), registered
here, in :data:`BUILTIN`; :func:`open_dataset` opens a root in a registered format and returns a
:class:`Dataset` listing its videos as :class:`VideoItem` s (ordered frame paths plus the
ground-truth label PNGs that exist, keyed by frame stem). Nothing is decoded at open time
except, where the class count must be inferred, the label PNGs. To add a format, write a module
with a reader and its ``DatasetFormat`` and add it to :data:`BUILTIN` (or call
:func:`register`): the CLI's choices, evaluation, the manifests and the palettes read the
registry. This package is the public entry of the folder: the names below are defined in
:mod:`.base`.
"""

from __future__ import annotations

from . import camvid, cityscapes, davis, folder, vspw
from .base import (
    Dataset,
    DatasetFormat,
    OpenOptions,
    Palette,
    VideoItem,
    find_format,
    format_names,
    formats,
    load_gt,
    lookup,
    natural_key,
    open_dataset,
    register,
    unregister,
)

BUILTIN: tuple[DatasetFormat, ...] = (
    vspw.FORMAT,
    davis.FORMAT,
    camvid.CAMVID,
    camvid.CAMVID32,
    cityscapes.FORMAT,
    folder.FORMAT,
)
FORMATS = tuple(f.name for f in BUILTIN)  # the built-in names; format_names() lists all

for _fmt in BUILTIN:
    register(_fmt)

__all__ = [
    "BUILTIN",
    "FORMATS",
    "Dataset",
    "DatasetFormat",
    "OpenOptions",
    "Palette",
    "VideoItem",
    "find_format",
    "format_names",
    "formats",
    "load_gt",
    "lookup",
    "natural_key",
    "open_dataset",
    "register",
    "unregister",
]

"""Figure export for papers: save_figure, read_figure_metadata, publication_style.

``save_figure`` writes PDF/PNG/SVG through :func:`zsvss_nb.io.writers.atomic_write` (one temp-name
scheme for every file zsvss writes), in the publication style whatever style the figure was made
in (TrueType fonts in PDF, never Type 3; 300 dpi PNG; optionally a paper's column or page width),
and stores what reproduces the figure in each file's metadata: every model shown, with the same
sha256 as ``manifest.json`` and the config and preset it ran with; the input clip and frame
indices; the zsvss version and git commit. ``read_figure_metadata`` reads it back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
from PIL import Image

from ... import __version__
from ...errors import InputError
from ...io.outputs import check_output_file
from ...io.provenance import config_record, model_identity, model_record, package_info, versions
from ...io.writers import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGURE_FORMATS = ("pdf", "png", "svg")
COLUMN_WIDTH = 3.25  # inches: one column of a CVPR/ICCV two-column paper
PAGE_WIDTH = 6.875  # inches: the text width of the same page
_WIDTHS = {"column": COLUMN_WIDTH, "page": PAGE_WIDTH}
# what makes a file fit for a paper, applied while saving (rcParams read at save time)
_SAVE_STYLE = {"pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "path"}


def _as_jsonable(obj: Any, name: str, attr: str | None = None) -> Any:
    """Config/model description as plain JSON data (dataclass, ``.to_dict()``, ``.identity``).

    A backbone (anything with ``fingerprint()``) is described by
    :func:`zsvss_nb.io.provenance.model_identity`, so its sha256 is the manifest's.
    """
    if obj is None:
        return None
    if isinstance(obj, Mapping):  # e.g. {"sd": backbone, "dinov2": backbone}
        return {k: model_identity(v) if _is_model(v) else v for k, v in obj.items()}
    if _is_model(obj):
        return model_identity(obj)
    if attr is not None and isinstance(getattr(obj, attr, None), Mapping):
        return dict(getattr(obj, attr))
    if callable(getattr(obj, "to_dict", None)):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise InputError(f"{name} must be a dict, a dataclass or have .to_dict(), got {type(obj)}")


def _is_model(obj: Any) -> bool:
    return callable(getattr(obj, "fingerprint", None)) and isinstance(
        getattr(obj, "identity", None), Mapping
    )


def _models_record(models: Mapping[str, Any]) -> dict[str, Any]:
    """``{name: backbone | (backbone, config) | dict}`` as ``{name: record}`` (model_record)."""
    out: dict[str, Any] = {}
    for name, entry in models.items():
        model, cfg = entry if isinstance(entry, tuple) else (entry, None)
        if _is_model(model):
            out[str(name)] = model_record(model, cfg)
        elif isinstance(model, Mapping):
            out[str(name)] = {"identity": dict(model)}
            if cfg is not None:
                out[str(name)] |= config_record(cfg)
        else:
            raise InputError(
                f"models[{name!r}] must be a backbone, (backbone, config) or a dict, got {model!r}"
            )
    return out


def _clip_record(clip: Any, frames: Sequence[int] | None) -> dict[str, Any] | None:
    """The input the figure shows: its source (path, dataset video, ...) and frame indices."""
    if clip is None and frames is None:
        return None
    if clip is not None and not isinstance(clip, (str, os.PathLike, Mapping)):
        clip = getattr(clip, "source", None) or getattr(clip, "name", None) or repr(clip)
    source = dict(clip) if isinstance(clip, Mapping) else (None if clip is None else str(clip))
    return {"source": source, "frames": None if frames is None else [int(i) for i in frames]}


def figure_provenance(
    config: Any = None,
    model: Any = None,
    models: Mapping[str, Any] | None = None,
    clip: Any = None,
    frames: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The metadata :func:`save_figure` stores (see there for the arguments)."""
    cfg_json = _as_jsonable(config, "config")
    model_json = _as_jsonable(model, "model", attr="identity")
    records = _models_record(models or {})
    if not records and _is_model(model):
        cfg_of = config if dataclasses.is_dataclass(config) else None
        records = _models_record({model.name: (model, cfg_of)})
    return {
        "config": cfg_json,
        "model": model_json,
        "models": records,
        "clip": _clip_record(clip, frames),
        "zsvss": package_info(),
        "versions": versions(),
    }


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=True, default=str)


def _savefig(
    fig: Figure, fmt: str, dpi: float | None, bbox: str | None, metadata: dict[str, str], tmp: Path
) -> None:
    """``fig`` as ``fmt`` into the new file ``tmp`` (the ``write`` step of ``atomic_write``)."""
    with open(tmp, "xb") as fh:  # plain open, so the file gets the umask's permissions
        fig.savefig(fh, format=fmt, dpi=dpi, metadata=metadata, bbox_inches=bbox)


@contextlib.contextmanager
def _figure_width(fig: Figure, size: str | float | tuple[float, float] | None) -> Iterator[None]:
    """Resize ``fig`` for the save (column/page width or inches), then restore its size."""
    if size is None:
        yield
        return
    before = tuple(fig.get_size_inches())
    if isinstance(size, str):
        if size not in _WIDTHS:
            raise InputError(f"size={size!r}: use 'column', 'page', a width or (width, height)")
        size = _WIDTHS[size]
    if isinstance(size, (int, float)):
        size = (float(size), float(size) * before[1] / before[0])
    width, height = (float(v) for v in size)
    if width <= 0 or height <= 0:
        raise InputError(f"figure size {size} must be positive")
    fig.set_size_inches(width, height)
    try:
        yield
    finally:
        fig.set_size_inches(*before)


def save_figure(
    fig: Figure,
    path_stem: str | Path,
    *,
    config: Any = None,
    model: Any = None,
    formats: Sequence[str] = ("pdf", "png"),
    dpi: float | None = 300,
    models: Mapping[str, Any] | None = None,
    clip: Any = None,
    frames: Sequence[int] | None = None,
    size: str | float | tuple[float, float] | None = None,
) -> list[Path]:
    """Write ``fig`` as ``<path_stem>.<fmt>`` per format, atomically, ready for a paper.

    Style: fonts embedded as TrueType (Type 42) in PDF, never Type 3; PNG at ``dpi`` (300;
    None: ``rcParams["savefig.dpi"]``); ``size="column"`` (3.25 in) or ``"page"`` (6.875 in)
    sets the width at the figure's aspect ratio (fonts keep their point size, so build the
    figure inside :func:`publication_style` for paper-sized text), a number the width and a
    pair the size in inches; the figure on screen is not changed.

    Provenance, stored in every file (:func:`read_figure_metadata` reads it back):

    - ``models``: ``{name: backbone or (backbone, config)}``, every model the figure shows:
      identity with the weights' sha256 (the manifest's), the config and preset name as run
      and the fields changed from that preset; ``model`` and ``config`` name a single model
      (a backbone, a dict or an object with ``.identity``; a dict or dataclass);
    - ``clip``: the input shown (a path, a video, a dataset video name) and ``frames`` its
      frame indices;
    - always: the zsvss version and git commit (None outside a checkout) and library versions.

    PNG: tEXt ``zsvss:provenance`` (all of it, JSON), ``zsvss:config`` / ``zsvss:model`` and
    ``Software``. PDF (standard keys only): ``Subject`` = all of it, ``Keywords`` = the model
    JSON, ``Creator``. SVG: Dublin Core ``Description`` / ``Keywords``.
    """
    bad = [f for f in formats if f not in FIGURE_FORMATS]
    if bad or not formats:
        raise InputError(f"formats {tuple(formats)}: choose from {FIGURE_FORMATS}")
    prov = figure_provenance(config, model, models, clip, frames)
    prov_json, cfg_json, model_json = _dumps(prov), _dumps(prov["config"]), _dumps(prov["model"])
    software = f"zsvss {__version__}"
    meta = {
        "png": {
            "zsvss:provenance": prov_json,
            "zsvss:config": cfg_json,
            "zsvss:model": model_json,
            "Software": software,
        },
        "pdf": {"Subject": prov_json, "Keywords": model_json, "Creator": software},
        "svg": {"Description": prov_json, "Keywords": model_json, "Creator": software},
    }
    stem = Path(path_stem)
    targets = [stem.with_name(f"{stem.name}.{fmt}") for fmt in formats]
    shown = [clip] if isinstance(clip, (str, os.PathLike)) else getattr(clip, "inputs", [])
    for target in targets:  # all checked before any is written
        check_output_file(target, "figure", shown, _is_figure, create_parent=True)
    bbox = "tight" if size is None else None  # a paper size is the exact size of the file
    with matplotlib.rc_context(_SAVE_STYLE), _figure_width(fig, size):
        return [
            atomic_write(target, functools.partial(_savefig, fig, fmt, dpi, bbox, meta[fmt]))
            for target, fmt in zip(targets, formats, strict=True)
        ]


def _is_figure(path: Path) -> bool:
    """Whether ``path`` is a figure :func:`save_figure` wrote (what it may overwrite)."""
    try:
        return str(read_figure_metadata(path).get("software") or "").startswith("zsvss")
    except Exception:  # any unreadable file: not ours
        return False


def _pdf_string(data: bytes, key: bytes) -> str | None:
    """The literal or hex string value of ``/key`` in a PDF Info dictionary, decoded."""
    m = re.search(rb"/" + key + rb"\s*([(<])", data)
    if m is None:
        return None
    i = m.end()
    if m.group(1) == b"<":
        end = data.index(b">", i)
        raw = bytes.fromhex(re.sub(rb"\s", b"", data[i:end]).decode("ascii"))
    else:
        out, depth = bytearray(), 1
        escapes = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("b"): b"\b"}
        while depth:
            ch = data[i]
            if ch == ord("\\"):
                nxt = data[i + 1]
                out += escapes.get(nxt, bytes([nxt]))
                i += 2
                continue
            depth += (ch == ord("(")) - (ch == ord(")"))
            if depth:
                out.append(ch)
            i += 1
        raw = bytes(out)
    if raw.startswith(b"\xfe\xff"):
        return raw[2:].decode("utf-16-be")
    return raw.decode("latin-1")


def read_figure_metadata(path: str | Path) -> dict[str, Any]:
    """Provenance written by :func:`save_figure`, decoded from the file's metadata.

    Keys: ``config``, ``model`` (as passed), ``models`` (per model: identity, preset, config,
    changed fields), ``clip`` (source and frame indices), ``zsvss`` (version, commit, dirty),
    ``versions``, ``software``. Files written before provenance records existed give None for
    the keys they lack.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"figure {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".png":
        with Image.open(path) as img:
            text = dict(getattr(img, "text", {}) or img.info)
        full, model = text.get("zsvss:provenance"), text.get("zsvss:model")
        cfg, software = text.get("zsvss:config"), text.get("Software")
    elif suffix == ".pdf":
        data = path.read_bytes()
        full, model = _pdf_string(data, b"Subject"), _pdf_string(data, b"Keywords")
        cfg, software = None, _pdf_string(data, b"Creator")
    elif suffix == ".svg":
        ns = {
            "dc": "http://purl.org/dc/elements/1.1/",
            "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
            "cc": "http://creativecommons.org/ns#",
        }
        root = ET.parse(path).getroot()
        full = root.findtext(".//dc:description", namespaces=ns)
        model = root.findtext(".//dc:subject/rdf:Bag/rdf:li", namespaces=ns)
        cfg, software = None, root.findtext(".//dc:creator/cc:Agent/dc:title", namespaces=ns)
    else:
        raise InputError(f"figure {path}: metadata is read from .png, .pdf or .svg only")
    record = json.loads(full) if full else {}
    if not isinstance(record, dict) or "zsvss" not in record:  # an older file: config only
        record = {"config": record or None}
    out = {k: record.get(k) for k in ("config", "model", "models", "clip", "zsvss", "versions")}
    if out["config"] is None and cfg:
        out["config"] = json.loads(cfg)
    if out["model"] is None and model:
        out["model"] = json.loads(model)
    out["software"] = software
    return out


@contextlib.contextmanager
def publication_style(**overrides: Any) -> Iterator[None]:
    """rcParams for paper figures (small fonts, no top/right spines, 300 dpi, TrueType in PDF).

    Create the figure inside the ``with`` block: most rcParams are read when artists are made.
    """
    params = {
        "font.size": 8,
        "axes.titlesize": 9,
        "axes.labelsize": 8,
        "xtick.labelsize": 7,
        "ytick.labelsize": 7,
        "legend.fontsize": 7,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "savefig.dpi": 300,
        "pdf.fonttype": 42,
        "ps.fonttype": 42,
        **overrides,
    }
    with matplotlib.rc_context(params):
        yield

"""Figure export with provenance: save_figure, read_figure_metadata, publication_style.

``save_figure`` writes PDF/PNG/SVG through :func:`zsvss_nb.writers.atomic_write` (one temp-name
scheme for every file zsvss writes) and stores the config and model identity in each file's
metadata; ``read_figure_metadata`` reads them back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
from PIL import Image

from .. import __version__
from ..errors import InputError
from ..writers import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGURE_FORMATS = ("pdf", "png", "svg")


def _as_jsonable(obj: Any, name: str, attr: str | None = None) -> Any:
    """Config/model description as plain JSON data (dataclass, ``.to_dict()``, ``.identity``)."""
    if obj is None or isinstance(obj, Mapping):
        return None if obj is None else dict(obj)
    if attr is not None and isinstance(getattr(obj, attr, None), Mapping):
        return dict(getattr(obj, attr))
    if callable(getattr(obj, "to_dict", None)):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise InputError(f"{name} must be a dict, a dataclass or have .to_dict(), got {type(obj)}")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=True, default=str)


def _savefig(fig: Figure, fmt: str, dpi: float | None, metadata: dict[str, str], tmp: Path) -> None:
    """``fig`` as ``fmt`` into the new file ``tmp`` (the ``write`` step of ``atomic_write``)."""
    with open(tmp, "xb") as fh:  # plain open, so the file gets the umask's permissions
        fig.savefig(fh, format=fmt, dpi=dpi, metadata=metadata, bbox_inches="tight")


def save_figure(
    fig: Figure,
    path_stem: str | Path,
    *,
    config: Any = None,
    model: Any = None,
    formats: Sequence[str] = ("pdf", "png"),
    dpi: float | None = 200,
) -> list[Path]:
    """Write ``fig`` as ``<path_stem>.<fmt>`` per format, atomically, with provenance metadata.

    PNG: tEXt ``zsvss:config`` / ``zsvss:model`` (JSON) and ``Software``. PDF (standard keys
    only): ``Subject`` = config JSON, ``Keywords`` = model JSON, ``Creator``. SVG: Dublin Core
    ``Description`` / ``Keywords``. ``config``: dict or dataclass; ``model``: dict or an object
    with an ``.identity`` dict. ``dpi=None`` uses ``rcParams["savefig.dpi"]`` (300 inside
    :func:`publication_style`).
    """
    bad = [f for f in formats if f not in FIGURE_FORMATS]
    if bad or not formats:
        raise InputError(f"formats {tuple(formats)}: choose from {FIGURE_FORMATS}")
    cfg_json = _dumps(_as_jsonable(config, "config"))
    model_json = _dumps(_as_jsonable(model, "model", attr="identity"))
    software = f"zsvss {__version__}"
    meta = {
        "png": {"zsvss:config": cfg_json, "zsvss:model": model_json, "Software": software},
        "pdf": {"Subject": cfg_json, "Keywords": model_json, "Creator": software},
        "svg": {"Description": cfg_json, "Keywords": model_json, "Creator": software},
    }
    stem = Path(path_stem)
    return [
        atomic_write(
            stem.with_name(f"{stem.name}.{fmt}"),
            functools.partial(_savefig, fig, fmt, dpi, meta[fmt]),
        )
        for fmt in formats
    ]


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
    """Provenance written by :func:`save_figure`: ``{"config", "model", "software"}``.

    ``config`` and ``model`` are the decoded JSON (None when absent).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"figure {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".png":
        with Image.open(path) as img:
            text = dict(getattr(img, "text", {}) or img.info)
        cfg, model = text.get("zsvss:config"), text.get("zsvss:model")
        software = text.get("Software")
    elif suffix == ".pdf":
        data = path.read_bytes()
        cfg, model = _pdf_string(data, b"Subject"), _pdf_string(data, b"Keywords")
        software = _pdf_string(data, b"Creator")
    elif suffix == ".svg":
        ns = {
            "dc": "http://purl.org/dc/elements/1.1/",
            "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
            "cc": "http://creativecommons.org/ns#",
        }
        root = ET.parse(path).getroot()
        cfg = root.findtext(".//dc:description", namespaces=ns)
        model = root.findtext(".//dc:subject/rdf:Bag/rdf:li", namespaces=ns)
        software = root.findtext(".//dc:creator/cc:Agent/dc:title", namespaces=ns)
    else:
        raise InputError(f"figure {path}: metadata is read from .png, .pdf or .svg only")
    return {
        "config": json.loads(cfg) if cfg else None,
        "model": json.loads(model) if model else None,
        "software": software,
    }


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

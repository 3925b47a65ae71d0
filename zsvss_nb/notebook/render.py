"""Rendered notebooks: execute each notebook with a real model, keep its outputs, check them.

The committed notebooks carry their outputs, so GitHub, a review or a phone shows the figures
without running anything. :func:`render` executes a notebook as run-all does in JupyterLab (a
fresh kernel, no ``CI``, ``MODEL = None`` picking ``dinov2-s``), turns each explorer into its
static PNG (a saved notebook has no live widget state, so the widget view would be a dead
placeholder), and records in ``metadata["zsvss"]``: the model, the package version, the git
commit it was rendered from, and a hash of the code and markdown sources
(:func:`source_hash`). :func:`problems` is what the test of the committed notebooks asserts:
outputs present and error-free, the model printed by the first cell equal to the recorded
one, and sources unchanged since the render (a commit cannot name itself, so the source hash,
not the commit, says whether the outputs are current).

``python notebooks/render.py`` is the command line (:func:`main`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io.provenance import git_output
from .explorer import STATIC_CLASS
from .session import ENV_CI, REAL_DEFAULT

log = logging.getLogger(__name__)

META_KEY = "zsvss"  # notebook metadata key of the render record
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
MAX_BYTES = 2_200_000  # about 2 MB per rendered notebook
SCREEN_WIDTH = 1400  # widest output PNG in pixels: a laptop screen (save_figure keeps 300 dpi)
_MODEL_LINE = re.compile(r"MODEL = '([^']+)'")


def source_hash(nb: Any) -> str:
    """sha256 of every code and markdown cell's type and source, in order (outputs and
    metadata excluded): what a render must match to be current."""
    cells = [[c["cell_type"], c["source"]] for c in nb["cells"] if c["cell_type"] != "raw"]
    return hashlib.sha256(json.dumps(cells, ensure_ascii=False).encode()).hexdigest()


def _texts(output: Mapping[str, Any]) -> list[str]:
    if output.get("output_type") == "stream":
        return [output.get("text", "")]
    data = output.get("data", {})
    return [data[k] for k in ("text/plain", "text/markdown") if isinstance(data.get(k), str)]


def printed_model(nb: Any) -> str | None:
    """The model named by the first code cell's output (its ``MODEL = '...'`` line), or None."""
    first = next((c for c in nb["cells"] if c["cell_type"] == "code"), None)
    for output in first.get("outputs", []) if first else []:
        for text in _texts(output):
            if found := _MODEL_LINE.search(text):
                return found.group(1)
    return None


def compact_png(data: str, max_width: int = SCREEN_WIDTH) -> str:
    """A base64 PNG at screen size: narrowed to ``max_width`` pixels, opaque RGBA stored as
    RGB, and stored with a 256-colour palette (dithered) when that is smaller, as photos are."""
    import base64
    import io

    from PIL import Image

    raw = base64.b64decode(data)
    image = Image.open(io.BytesIO(raw))
    image.load()
    if image.width > max_width:
        image = image.resize((max_width, round(image.height * max_width / image.width)))
    if image.mode == "RGBA" and image.getextrema()[3][0] == 255:
        image = image.convert("RGB")
    best = raw
    for candidate in (
        image,
        image.convert("RGB").quantize(256, dither=Image.Dither.FLOYDSTEINBERG),
    ):
        buf = io.BytesIO()
        candidate.save(buf, format="PNG", optimize=True)
        if len(buf.getvalue()) < len(best):
            best = buf.getvalue()
    return base64.b64encode(best).decode("ascii")


def static_outputs(outputs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``outputs`` with each explorer as its static PNG: the widget view is dropped from a
    bundle that carries an image/png, the HTML static copy after it is dropped (it would show
    the same figure twice), and a widget view without a picture becomes its text/plain; every
    PNG is made screen-sized (:func:`compact_png`)."""
    kept: list[dict[str, Any]] = []
    for output in outputs:
        data = output.get("data", {})
        html = data.get("text/html", "")
        if isinstance(html, str) and f'class="{STATIC_CLASS}"' in html and kept:
            if "image/png" in kept[-1].get("data", {}):
                continue
        if WIDGET_VIEW in data:
            rest = {k: v for k, v in data.items() if k != WIDGET_VIEW}
            if not any(k != "text/plain" for k in rest) and not rest.get("text/plain"):
                continue
            output = {**output, "data": rest}
        if "image/png" in output.get("data", {}):
            output = {
                **output,
                "data": {**output["data"], "image/png": compact_png(output["data"]["image/png"])},
            }
        kept.append(dict(output))
    return kept


def _has_figure(nb: Any) -> bool:
    return any(
        "image/png" in o.get("data", {})
        for c in nb["cells"]
        if c["cell_type"] == "code"
        for o in c.get("outputs", [])
    )


def _in_history(root: Path, commit: str) -> bool | None:
    """Whether ``commit`` is HEAD or an ancestor; None where git or the commit is missing (a
    shallow clone, an export without .git)."""
    if git_output(root, "cat-file", "-e", f"{commit}^{{commit}}") is None:
        return None
    return git_output(root, "merge-base", "--is-ancestor", commit, "HEAD") is not None


def problems(path: str | Path, root: str | Path | None = None) -> list[str]:
    """What is wrong with the rendered notebook at ``path`` (empty: nothing).

    Checks the render record, that every code cell ran without an error and some cell shows
    a figure, that the first cell's printed model is the recorded one, that the sources are
    the ones rendered (:func:`source_hash`), the size, and, where ``root`` is a git checkout
    holding the recorded commit, that the commit is in HEAD's history.
    """
    import nbformat

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    meta = nb.metadata.get(META_KEY)
    if not meta:
        return [f"{path.name}: no render record (metadata.{META_KEY}): run notebooks/render.py"]
    found: list[str] = []
    code = [c for c in nb.cells if c.cell_type == "code"]
    if unrun := [i for i, c in enumerate(code) if c.get("execution_count") is None]:
        found.append(f"{path.name}: code cells {unrun} have no outputs (never executed)")
    if any(o.get("output_type") == "error" for c in code for o in c.get("outputs", [])):
        found.append(f"{path.name}: an output is an error")
    if not _has_figure(nb):
        found.append(f"{path.name}: no figure among the outputs")
    shown, recorded = printed_model(nb), meta.get("model")
    if shown != recorded:
        found.append(f"{path.name}: outputs made by MODEL={shown!r}, metadata says {recorded!r}")
    if source_hash(nb) != meta.get("source_sha256"):
        found.append(f"{path.name}: sources changed since the render: run notebooks/render.py")
    if (size := path.stat().st_size) > MAX_BYTES:
        found.append(f"{path.name}: {size / 1e6:.1f} MB, more than {MAX_BYTES / 1e6:.1f} MB")
    commit = meta.get("commit")
    if root is not None and commit and _in_history(Path(root), commit) is False:
        found.append(f"{path.name}: rendered from commit {commit[:12]}, not in HEAD's history")
    return found


def render_record(nb: Any, model: str, root: Path, seconds: float) -> dict[str, Any]:
    """The ``metadata["zsvss"]`` record of a notebook just executed with ``model``."""
    from .. import __version__

    status = git_output(root, "status", "--porcelain", "--untracked-files=no", "--", "zsvss_nb")
    return {
        "model": model,
        "version": __version__,
        "commit": git_output(root, "rev-parse", "HEAD"),
        "package_dirty": None if status is None else bool(status),
        "source_sha256": source_hash(nb),
        "seconds": round(seconds, 1),
        "rendered": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def kernel_env(model: str | None, root: Path) -> dict[str, str]:
    """The environment of a render's kernel: a reader's (no ``CI``, no ``ZSVSS_MODEL`` unless
    ``model`` names one), importing this checkout's package."""
    env = {k: v for k, v in os.environ.items() if k not in (ENV_CI, "ZSVSS_MODEL")}
    if model is not None:
        env["ZSVSS_MODEL"] = model
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    env.pop("MPLBACKEND", None)  # the notebooks' %matplotlib inline draws the figures
    return env


def render(path: str | Path, model: str | None = None, timeout: int = 1800) -> float:
    """Execute the notebook at ``path`` in a fresh kernel and write it back with its outputs
    and render record; seconds taken. ``model``: None renders as a reader's run-all (the
    default model, :data:`~zsvss_nb.notebook.session.REAL_DEFAULT` where installed), else
    that spec through ``$ZSVSS_MODEL``. The file is replaced only after a clean run."""
    import nbformat
    from nbclient import NotebookClient

    path = Path(path).resolve()
    root = path.parent.parent
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("widgets", None)
    nb.metadata.pop(META_KEY, None)
    start = time.perf_counter()
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        store_widget_state=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute(env=kernel_env(model, root))
    seconds = time.perf_counter() - start
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [nbformat.from_dict(o) for o in static_outputs(cell.outputs)]
            cell.metadata.pop("execution", None)
    shown = printed_model(nb)
    expected = model or REAL_DEFAULT
    if shown != expected:
        raise InputError(f"{path.name}: the first cell says MODEL={shown!r}, expected {expected!r}")
    nb.metadata[META_KEY] = render_record(nb, shown, root, seconds)
    tmp = path.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp)
    tmp.replace(path)
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    """``python notebooks/render.py [NAME ...] [--model SPEC]``: render the notebooks one at a
    time (the default: every ``notebooks/0*.ipynb``); exit 1 if any failed (those keep their
    previous file)."""
    here = Path(__file__).resolve().parents[2] / "notebooks"
    parser = argparse.ArgumentParser(prog="python notebooks/render.py", description=main.__doc__)
    parser.add_argument("names", nargs="*", help="notebooks (e.g. 00_quickstart or 00)")
    parser.add_argument("--model", help="a model spec instead of the reader's default")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args(argv)
    paths = sorted(here.glob("0*.ipynb"))
    if args.names:
        paths = [p for p in paths if any(p.stem.startswith(n) for n in args.names)]
        if not paths:
            print(f"no notebook matches {args.names} in {here}", file=sys.stderr)
            return 2
    failed, total = [], 0.0
    for path in paths:
        try:
            seconds = render(path, args.model, args.timeout)
        except Exception as err:  # noqa: BLE001 (one notebook's failure must not stop the rest)
            failed.append(path.name)
            print(f"{path.name}: FAILED: {str(err).strip().splitlines()[-1][:500]}", flush=True)
            continue
        total += seconds
        size = path.stat().st_size / 1e6
        print(f"{path.name}: {seconds:.0f} s, {size:.2f} MB", flush=True)
    print(f"rendered {len(paths) - len(failed)} of {len(paths)} in {total:.0f} s", flush=True)
    return 1 if failed else 0


__all__ = ["main", "printed_model", "problems", "render", "source_hash", "static_outputs"]

"""The committed notebooks carry current outputs of the model they record, and every notebook
runs top to bottom with the real DINOv2 backbone and with a diffusers SD folder.

The rendered outputs (``python notebooks/render.py``) are checked first, without running
anything: every code cell has outputs, some are figures, the first cell's printed model is the
one ``metadata.zsvss`` records, and the code and markdown are the ones rendered.

The README test command runs the notebooks under nbval with the tiny model; here the same seven
notebooks run in FAST mode (``CI=1``) with ``ZSVSS_MODEL=dinov2-s`` (no masked modulation: those
sections must say they are skipped) and with a tiny model saved as a diffusers folder (standing
in for Stable Diffusion weights). One kernel per model runs all seven, its namespace reset before
each notebook, so every notebook starts empty while the imports are paid once.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import nbformat
import numpy as np
import pytest
from jupyter_client import KernelManager
from PIL import Image

from zsvss_nb.notebook import render

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
ROOT = NOTEBOOKS.parent


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("0*.ipynb")))
def test_committed_notebook_is_rendered_with_the_model_it_records(name) -> None:
    assert render.problems(NOTEBOOKS / name, ROOT) == []
    meta = nbformat.read(NOTEBOOKS / name, as_version=4).metadata[render.META_KEY]
    assert meta["model"] == "dinov2-s" and meta["version"] and meta["commit"]


def planted_notebook(model: str = "dinov2-s") -> nbformat.NotebookNode:
    """A rendered two-cell notebook: a parameter cell that printed ``model``, a figure cell."""
    v4 = nbformat.v4
    line = f"MODEL = {model!r} (dinov2 backbone, the default): every section runs; capped."
    first = v4.new_code_cell("RUN = check_model(None)\nRUN", execution_count=1)
    first.outputs = [v4.new_output("execute_result", {"text/plain": line}, execution_count=1)]
    figure = v4.new_code_cell("fig", execution_count=2)
    figure.outputs = [v4.new_output("display_data", {"image/png": "iVBORw0KGgo="})]
    nb = v4.new_notebook(cells=[v4.new_markdown_cell("# A"), first, figure])
    nb.metadata[render.META_KEY] = {"model": model, "source_sha256": render.source_hash(nb)}
    return nb


def test_problems_name_missing_outputs_another_model_and_changed_sources(tmp_path) -> None:
    path = tmp_path / "00_x.ipynb"

    def found(nb) -> str:
        nbformat.write(nb, path)
        return " | ".join(render.problems(path))

    assert found(planted_notebook()) == ""
    nb = planted_notebook()
    nb.cells[2].outputs, nb.cells[2].execution_count = [], None
    assert "[1] have no outputs" in found(nb) and "no figure" in found(nb)
    nb = planted_notebook("tiny")
    nb.metadata[render.META_KEY]["model"] = "dinov2-s"  # outputs of tiny, record of dinov2-s
    assert "made by MODEL='tiny', metadata says 'dinov2-s'" in found(nb)
    nb = planted_notebook()
    nb.cells[0].source += " changed"  # a markdown change after the render counts too
    assert "sources changed since the render" in found(nb)
    nb = planted_notebook()
    nb.cells[2].outputs = [nbformat.v4.new_output("error", ename="E", evalue="", traceback=[])]
    assert "an output is an error" in found(nb)
    del nb.metadata[render.META_KEY]
    assert "no render record" in found(nb)


def test_source_hash_ignores_outputs_and_sees_every_source() -> None:
    nb = planted_notebook()
    before = render.source_hash(nb)
    nb.cells[2].outputs = []
    nb.cells[1].execution_count = 7
    assert render.source_hash(nb) == before
    nb.cells[1].source = nb.cells[1].source.replace("None", "'tiny'")
    assert render.source_hash(nb) != before


def png_b64(width: int, height: int, mode: str = "RGBA") -> str:
    """A noisy photo-like PNG (base64), opaque."""
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, len(mode)), np.uint8)
    if mode == "RGBA":
        pixels[..., 3] = 255
    buf = io.BytesIO()
    Image.fromarray(pixels, mode).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def test_compact_png_is_screen_sized_and_never_larger() -> None:
    wide = png_b64(2000, 300)
    out = Image.open(io.BytesIO(base64.b64decode(render.compact_png(wide))))
    assert out.size == (render.SCREEN_WIDTH, 210) and out.mode in ("RGB", "P")
    assert len(render.compact_png(wide)) < len(wide)
    small = png_b64(40, 30, "RGB")
    assert len(render.compact_png(small)) <= len(small)
    assert Image.open(io.BytesIO(base64.b64decode(render.compact_png(small)))).size == (40, 30)


def test_static_outputs_keep_one_png_per_explorer() -> None:
    image = png_b64(8, 6, "RGB")
    png = {"image/png": render.compact_png(image), "text/plain": "VBox()"}
    bundle = {"output_type": "display_data", "metadata": {}}
    outputs = [
        {**bundle, "data": {render.WIDGET_VIEW: {"model_id": "a"}, **png, "image/png": image}},
        {**bundle, "data": {"text/html": f'<figure class="{render.STATIC_CLASS}"></figure>'}},
        {**bundle, "data": {render.WIDGET_VIEW: {"model_id": "b"}}},  # a bar with no picture
        {"output_type": "stream", "name": "stdout", "text": "done"},
    ]
    kept = render.static_outputs(outputs)
    assert [o.get("data", {}) for o in kept] == [png, {}]
    assert kept[1]["text"] == "done"


def run_all(model: str, tmp_path: Path) -> dict[str, str]:
    """Run every notebook with ``model``; the printed text of each, or fail on the first error."""
    env = {**os.environ, "ZSVSS_MODEL": model, "CI": "1", "MPLBACKEND": "agg"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(NOTEBOOKS), env=env)
    kc = km.client()
    kc.start_channels()
    printed: dict[str, str] = {}
    try:
        kc.wait_for_ready(timeout=120)
        for path in sorted(NOTEBOOKS.glob("0*.ipynb")):
            nb = nbformat.read(path, as_version=4)
            text: list[str] = []

            def hook(msg, text=text):
                if msg["msg_type"] == "stream":
                    text.append(msg["content"]["text"])
                elif msg["msg_type"] == "error":
                    text.append("\n".join(msg["content"]["traceback"]))

            kc.execute_interactive("%reset -f", timeout=60)
            for i, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                reply = kc.execute_interactive(cell.source, timeout=900, output_hook=hook)
                content = reply["content"]
                assert content["status"] == "ok", (
                    f"{path.name} cell {i} with MODEL={model}: {content.get('ename')}: "
                    f"{content.get('evalue')}\n{''.join(text)[-3000:]}"
                )
            printed[path.name] = "".join(text)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    return printed


class TestDinov2:
    def test_every_notebook_runs_and_skips_only_the_diffusion_sections(self, tmp_path) -> None:
        printed = run_all("dinov2-s", tmp_path)
        assert len(printed) == 7
        assert printed["01_feature_probing.ipynb"].count("Skipped:") == 4  # blocks, SVD x3
        assert printed["04_upsampling.ipynb"].count("Skipped:") == 3
        for name in ("00_quickstart.ipynb", "02_context_modelling.ipynb", "03_refinement.ipynb",
                     "06_comparison.ipynb"):  # fmt: skip
            assert "Skipped:" not in printed[name]


class TestSdFolder:
    def test_every_notebook_runs_with_a_diffusers_folder(self, tmp_path, tiny) -> None:
        from zsvss_nb.backbones.sd.weights import save_folder

        folder = save_folder(tiny, tmp_path / "sd-folder")
        printed = run_all(str(folder), tmp_path)
        assert len(printed) == 7
        assert not any("Skipped:" in text for text in printed.values())

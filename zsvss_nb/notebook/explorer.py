"""The explorer widget: controls above one figure, redrawn on change, with a static copy.

:class:`Explorer` is what every notebook explorer in :mod:`zsvss_nb.notebook.widgets` returns; the
control builders here give every explorer the same typed controls (IntSlider / FloatSlider whose
readout accepts a typed number, Dropdown for fixed choices) and the same query point (a frame
and a relative (y, x) in [0, 1]).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
from matplotlib.figure import Figure

from ..errors import ConfigError, InputError, ZsvssError
from . import viz

EXPLORER_CLASS = "zsvss-explorer"
STATIC_CLASS = "zsvss-static"
# JupyterLab (and a static HTML page whose widgets render) hides the static copy that follows a
# rendered explorer; where widgets cannot render (offline HTML, GitHub), the copy shows.
_STATIC_STYLE = (
    f"<style>.jp-OutputArea-child:has(.{EXPLORER_CLASS}) + .jp-OutputArea-child .{STATIC_CLASS}"
    "{display:none}</style>"
)


def _png(fig: Figure, dpi: float = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def static_html(png: bytes, caption: str) -> str:
    """The HTML of an explorer's static copy: the figure as an image with a caption."""
    data = base64.b64encode(png).decode("ascii")
    return (
        f'{_STATIC_STYLE}<figure class="{STATIC_CLASS}" style="margin:0">'
        f'<img src="data:image/png;base64,{data}" alt="{caption}"/>'
        f'<figcaption style="font-size:small">{caption}</figcaption></figure>'
    )


class Explorer(widgets.VBox):
    """Controls (name -> value widget) above an Output holding the figure ``draw(**values)``.

    ``figure`` is the last figure drawn; :meth:`save` exports it with provenance. A bad control
    value (a typed zsvss error, e.g. K above the number of tokens) shows its message in place
    of the figure instead of raising inside the widget callback.
    """

    def __init__(
        self, controls: Mapping[str, widgets.ValueWidget], draw: Callable[..., Figure]
    ) -> None:
        output = widgets.Output()
        row = widgets.HBox(list(controls.values()), layout=widgets.Layout(flex_flow="row wrap"))
        super().__init__([row, output])
        self.add_class(EXPLORER_CLASS)
        self.controls = dict(controls)
        self.output = output
        self.figure: Figure | None = None
        self._draw = draw
        self._png: bytes | None = None
        self.refresh()
        for control in self.controls.values():
            control.observe(self._changed, names="value")

    @property
    def values(self) -> dict[str, Any]:
        """The current value of every control."""
        return {name: c.value for name, c in self.controls.items()}

    def refresh(self) -> Figure:
        """Draw the figure for the current values and show it (errors propagate)."""
        fig = self._draw(**self.values)
        self.figure, self._png = fig, _png(fig)
        data = {"image/png": base64.b64encode(self._png).decode("ascii"), "text/plain": repr(fig)}
        self.output.outputs = ({"output_type": "display_data", "data": data, "metadata": {}},)
        return fig

    def _changed(self, _change: Any) -> None:
        try:
            self.refresh()
        except ZsvssError as err:
            self.output.outputs = ({"output_type": "stream", "name": "stderr", "text": str(err)},)

    def save(
        self,
        path_stem: str | Path,
        config: Any = None,
        model: Any = None,
        formats: Sequence[str] = ("pdf", "png"),
        **provenance: Any,
    ) -> list[Path]:
        """Export the figure shown now through :func:`zsvss_nb.notebook.viz.save_figure`
        (``provenance``: its ``models``, ``clip``, ``frames`` and ``size`` keywords)."""
        if self.figure is None:
            raise InputError("the explorer has no figure to save")
        return viz.save_figure(
            self.figure, path_stem, config=config, model=model, formats=formats, **provenance
        )

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        data = super()._repr_mimebundle_(**kwargs)
        if self._png is not None:  # for renderers without widgets that skip the widget view
            data["image/png"] = base64.b64encode(self._png).decode("ascii")
        return data

    def _ipython_display_(self) -> None:
        """Show the live explorer, then its static copy (hidden where the explorer renders)."""
        from IPython.display import display

        display(self._repr_mimebundle_(), raw=True)
        if self._png is not None:
            values = ", ".join(f"{k}={v!r}" for k, v in self.values.items())
            caption = f"static copy of the explorer at {values}"
            display({"text/html": static_html(self._png, caption)}, raw=True)


# -------------------------------------------------------------------------- controls


def slider(name: str, lo: int, hi: int, value: int) -> widgets.IntSlider:
    return widgets.IntSlider(value=value, min=lo, max=hi, description=name, continuous_update=False)


def fraction_slider(name: str, value: float) -> widgets.FloatSlider:
    return widgets.FloatSlider(
        value=value, min=0.0, max=1.0, step=0.01, description=name, continuous_update=False
    )


def query_controls(batch: int, point: tuple[int, float, float]) -> dict[str, widgets.ValueWidget]:
    """The query point every explorer uses: a frame and a relative (y, x) in [0, 1]."""
    return {
        "frame": slider("frame", 0, batch - 1, int(point[0]) % batch),
        "fy": fraction_slider("y (0-1)", float(point[1])),
        "fx": fraction_slider("x (0-1)", float(point[2])),
    }


def choice(name: str, options: Sequence[Any], value: Any) -> widgets.Dropdown:
    opts = list(options)
    if not opts:
        raise ConfigError(f"{name}: no options to choose from")
    return widgets.Dropdown(
        options=opts, value=value if value in opts else opts[0], description=name
    )

# Panel's constructors take **params and carry no annotations; calling them is not an error.
# mypy: disable-error-code="no-untyped-call"
"""The Panel page: draw a digit, see the picked model's prediction.

One ``ShowcaseApp`` per browser session holds its widgets and its picked model; the model
source and the cache of loaded models are shared by all sessions and passed in, so nothing
lives in module globals. Its methods are plain and synchronous, so tests drive the page
without a browser; only the periodic refresh runs I/O in a thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import html
from typing import Any, Literal

import panel as pn
import structlog

from showcase.components import DrawCanvas, ModelUpload
from showcase.errors import InvalidModelError, ShowcaseError, SourceError
from showcase.models import (
    LoadedModel,
    ModelCache,
    ModelInfo,
    ModelSource,
    Prediction,
    load_model,
    no_model_message,
    upload_info,
)
from showcase.preprocess import decode_data_url, preprocess_image, to_png
from showcase.settings import Settings

log = structlog.get_logger(__name__)

AlertKind = Literal["info", "warning", "danger"]

HINT = "Draw a digit in the box: the prediction follows your pen."

CSS = """
.prediction { display:flex; align-items:baseline; gap:16px; font-family:system-ui,sans-serif; }
.prediction .digit { font-size:72px; font-weight:700; line-height:1; color:#1f4e8c; }
.prediction .confidence { font-size:18px; color:#333; }
.hint { font-size:15px; color:#555; font-family:system-ui,sans-serif; }
.bars { font-family:ui-monospace,monospace; font-size:13px; width:300px; }
.prob-row { display:flex; align-items:center; gap:6px; margin:2px 0; }
.prob-row .label { width:14px; text-align:right; }
.prob-row .track { flex:1; height:14px; background:#eceff3; border-radius:3px; }
.prob-row .fill { height:100%; background:#8aa9cf; border-radius:3px; }
.prob-row.top .fill { background:#1f4e8c; }
.prob-row .pct { width:52px; text-align:right; }
.seen { font-family:system-ui,sans-serif; font-size:13px; color:#555; }
.seen img { width:112px; height:112px; image-rendering:pixelated; border:1px solid #8a8f98;
  display:block; margin-top:4px; }
.details { font-family:system-ui,sans-serif; font-size:13px; border-collapse:collapse; }
.details td { padding:1px 8px 1px 0; vertical-align:top; }
.details td:first-child { color:#666; white-space:nowrap; }
"""


class ShowcaseApp:
    """One session's page and state."""

    def __init__(self, source: ModelSource, cache: ModelCache, max_upload_bytes: int) -> None:
        self.source = source
        self.cache = cache
        self.max_upload_bytes = max_upload_bytes
        self.model: LoadedModel | None = None
        self.prediction: Prediction | None = None
        self._infos: dict[str, ModelInfo] = {}
        self._listed_once = False
        self._listed: list[ModelInfo] = []
        self._last_error: str | None = None
        self._uploads: dict[str, tuple[ModelInfo, LoadedModel]] = {}

        self.canvas = DrawCanvas(width=290, height=290)
        self.clear_button = pn.widgets.Button(label="Clear", width=90)
        self.predict_button = pn.widgets.Button(label="Predict", color="primary", width=90)
        self.picker = pn.widgets.Select(label="Model", options={}, width=380)
        self.upload = ModelUpload(max_bytes=max_upload_bytes, width=380, height=50)
        self.model_status = pn.pane.Alert("", alert_type="info", visible=False, width=380)
        self.details = pn.pane.HTML("", stylesheets=[CSS], width=380)
        self.result = pn.pane.HTML(_hint(HINT), stylesheets=[CSS], width=320, min_height=80)
        self.bars = pn.pane.HTML("", stylesheets=[CSS], width=320)
        self.seen = pn.pane.HTML("", stylesheets=[CSS], width=320)

        self.canvas.param.watch(lambda _: self.predict(), "value")
        self.clear_button.on_click(lambda _: self.clear())
        self.predict_button.on_click(lambda _: self.predict(on_demand=True))
        self.picker.param.watch(lambda event: self.select(event.new), "value")
        self.upload.param.watch(lambda _: self._on_upload(), "nonce")

    # --- layout ---------------------------------------------------------------------------

    def view(self) -> pn.viewable.Viewable:
        drawing = pn.Column(
            pn.pane.Markdown("## Draw a digit", margin=(0, 10)),
            self.canvas,
            pn.Row(self.clear_button, self.predict_button),
        )
        answer = pn.Column(
            pn.pane.Markdown("## The model thinks", margin=(0, 10)),
            self.result,
            self.bars,
            self.seen,
        )
        model = pn.Column(
            pn.pane.Markdown("## Model", margin=(0, 10)),
            self.picker,
            self.details,
            self.upload,
            self.model_status,
        )
        return pn.FlexBox(drawing, answer, model, gap="24px", margin=10)

    # --- models ---------------------------------------------------------------------------

    def refresh(self) -> None:
        """List the source's models now (blocking) and update the picker."""
        try:
            models = self.source.list_models()
        except SourceError as exc:
            self.show_models_error(str(exc))
            return
        self.apply_listing(models)

    async def refresh_async(self) -> None:
        """The periodic refresh: list in a thread so a slow orchestrator stalls no page."""
        try:
            models = await asyncio.to_thread(self.source.list_models)
        except SourceError as exc:
            self.show_models_error(str(exc))
            return
        self.apply_listing(models)

    def show_models_error(self, message: str) -> None:
        if message != self._last_error:  # once per change, not on every refresh
            log.warning("models_unavailable", reason=message)
        self._last_error = message
        if self.model is None:
            self._model_message(message, "danger")

    def apply_listing(self, models: list[ModelInfo]) -> None:
        """New options for the picker (uploads first, then newest first), keeping the pick."""
        self._last_error = None
        self._listed = models
        ordered = [info for info, _ in self._uploads.values()] + models
        infos = {info.key: info for info in ordered}
        if infos == self._infos and self._listed_once:
            return  # nothing new: leave whatever the page says (e.g. a refused upload) alone
        self._listed_once = True
        if not infos:
            self._model_message(no_model_message(self.source), "warning")
        previous, self._infos = self._infos, infos
        current = self.picker.value
        self.picker.options = _labelled(ordered)
        if not ordered:
            self.model = None
            self.details.object = ""
            self._show_result()
            return
        if current not in infos:
            # Nothing picked yet, or the picked file is gone: take the newest.
            self._model_message("", "info")
            self.picker.value = ordered[0].key
        if self.picker.value == current and infos.get(current) != previous.get(current):
            self.select(current)  # same name, new content: reload it

    def select(self, key: str | None) -> None:
        """Load the picked model and re-classify the current drawing with it."""
        if key is None or key not in self._infos:
            return
        info = self._infos[key]
        try:
            if key in self._uploads:
                self.model = self._uploads[key][1]
            else:
                self.model = load_model(self.source, self.cache, info)
        except ShowcaseError as exc:
            self.model = None
            self.details.object = ""
            self._model_message(f"Cannot use {info.name}: {exc}", "danger")
            self._show_result()
            return
        self.details.object = _details_html(info)
        self._model_message("", "info")
        log.info("model_selected", model=info.name, origin=info.origin)
        self.predict()

    def _on_upload(self) -> None:
        if self.upload.rejected:
            self._model_message(f"Not loaded: {self.upload.rejected}", "danger")
            return
        filename, encoded = self.upload.filename, self.upload.data
        self.upload.data = ""  # don't keep a second copy of the file in the session
        try:
            self.add_upload(filename, _b64decode(encoded))
        except ShowcaseError as exc:
            self._model_message(f"{filename} was not loaded: {exc}", "danger")

    def add_upload(self, filename: str, data: bytes) -> ModelInfo:
        """Validate an uploaded model file, offer it in the picker and pick it."""
        if len(data) > self.max_upload_bytes:
            raise InvalidModelError(
                f"the file is {len(data) / 2**20:.1f} MiB; models may be at most "
                f"{self.max_upload_bytes / 2**20:.0f} MiB"
            )
        model = self.cache.load(data)
        info = upload_info(filename, model, len(data))
        self._uploads[info.key] = (info, model)
        log.info("model_uploaded", model=info.name, sha256=model.sha256[:12])
        self.apply_listing(self._listed)
        if self.picker.value == info.key:
            self.select(info.key)
        else:
            self.picker.value = info.key
        return info

    # --- drawing --------------------------------------------------------------------------

    def clear(self) -> None:
        self.canvas.clear_token += 1
        self.canvas.value = ""
        self.prediction = None
        self._show_result()

    def predict(self, on_demand: bool = False) -> None:
        """Classify the drawing with the picked model, or say why not."""
        self.prediction = None
        if not self.canvas.value:
            self._show_result(
                _hint("The canvas is empty: draw a digit first.") if on_demand else None
            )
            return
        if self.model is None:
            self._show_result(_hint("No model is loaded yet, so there is nothing to ask."))
            return
        try:
            digit = preprocess_image(decode_data_url(self.canvas.value))
            self.prediction = self.model.predict(digit.pixels)
        except ShowcaseError as exc:
            self._show_result(_hint(_sentence(str(exc))))
            return
        self._show_result(seen=digit.pixels)

    def _show_result(self, message: str | None = None, seen: Any = None) -> None:
        prediction = self.prediction
        if prediction is None:
            self.result.object = message or _hint(HINT)
            self.bars.object = ""
            self.seen.object = ""
            return
        self.result.object = (
            f'<div class="prediction" id="prediction"><span class="digit" id="predicted-digit">'
            f'{prediction.digit}</span><span class="confidence" id="confidence">'
            f"{prediction.confidence:.1%} confident</span></div>"
        )
        self.bars.object = _bars_html(prediction)
        if seen is not None:
            png = base64.b64encode(to_png(seen)).decode("ascii")
            self.seen.object = (
                '<div class="seen">What the model saw (28x28, centred like MNIST):'
                f'<img id="model-input" alt="28x28 input" src="data:image/png;base64,{png}"></div>'
            )

    def _model_message(self, text: str, kind: AlertKind) -> None:
        self.model_status.object = text
        self.model_status.alert_type = kind
        self.model_status.visible = bool(text)


def _labelled(models: list[ModelInfo]) -> dict[str, str]:
    """Picker options, label to key; a label that repeats gets the file name added."""
    labels = [m.label() for m in models]
    return {
        (label if labels.count(label) == 1 else f"{label} · {m.name}"): m.key
        for label, m in zip(labels, models, strict=True)
    }


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidModelError(f"the upload arrived damaged: {exc}") from exc


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _hint(text: str) -> str:
    return f'<div class="hint" id="hint">{html.escape(text)}</div>'


def _bars_html(prediction: Prediction) -> str:
    rows = []
    for label, p in enumerate(prediction.probabilities):
        top = " top" if label == prediction.digit else ""
        rows.append(
            f'<div class="prob-row{top}" data-digit="{label}"><span class="label">{label}</span>'
            f'<div class="track"><div class="fill" style="width:{p * 100:.1f}%"></div></div>'
            f'<span class="pct">{p:.1%}</span></div>'
        )
    return '<div class="bars" id="prob-bars">' + "".join(rows) + "</div>"


def _details_html(info: ModelInfo) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
        for k, v in info.details().items()
    )
    return f'<table class="details" id="model-details">{rows}</table>'


def create_page(settings: Settings, source: ModelSource, cache: ModelCache) -> pn.viewable.Viewable:
    """A fresh page for one browser session, refreshing its model list in the background."""
    app = ShowcaseApp(source, cache, settings.max_upload_bytes)
    app.refresh()
    if pn.state.curdoc is not None:
        # Panel awaits coroutine functions; its annotation only names plain callables.
        pn.state.add_periodic_callback(
            app.refresh_async,  # type: ignore[arg-type]
            period=int(settings.refresh_s * 1000),
        )
    return app.view()

# Panel's constructors take **params and carry no annotations; calling them is not an error.
# mypy: disable-error-code="no-untyped-call"
"""The Panel page: draw a digit (or upload an image), see the picked model's prediction.

The picked model decides the mode: a 28x28 greyscale model is drawn on, any other image
model takes an uploaded PNG/JPEG (``showcase.upload``), and a model that cannot be served
says why. One ``ShowcaseApp`` per browser session holds its widgets and its picked model;
the model source and the cache of loaded models are shared by all sessions and passed in,
so nothing lives in module globals. Its methods are plain and synchronous, so tests drive
the page without a browser; only the periodic refresh runs I/O in a thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Literal

import panel as pn
import structlog

from showcase import layout, render
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
    too_large,
    upload_info,
)
from showcase.preprocess import decode_data_url, preprocess_image
from showcase.render import CSS, hint, sentence
from showcase.serving import shape_text
from showcase.settings import Settings
from showcase.upload import ACCEPT, MAX_IMAGE_BYTES, prepare_upload, preview_data_url

log = structlog.get_logger(__name__)

AlertKind = Literal["info", "warning", "danger"]

HINT = "Draw a digit in the box: the prediction follows your pen."
IMAGE_HINT = "Upload a PNG or JPEG: the model sees it centre-cropped and resized to its input."


class ShowcaseApp:
    """One session's page and state."""

    def __init__(
        self,
        source: ModelSource,
        cache: ModelCache,
        max_upload_bytes: int,
        dashboard_url: str | None = None,
    ) -> None:
        self.source = source
        self.dashboard_url = dashboard_url
        self.cache = cache
        self.max_upload_bytes = max_upload_bytes
        self.model: LoadedModel | None = None
        self.prediction: Prediction | None = None
        self._infos: dict[str, ModelInfo] = {}
        self._listed_once = False
        self._listed: list[ModelInfo] = []
        self._last_error: str | None = None
        self._uploads: dict[str, tuple[ModelInfo, LoadedModel]] = {}

        self.canvas = DrawCanvas(width=290, height=290, margin=(5, 10))
        self.clear_button = pn.widgets.Button(label="Clear", width=90)
        self.predict_button = pn.widgets.Button(label="Predict", color="primary", width=90)
        self.image_input = pn.widgets.FileInput(
            accept=ACCEPT, multiple=False, width=290, stylesheets=[layout.FILE_INPUT_CSS]
        )
        wide = {"sizing_mode": "stretch_width"}  # as wide as the model card
        self.picker = pn.widgets.Select(label="Model", options={}, **wide)
        self.upload = ModelUpload(
            max_bytes=max_upload_bytes,
            height=70,
            margin=(5, 10),
            stylesheets=[layout.FILE_INPUT_CSS],
            **wide,
        )
        self.model_status = pn.pane.Alert(
            "", alert_type="info", visible=False, stylesheets=[layout.ALERT_CSS], **wide
        )
        self.details = pn.pane.HTML("", stylesheets=[CSS], **wide)
        self.unservable = pn.pane.HTML("", stylesheets=[CSS], **wide)
        self.result = pn.pane.HTML(hint(HINT), stylesheets=[CSS], width=320, min_height=80)
        self.bars = pn.pane.HTML("", stylesheets=[CSS], width=320)
        self.seen = pn.pane.HTML("", stylesheets=[CSS], width=320)
        self.drawing, self.imaging = self._input_cards()
        self._watch()

    def _input_cards(self) -> tuple[pn.Column, pn.Column]:
        """The first column: the canvas, or the image upload (shown for an image model)."""
        drawing = layout.card(
            "draw",
            layout.heading("Draw a digit"),
            self.canvas,
            pn.Row(self.clear_button, self.predict_button),
        )
        imaging = layout.card(
            "draw",
            layout.heading("Upload an image"),
            pn.pane.HTML(render.help_text(IMAGE_HINT), stylesheets=[CSS], width=290),
            self.image_input,
            visible=False,
        )
        return drawing, imaging

    def _watch(self) -> None:
        self.canvas.param.watch(lambda _: self.predict(), "value")
        self.clear_button.on_click(lambda _: self.clear())
        self.predict_button.on_click(lambda _: self.predict(on_demand=True))
        self.image_input.param.watch(lambda _: self.classify_image(), "value")
        self.picker.param.watch(lambda event: self.select(event.new), "value")
        self.upload.param.watch(lambda _: self._on_upload(), "nonce")

    # --- layout ---------------------------------------------------------------------------

    def view(self) -> pn.viewable.Viewable:
        answer = layout.card(
            "answer", layout.heading("The model thinks"), self.result, self.bars, self.seen
        )
        model = layout.card(
            "model",
            layout.heading("Model"),
            self.picker,
            self.details,
            self.upload,
            self.model_status,
            self.unservable,
        )
        title = layout.title_bar(self.source.description, self.dashboard_url)
        return layout.page(title, self.drawing, self.imaging, answer, model)

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
        """New options for the picker (uploads first, then newest first), keeping the pick;
        models it cannot serve stay listed, marked, with a line each saying why."""
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
        self.unservable.object = render.unservable_html(ordered)
        if not ordered:
            self.model = None
            self.details.object = ""
            self._show_mode()
            return
        if current not in infos:
            # Nothing picked yet, or the picked file is gone: take the newest it can serve.
            self._model_message("", "info")
            servable = [info for info in ordered if info.problem is None]
            self.picker.value = (servable or ordered)[0].key
        if self.picker.value == current and infos.get(current) != previous.get(current):
            self.select(current)  # same name, new content: reload it

    def select(self, key: str | None) -> None:
        """Load the picked model and ask it again about the current drawing or image."""
        if key is None or key not in self._infos:
            return
        info = self._infos[key]
        try:
            if info.problem is not None:
                raise InvalidModelError(info.problem)
            if key in self._uploads:
                self.model = self._uploads[key][1]
            else:
                self.model = load_model(self.source, self.cache, info)
        except ShowcaseError as exc:
            self.model = None
            self.details.object = render.details_html(info)
            self._model_message(f"Cannot use {info.name}: {exc}", "danger")
            self._show_mode()
            return
        self.details.object = render.details_html(info)
        self._model_message("", "info")
        log.info("model_selected", model=info.name, origin=info.origin, mode=self.model.mode)
        self._show_mode()

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
            raise InvalidModelError(too_large(len(data), self.max_upload_bytes))
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

    # --- drawing and images ---------------------------------------------------------------

    def _show_mode(self) -> None:
        """The canvas for a drawn model (and while none is loaded), the image upload for an
        image model; then the answer for what is already drawn or uploaded."""
        upload = self.model is not None and self.model.mode == "upload"
        self.drawing.visible = not upload
        self.imaging.visible = upload
        if upload:
            self.classify_image()
        else:
            self.predict()

    def clear(self) -> None:
        self.canvas.clear_token += 1
        self.canvas.value = ""
        self.prediction = None
        self._show_result()

    def predict(self, on_demand: bool = False) -> None:
        """Classify the drawing with the picked model, or say why not."""
        if self.model is not None and self.model.mode != "draw":
            return  # the canvas is hidden: an image model is not drawn on
        self.prediction = None
        if not self.canvas.value:
            self._show_result(
                hint("The canvas is empty: draw a digit first.") if on_demand else None
            )
            return
        if self.model is None:
            self._show_result(hint("No model is loaded yet, so there is nothing to ask."))
            return
        try:
            digit = preprocess_image(decode_data_url(self.canvas.value))
            self.prediction = self.model.predict(digit.pixels)
        except ShowcaseError as exc:
            self._show_result(hint(sentence(str(exc))))
            return
        self._show_result(seen=render.drawn_input_html(digit.pixels))

    def classify_image(self) -> None:
        """Classify the uploaded image (the file input holds the one copy) with the picked
        model, or say why not: a file too large, damaged or not a PNG/JPEG gets a message."""
        self.prediction = None
        data = self.image_input.value
        if self.model is None:
            self._show_result(hint("No model is loaded yet, so there is nothing to ask."))
            return
        if not isinstance(data, bytes):
            self._show_result(hint(IMAGE_HINT))
            return
        try:
            prepared = prepare_upload(data, self.model.spec, MAX_IMAGE_BYTES)
            self.prediction = self.model.classify(prepared.batch)
        except ShowcaseError as exc:
            name = self.image_input.filename or "the image"
            self._show_result(hint(f"{name}: {sentence(str(exc))}"))
            return
        shape = shape_text(self.model.spec)
        self._show_result(seen=render.uploaded_input_html(preview_data_url(prepared.pixels), shape))

    def _show_result(self, message: str | None = None, seen: str | None = None) -> None:
        prediction, model = self.prediction, self.model
        if prediction is None or model is None:
            idle = IMAGE_HINT if model is not None and model.mode == "upload" else HINT
            self.result.object = message or hint(idle)
            self.bars.object = ""
            self.seen.object = ""
            return
        self.result.object = render.result_html(prediction, model.mode)
        self.bars.object = render.bars_html(prediction, model.mode)
        if seen is not None:
            self.seen.object = seen

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


def create_page(settings: Settings, source: ModelSource, cache: ModelCache) -> pn.viewable.Viewable:
    """A fresh page for one browser session, refreshing its model list in the background."""
    # An orchestrator's models: its dashboard is the same address.
    dashboard = settings.orchestrator_urls[0] if settings.orchestrator_urls else None
    app = ShowcaseApp(source, cache, settings.max_upload_bytes, dashboard)
    app.refresh()
    if pn.state.curdoc is not None:
        # Panel awaits coroutine functions; its annotation only names plain callables.
        pn.state.add_periodic_callback(
            app.refresh_async,  # type: ignore[arg-type]
            period=int(settings.refresh_s * 1000),
        )
    return app.view()

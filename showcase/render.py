"""The page's HTML fragments: a prediction, its bars, what the model saw, a model's details.

Pure functions from values to escaped HTML strings, so the page's look is tested without a
browser and ``app.py`` only wires widgets. Element ids (``predicted-digit``, ``prob-bars``,
``top5``, ``model-input``, ...) are what the browser tests look for.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

from showcase.models import ModelInfo, Prediction
from showcase.preprocess import ByteImage, to_png
from showcase.serving import TOP_K, Mode, Ranked, fallback_names

ALL_BARS_UP_TO = 10
"""A drawn model with at most this many classes shows a bar for each; others its top 5."""
MAX_UNSERVABLE_LINES = 10

CSS = """
.prediction { display:flex; align-items:baseline; gap:16px; font-family:system-ui,sans-serif; }
.prediction .digit { font-size:72px; font-weight:700; line-height:1; color:#1f4e8c; }
.prediction .class-name { font-size:40px; font-weight:700; line-height:1.1; color:#1f4e8c; }
.prediction .name { font-size:24px; color:#1f4e8c; }
.prediction .confidence { font-size:18px; color:#333; }
.hint { font-size:15px; color:#555; font-family:system-ui,sans-serif; }
.bars { font-family:ui-monospace,monospace; font-size:13px; width:300px; }
.prob-row { display:flex; align-items:center; gap:6px; margin:2px 0; }
.prob-row .label { width:14px; text-align:right; }
.bars.named .label { width:110px; text-align:left; overflow:hidden; text-overflow:ellipsis;
  white-space:nowrap; }
.prob-row .track { flex:1; height:14px; background:#eceff3; border-radius:3px; }
.prob-row .fill { height:100%; background:#8aa9cf; border-radius:3px; }
.prob-row.top .fill { background:#1f4e8c; }
.prob-row .pct { width:52px; text-align:right; }
.seen { font-family:system-ui,sans-serif; font-size:13px; color:#555; }
.seen img { width:112px; height:112px; image-rendering:pixelated; border:1px solid #8a8f98;
  display:block; margin-top:4px; }
.seen img.upload { width:auto; height:auto; }
.details { font-family:system-ui,sans-serif; font-size:13px; border-collapse:collapse; }
.details td { padding:1px 8px 1px 0; vertical-align:top; }
.details td:first-child { color:#666; white-space:nowrap; }
.unservable { font-family:system-ui,sans-serif; font-size:13px; color:#8a3b12; }
.unservable div { margin:2px 0; }
"""


def hint(text: str) -> str:
    return f'<div class="hint" id="hint">{html.escape(text)}</div>'


def help_text(text: str) -> str:
    """Standing instructions (the answer's ``#hint`` says what happens now)."""
    return f'<div class="hint help">{html.escape(text)}</div>'


def sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def has_names(prediction: Prediction) -> bool:
    """Whether the metadata named the classes (rather than ``class N`` fallbacks)."""
    return prediction.names != fallback_names(len(prediction.names))


def result_html(prediction: Prediction, mode: Mode) -> str:
    """The answer in large type: the digit (and its class name, if it has another) for a
    drawing, the class name for an uploaded image."""
    confidence = (
        f'<span class="confidence" id="confidence">{prediction.confidence:.1%} confident</span>'
    )
    name = html.escape(prediction.name)
    if mode == "upload":
        answer = f'<span class="class-name" id="predicted-class">{name}</span>'
    else:
        answer = f'<span class="digit" id="predicted-digit">{prediction.digit}</span>'
        if has_names(prediction) and prediction.name != str(prediction.digit):
            answer += f'<span class="name" id="predicted-class">{name}</span>'
    return f'<div class="prediction" id="prediction">{answer}{confidence}</div>'


def bars_html(prediction: Prediction, mode: Mode) -> str:
    """A bar per class for a drawn model of few classes (in label order, as always), else
    the top 5, most probable first; labelled with the class names when there are any."""
    named = " named" if has_names(prediction) or mode == "upload" else ""
    if mode == "draw" and len(prediction.probabilities) <= ALL_BARS_UP_TO:
        rows = [
            Ranked(i, name, p)
            for i, (name, p) in enumerate(
                zip(prediction.names, prediction.probabilities, strict=True)
            )
        ]
        labels = [r.name if named else str(r.index) for r in rows]
        body = _rows(rows, labels, prediction.digit, "data-digit")
        return f'<div class="bars{named}" id="prob-bars">{body}</div>'
    top = prediction.top(TOP_K)
    body = _rows(top, [r.name for r in top], prediction.digit, "data-class")
    return f'<div class="bars named" id="top5">{body}</div>'


def _rows(rows: Sequence[Ranked], labels: Sequence[str], best: int, attribute: str) -> str:
    out = []
    for row, label in zip(rows, labels, strict=True):
        top = " top" if row.index == best else ""
        out.append(
            f'<div class="prob-row{top}" {attribute}="{row.index}">'
            f'<span class="label" title="{html.escape(label)}">{html.escape(label)}</span>'
            f'<div class="track"><div class="fill" style="width:{row.probability * 100:.1f}%">'
            f'</div></div><span class="pct">{row.probability:.1%}</span></div>'
        )
    return "".join(out)


def drawn_input_html(pixels: ByteImage) -> str:
    png = base64.b64encode(to_png(pixels)).decode("ascii")
    return (
        '<div class="seen">What the model saw (28x28, centred like MNIST):'
        f'<img id="model-input" alt="28x28 input" src="data:image/png;base64,{png}"></div>'
    )


def uploaded_input_html(preview_url: str, shape: str) -> str:
    return (
        f'<div class="seen">What the model saw ({html.escape(shape)}, centre-cropped and '
        f'resized):<img id="model-input" class="upload" alt="{html.escape(shape)} input" '
        f'src="{html.escape(preview_url)}"></div>'
    )


def details_html(info: ModelInfo) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
        for k, v in info.details().items()
    )
    return f'<table class="details" id="model-details">{rows}</table>'


def unservable_html(infos: Sequence[ModelInfo]) -> str:
    """One line per listed model the showcase cannot serve, saying why."""
    refused = [info for info in infos if info.problem is not None]
    if not refused:
        return ""
    lines = [
        f"<div>{html.escape(info.name)}: cannot serve: {html.escape(info.problem or '')}</div>"
        for info in refused[:MAX_UNSERVABLE_LINES]
    ]
    if len(refused) > MAX_UNSERVABLE_LINES:
        lines.append(f"<div>… and {len(refused) - MAX_UNSERVABLE_LINES} more</div>")
    return '<div class="unservable" id="unservable">' + "".join(lines) + "</div>"

# Panel's constructors take **params and carry no annotations; calling them is not an error.
# mypy: disable-error-code="no-untyped-call"
"""The page's frame: a title bar (with the dashboard's link when an orchestrator is known)
over centred cards, one per column, styled with local CSS only.

Only Panel layouts, panes and stylesheets: no template, since the Fast, Material and Vanilla
templates fetch fonts and CSS from the internet, and the page must work offline.
"""

from __future__ import annotations

import html

import panel as pn

FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "DejaVu Sans", sans-serif'
CARD_WIDTH = {"draw": 330, "answer": 350, "model": 440}
"""Each column's width in px: the model column is the widest, so its picker shows the
labels' first parts (date, accuracy, kind) whole."""

PAGE_STYLES = {"background": "#f4f6f9", "min-height": "100vh", "font-family": FONT}
CARD_STYLES = {
    "background": "#ffffff",
    "border": "1px solid #dde3ea",
    "border-radius": "10px",
    "box-shadow": "0 1px 2px rgb(15 23 42 / 0.06), 0 1px 8px rgb(15 23 42 / 0.04)",
    "padding": "6px 10px 14px",
}

TITLE_CSS = f"""
.titlebar {{ display:flex; align-items:center; gap:14px; flex-wrap:wrap; padding:12px 24px;
  background:#0f172a; color:#f8fafc; font-family:{FONT}; }}
.titlebar h1 {{ margin:0; font-size:18px; letter-spacing:0.2px; }}
.titlebar h1 .muted {{ color:#aab6c8; font-weight:400; }}
.titlebar .source {{ color:#aab6c8; font-size:12px; overflow-wrap:anywhere; }}
.titlebar a {{ margin-left:auto; color:#f8fafc; font-size:13px; font-weight:600;
  text-decoration:none; padding:5px 12px; border:1px solid #475569; border-radius:999px; }}
.titlebar a:hover, .titlebar a:focus {{ background:#1e293b; border-color:#94a3b8; }}
"""

HEADING_CSS = """
h2 { font-size:17px; font-weight:650; color:#0f172a; margin:8px 0 4px; }
"""

ALERT_CSS = """
:host(.alert) { overflow-wrap:anywhere; font-size:13px; padding:8px 12px; border-radius:8px; }
div { width:auto !important; min-width:0 !important; max-width:100%; }
p { margin:0; }
"""
"""Long file names and errors wrap inside the message box instead of running out of it
(Panel gives the text the whole box's width, padding or not)."""

FILE_INPUT_CSS = """
:host { --file-accent:#1d4ed8; }
input[type=file] { width:100%; box-sizing:border-box; font-size:13px; color:#526077;
  padding:10px; border:1.5px dashed #9fb0c7; border-radius:8px; background:#f8fafc; }
input[type=file]:hover { border-color:var(--file-accent); background:#eef3fd; }
input[type=file]::file-selector-button { font:inherit; font-weight:600; color:#fff;
  background:var(--file-accent); border:0; border-radius:6px; padding:6px 12px;
  margin-right:10px; cursor:pointer; }
"""
"""A file input as a dashed drop area with a button: the image upload and the model upload."""


def title_bar(source_description: str, dashboard_url: str | None) -> pn.pane.HTML:
    """The page's name, where its models come from, and the dashboard's link when known."""
    link = (
        f'<a id="dashboard-link" href="{html.escape(dashboard_url + "/")}" target="_blank" '
        'rel="noopener">Open the dashboard ↗</a>'
        if dashboard_url
        else ""
    )
    text = (
        '<header class="titlebar" id="titlebar"><h1>fedavg <span class="muted">try the model'
        f'</span></h1><span class="source">models from {html.escape(source_description)}'
        f"</span>{link}</header>"
    )
    return pn.pane.HTML(text, stylesheets=[TITLE_CSS], sizing_mode="stretch_width", margin=0)


def heading(text: str) -> pn.pane.HTML:
    return pn.pane.HTML(f"<h2>{html.escape(text)}</h2>", stylesheets=[HEADING_CSS], margin=(0, 10))


def card(name: str, *objects: pn.viewable.Viewable, visible: bool = True) -> pn.Column:
    """One column of the page: a white card of a fixed width."""
    return pn.Column(
        *objects,
        width=CARD_WIDTH[name],
        styles=CARD_STYLES,
        css_classes=[f"card-{name}"],
        margin=0,
        visible=visible,
    )


def page(title: pn.pane.HTML, *cards: pn.Column) -> pn.Column:
    """The title bar over the cards, centred, wrapping to fewer columns on a narrow screen."""
    columns = pn.FlexBox(
        *cards,
        gap="20px",
        justify_content="center",
        align_items="flex-start",
        sizing_mode="stretch_width",
        margin=(24, 16),
    )
    return pn.Column(title, columns, sizing_mode="stretch_width", styles=PAGE_STYLES, margin=0)

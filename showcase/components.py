"""The two browser-side pieces Panel has no widget for: a drawing canvas and a guarded upload.

Both are ``panel.custom.JSComponent``s: a little ES module that Panel serves from the app's
own ``/static/``, so they work with no network. Parameters sync both ways over the page's
WebSocket.
"""

from __future__ import annotations

import param
from panel.custom import JSComponent

CANVAS_PX = 280
STROKE_PX = 18
SEND_EVERY_MS = 250


class DrawCanvas(JSComponent):
    """A square canvas drawn on with a mouse, pen or finger (dark ink on white).

    ``value`` is the drawing as a PNG data URL: sent at most every ``SEND_EVERY_MS`` while a
    stroke is being drawn (so predictions follow the pen without flooding the socket) and
    at once when the stroke ends. Bumping ``clear_token`` wipes it and sets ``value`` to "".
    """

    value = param.String(default="", doc="PNG data URL of the drawing, '' when cleared.")
    clear_token = param.Integer(default=0, doc="Increment to clear the canvas.")

    _esm = f"""
const SIZE = {CANVAS_PX}, STROKE = {STROKE_PX}, EVERY = {SEND_EVERY_MS};

export function render({{ model, el }}) {{
  const canvas = document.createElement("canvas");
  canvas.id = "draw-canvas";
  canvas.width = SIZE;
  canvas.height = SIZE;
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", "Drawing area: draw one digit");
  canvas.style.cssText = "width:" + SIZE + "px;height:" + SIZE + "px;touch-action:none;" +
    "cursor:crosshair;background:#fff;border:2px solid #8a8f98;border-radius:8px;display:block";
  const ctx = canvas.getContext("2d");
  let drawing = false, last = null, timer = null;

  function blank() {{
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, SIZE, SIZE);
  }}
  function at(x, y) {{
    const r = canvas.getBoundingClientRect();
    return [(x - r.left) * SIZE / r.width, (y - r.top) * SIZE / r.height];
  }}
  function send() {{
    clearTimeout(timer);
    timer = null;
    model.value = canvas.toDataURL("image/png");
  }}
  function soon() {{
    if (timer === null) timer = setTimeout(send, EVERY);
  }}
  function start(p) {{
    drawing = true;
    last = p;
    ctx.beginPath();
    ctx.arc(p[0], p[1], STROKE / 2, 0, 2 * Math.PI);
    ctx.fillStyle = "#000";
    ctx.fill();
    soon();
  }}
  function move(p) {{
    if (!drawing) return;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.lineWidth = STROKE;
    ctx.strokeStyle = "#000";
    ctx.beginPath();
    ctx.moveTo(last[0], last[1]);
    ctx.lineTo(p[0], p[1]);
    ctx.stroke();
    last = p;
    soon();
  }}
  function end() {{
    if (!drawing) return;
    drawing = false;
    last = null;
    send();
  }}
  const touch = (handler) => (e) => {{
    e.preventDefault();
    const t = e.changedTouches[0];
    if (t) handler(at(t.clientX, t.clientY));
  }};

  canvas.addEventListener("mousedown", (e) => {{
    if (e.button !== 0) return;
    e.preventDefault();
    start(at(e.clientX, e.clientY));
  }});
  canvas.addEventListener("mousemove", (e) => move(at(e.clientX, e.clientY)));
  window.addEventListener("mouseup", end);
  canvas.addEventListener("touchstart", touch(start), {{ passive: false }});
  canvas.addEventListener("touchmove", touch(move), {{ passive: false }});
  canvas.addEventListener("touchend", touch(end), {{ passive: false }});
  canvas.addEventListener("touchcancel", touch(end), {{ passive: false }});

  model.on("clear_token", () => {{
    clearTimeout(timer);
    timer = null;
    drawing = false;
    blank();
    model.value = "";
  }});
  model.on("remove", () => window.removeEventListener("mouseup", end));
  blank();
  el.appendChild(canvas);
}}
"""


class ModelUpload(JSComponent):
    """A file picker for ``.safetensors`` models that refuses oversized files in the browser.

    Checking the size before reading means a huge file never reaches the WebSocket (which
    would drop the page's connection). Python checks the size again and validates the file.
    """

    max_bytes = param.Integer(default=64 * 1024 * 1024, doc="Largest file accepted.")
    filename = param.String(default="", doc="Name of the last file picked.")
    data = param.String(default="", doc="Base64 content of the last accepted file.")
    rejected = param.String(default="", doc="Why the last file was refused in the browser.")
    nonce = param.Integer(default=0, doc="Bumped on every pick, so the same file twice counts.")

    _esm = """
export function render({ model, el }) {
  const label = document.createElement("label");
  label.textContent = "Upload a model (.safetensors): ";
  label.style.cssText = "font-size:14px;display:block";
  const input = document.createElement("input");
  input.type = "file";
  input.id = "model-upload";
  input.accept = ".safetensors";
  input.style.cssText = "margin-top:4px;max-width:100%";
  label.appendChild(input);
  input.addEventListener("change", () => {
    const file = input.files && input.files[0];
    if (!file) return;
    if (file.size > model.max_bytes) {
      model.rejected = file.name + " is " + (file.size / 1048576).toFixed(1) +
        " MiB; models may be at most " + (model.max_bytes / 1048576).toFixed(0) + " MiB";
      model.nonce = model.nonce + 1;
      input.value = "";
      return;
    }
    const reader = new FileReader();
    reader.onload = () => {
      const url = String(reader.result);
      model.rejected = "";
      model.filename = file.name;
      model.data = url.slice(url.indexOf(",") + 1);
      model.nonce = model.nonce + 1;
      input.value = "";
    };
    reader.readAsDataURL(file);
  });
  el.appendChild(label);
}
"""

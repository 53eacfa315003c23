"""JSON text for every answer the server gives: never NaN or Infinity.

``json.dumps`` writes ``NaN`` by default, which is not JSON: a browser's ``JSON.parse``
refuses the whole message and the dashboard stops updating. A number that is not finite
(the loss of a diverged model, say) is written as ``null``, "no number".
"""

from __future__ import annotations

import json
import math
from typing import Any


def dumps(obj: Any, **kwargs: Any) -> str:
    try:  # the common case costs one pass: only a failure walks the object again
        return json.dumps(obj, allow_nan=False, **kwargs)
    except ValueError:
        return json.dumps(finite(obj), allow_nan=False, **kwargs)


def finite(obj: Any) -> Any:
    """``obj`` with every NaN and +-Infinity float replaced by None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj

"""The page's HTML fragments: which bars a prediction gets, and names that are escaped."""

from __future__ import annotations

import re

from node.shared.model import ModelSpec
from node.shared.weights import WeightsMeta
from showcase.models import ModelInfo, Prediction
from showcase.render import bars_html, result_html, unservable_html
from showcase.serving import fallback_names


def prediction(probabilities: list[float], names: tuple[str, ...] | None = None) -> Prediction:
    best = max(range(len(probabilities)), key=lambda i: probabilities[i])
    names = names or fallback_names(len(probabilities))
    return Prediction(best, probabilities[best], tuple(probabilities), names)


def labels(html: str) -> list[str]:
    return re.findall(r'<span class="label" title="[^"]*">([^<]*)</span>', html)


def test_a_drawn_ten_class_model_gets_a_bar_per_class_in_label_order() -> None:
    p = prediction([0.05, 0.05, 0.1, 0.5, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05])

    html = bars_html(p, "draw")

    assert 'id="prob-bars"' in html
    assert labels(html) == [str(d) for d in range(10)]
    assert 'class="prob-row top" data-digit="3"' in html
    assert result_html(p, "draw").count("predicted-class") == 0


def test_a_drawn_model_of_many_classes_gets_its_top5_by_name() -> None:
    probabilities = [0.01] * 26
    probabilities[7], probabilities[20], probabilities[2] = 0.4, 0.2, 0.15
    names = tuple(chr(ord("a") + i) for i in range(26))

    html = bars_html(prediction(probabilities, names), "draw")

    assert 'id="top5"' in html
    assert labels(html) == ["h", "u", "c", "a", "b"]


def test_an_uploaded_images_answer_is_the_class_name() -> None:
    names = ("cat", "dog", "ship")
    p = prediction([0.2, 0.7, 0.1], names)

    assert 'id="predicted-class">dog</span>' in result_html(p, "upload")
    assert "70.0% confident" in result_html(p, "upload")
    assert labels(bars_html(p, "upload")) == ["dog", "cat", "ship"]


def test_class_names_from_a_file_are_escaped() -> None:
    names = ("<img src=x onerror=alert(1)>", "b&c")
    p = prediction([0.9, 0.1], names)

    for html in (result_html(p, "upload"), bars_html(p, "upload"), result_html(p, "draw")):
        assert "<img" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in result_html(p, "upload")
    assert "b&amp;c" in bars_html(p, "upload")


def test_the_unservable_list_names_each_file_and_why() -> None:
    meta = WeightsMeta(ModelSpec())
    infos = [
        ModelInfo("ok", "ok.safetensors", "folder", meta, 1),
        ModelInfo("a", "<a>.safetensors", "folder", None, 1, problem="not <readable>"),
        *(
            ModelInfo(f"m{i}", f"m{i}.safetensors", "folder", None, 1, problem="why")
            for i in range(11)
        ),
    ]

    html = unservable_html(infos)

    assert "&lt;a&gt;.safetensors: cannot serve: not &lt;readable&gt;" in html
    assert "ok.safetensors" not in html
    assert html.count("<div>") == 11  # ten lines and the rest counted
    assert "… and 2 more" in html
    assert unservable_html(infos[:1]) == ""

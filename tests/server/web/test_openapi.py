"""The hand-kept OpenAPI document: valid, in step with the router, and true of a live server.

``server/openapi.json`` is written by hand, so three things keep it honest: it validates
against the OpenAPI 3.1 meta-schema, it names exactly the routes the app registers, and
schemathesis fuzzes a live server with it (positive and negative data, every operation),
checking that no request gets a 5xx and that every answer's status, content type, headers
and JSON body are the ones the document promises.
"""

from __future__ import annotations

import asyncio
import json
import time
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import ClientWebSocketResponse, WSMsgType, web
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from pytest_aiohttp import AiohttpClient
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from node.shared import __version__
from node.shared.model import ModelSpec
from node.shared.protocol import Done, Hello, Train, Welcome, decode, decode_as, encode
from node.shared.shards import decode_xy
from node.shared.weights import WeightsMeta, decode_weights, encode_weights
from server.settings import Settings
from server.web.app import create_app

DOC: dict[str, Any] = json.loads((resources.files("server") / "openapi.json").read_text())
SPEC = ModelSpec(hidden=(8,), dropout=())  # a weights file of ~26 KB: jobs run in a blink
UNDOCUMENTED = ("/ws/", "/static")  # WebSockets (in info.description) and dashboard assets
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
MAX_EXAMPLES = 25  # per operation and generation mode
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
Client = TestClient[Any, Any]


async def _serve_document(request: web.Request) -> web.Response:
    return web.json_response(DOC)


def app_with_openapi(settings: Settings) -> web.Application:
    """``create_app(settings)``, plus ``GET /openapi.json`` only while app.py lacks it."""
    app = create_app(settings)
    if not any(r.canonical == "/openapi.json" for r in app.router.resources()):
        app.router.add_get("/openapi.json", _serve_document)
    return app


def test_the_document_is_valid_openapi_3_1() -> None:
    assert DOC["openapi"].startswith("3.1.")
    assert DOC["info"]["version"] == __version__
    schema = schemathesis.openapi.from_dict(DOC)
    schema.validate()  # the OpenAPI 3.1 meta-schema; raises on the first problem
    results = list(schema.get_all_operations())
    assert all(isinstance(result, Ok) for result in results), results  # every $ref resolves
    assert len(results) == sum(len(set(item) & METHODS) for item in DOC["paths"].values())
    assert "/ws/node" in DOC["info"]["description"]
    assert "/ws/dashboard" in DOC["info"]["description"]


def test_the_error_shape_is_one_shared_component() -> None:
    error = DOC["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    assert error["properties"]["error"]["required"] == ["code", "message"]
    for path, item in DOC["paths"].items():
        for method, operation in item.items():
            for status, answer in operation["responses"].items():
                if status.startswith(("4", "5")):
                    assert answer["$ref"].startswith("#/components/responses/"), (path, method)
    for answer in DOC["components"]["responses"].values():
        assert answer["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"
        }


def test_security_schemes_are_bearer_tokens() -> None:
    schemes = DOC["components"]["securitySchemes"]
    assert {name: (s["type"], s["scheme"]) for name, s in schemes.items()} == {
        "adminToken": ("http", "bearer"),
        "nodeSession": ("http", "bearer"),
    }
    upload = DOC["paths"]["/sync/weights"]["post"]
    assert upload["security"] == [{"nodeSession": []}]
    assert upload["requestBody"]["content"].keys() == {"application/octet-stream"}


def test_the_document_and_the_router_name_the_same_routes(tmp_path: Path) -> None:
    app = app_with_openapi(Settings(home=tmp_path, mnist_download=False))
    routed = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
        and route.method != "HEAD"  # aiohttp adds HEAD to every GET
        and route.resource.canonical != "/"  # the dashboard page
        and not route.resource.canonical.startswith(UNDOCUMENTED)
    }
    documented = {
        (method, path) for path, item in DOC["paths"].items() for method in set(item) & METHODS
    }
    assert routed == documented


def test_documented_bounds_are_the_settings_defaults() -> None:
    epochs = _query_parameter("/train/{dataset_id}", "post", "epochs")["schema"]
    defaults = Settings()
    assert (epochs["minimum"], epochs["maximum"], epochs["default"]) == (
        1,
        defaults.max_rounds,
        defaults.default_rounds,
    )
    limit = _query_parameter("/monitor/timeline", "get", "limit")["schema"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 1000, 100)


@pytest.mark.parametrize(
    ("path", "method", "name", "prefix"),
    [
        ("/monitor/timeline", "get", "limit", "/monitor/timeline?"),
        ("/train/{dataset_id}", "post", "epochs", "/train/mnist?"),
    ],
)
async def test_documented_bounds_are_the_servers(
    aiohttp_client: AiohttpClient, tmp_path: Path, path: str, method: str, name: str, prefix: str
) -> None:
    """Just inside the documented range is accepted, just outside is a 400 naming the value."""
    client = await aiohttp_client(app_with_openapi(Settings(home=tmp_path, mnist_download=False)))
    assert (await client.post("/datasets/prepare-mnist")).status == 200
    schema = _query_parameter(path, method, name)["schema"]
    for value in (schema["minimum"] - 1, schema["maximum"] + 1):
        resp = await client.request(method, f"{prefix}{name}={value}")
        assert resp.status == 400, value
        assert name in (await resp.json())["error"]["message"]
    for value in (schema["minimum"], schema["maximum"]):
        resp = await client.request(method, f"{prefix}{name}={value}")
        assert resp.status != 400, value  # /train/mnist goes on to 409: no nodes


async def test_openapi_json_is_served(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    client = await aiohttp_client(app_with_openapi(Settings(home=tmp_path, mnist_download=False)))
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert await resp.json() == DOC


# -- schemathesis against a live server ----------------------------------------------------------


async def test_a_live_server_keeps_every_promise_of_the_document(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    """Fuzz every operation on a server with history: a finished job, a saved model, a running
    job and a connected node whose session token the node-only operations are given."""
    settings = Settings(home=tmp_path, mnist_download=False, model_spec=SPEC, heartbeat_s=30.0)
    client = await aiohttp_client(app_with_openapi(settings))
    ws, token = await _lived_in(client)
    base_url = str(client.make_url("")).rstrip("/")

    started = time.monotonic()
    failures, requests_made = await asyncio.to_thread(_fuzz, base_url, token)
    elapsed = time.monotonic() - started

    assert not failures, f"{len(failures)} failures; the first ones:\n" + "\n".join(failures[:20])
    assert requests_made > 100
    assert elapsed < 60, f"fuzzing took {elapsed:.0f} s"
    view = await (await client.get("/sync/status")).json()
    if view["state"] == "running":  # unless the fuzzer stopped it, the job is untouched
        assert (view["round"], view["received"]) == (1, [])
    health = await client.get("/health")
    assert health.status == 200
    await ws.close()


def _fuzz(base_url: str, token: str) -> tuple[list[str], int]:
    """Run in a worker thread: schemathesis's transport is blocking ``requests``."""
    schema = schemathesis.openapi.from_dict(DOC)
    failures: list[str] = []
    made = 0
    with requests.Session() as session:
        for result in schema.get_all_operations():
            assert isinstance(result, Ok), result
            operation = result.ok()
            node_only = operation.path.startswith(("/sync/weights", "/shards"))
            for mode in GenerationMode:
                # Positive cases carry the node's real token, to get past 401 into the
                # handler; negative ones keep their generated Authorization, to fuzz it.
                real_token = node_only and mode is GenerationMode.POSITIVE
                auth = {"Authorization": f"Bearer {token}"} if real_token else {}
                try:
                    made += _fuzz_operation(operation, mode, base_url, session, auth, failures)
                except Unsatisfiable:
                    assert mode is GenerationMode.NEGATIVE  # no inputs, nothing to get wrong
    return failures, made


def _fuzz_operation(
    operation: APIOperation[Any, Any, Any, Any],
    mode: GenerationMode,
    base_url: str,
    session: requests.Session,
    headers: dict[str, str],
    failures: list[str],
) -> int:
    """Up to MAX_EXAMPLES cases of one operation; failures are collected, not raised."""
    made = 0

    @hypothesis_settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: the time stays bounded
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Case[Any]) -> None:
        nonlocal made
        made += 1
        try:
            case.call_and_validate(
                base_url=base_url, session=session, headers=headers, checks=CHECKS
            )
        except FailureGroup as group:
            failures.append(f"{operation.label} [{mode.value}]: {group}")
            failures.extend(f"    {exc}" for exc in group.exceptions)

    check()
    return made


async def _lived_in(client: Client) -> tuple[ClientWebSocketResponse, str]:
    """A completed one-round job with a saved model, then a second job left running."""
    ws = await client.ws_connect("/ws/node")
    await ws.send_str(
        encode(
            Hello(
                node_id="n1", name="one", capacity=100.0, device="cpu", version="t", secret="s" * 43
            )
        )
    )
    welcome: Welcome = decode_as(await _text(ws), Welcome)
    auth = {"Authorization": f"Bearer {welcome.session_token}"}
    assert (await client.post("/datasets/prepare-mnist")).status == 200

    assert (await client.post("/train/mnist?epochs=1")).status == 202
    train: Train = decode_as(await _text(ws), Train)
    state, _ = decode_weights(await (await client.get(train.weights_url)).read())
    _, y = decode_xy(await (await client.get(train.shard_url, headers=auth)).read())
    body = encode_weights(
        {k: v + 0.01 for k, v in state.items()},
        WeightsMeta(spec=SPEC, round=1, job_id=train.job_id),
    )
    params = {"job": train.job_id, "round": "1", "samples": str(len(y)), "seconds": "1.5"}
    resp = await client.post("/sync/weights", params=params, data=body, headers=auth)
    assert resp.status == 200, await resp.text()
    assert isinstance(decode(await _text(ws)), Done)

    assert (await client.post("/train/mnist?epochs=3")).status == 202
    assert isinstance(decode(await _text(ws)), Train)
    models = await (await client.get("/models")).json()
    assert [m["kind"] for m in models["models"]] == ["final", "best"]
    return ws, welcome.session_token


async def _text(ws: ClientWebSocketResponse) -> str:
    msg = await ws.receive(timeout=20)
    assert msg.type is WSMsgType.TEXT, msg
    return str(msg.data)


def _query_parameter(path: str, method: str, name: str) -> dict[str, Any]:
    for parameter in DOC["paths"][path][method]["parameters"]:
        if parameter.get("name") == name:
            return dict(parameter)
    raise AssertionError(f"{method} {path} documents no {name!r}")

"""Where models come from: a folder (read fresh each time), or an orchestrator's REST API.

The orchestrator is played by a tiny aiohttp app serving the two documented routes from a
folder, the way a third-party HTTP endpoint would be stubbed: the showcase only knows the
contract (``GET /models``, ``GET /models/<name>``), never the server's code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web
from showcase_support import AiohttpServer, TrainedModel, fake_orchestrator, model_bytes, serve

from node.shared.model import ModelSpec, init_state
from node.shared.weights import MAX_HEADER_BYTES, WeightsMeta, encode_weights
from showcase.errors import InvalidModelError, NoModelError, SourceError
from showcase.models import ModelCache, load_model
from showcase.sources import DirectorySource, OrchestratorSource, read_file_metadata


def when(day: int) -> datetime:
    return datetime(2025, 3, day, 9, 0, tzinfo=UTC)


# --- a folder ----------------------------------------------------------------------------


def test_a_missing_folder_has_no_models(tmp_path: Path) -> None:
    assert DirectorySource(tmp_path / "nowhere").list_models() == []


def test_folder_lists_models_newest_first_with_their_metadata(tmp_path: Path) -> None:
    (tmp_path / "a.safetensors").write_bytes(model_bytes(created=when(1), test_accuracy=0.8))
    (tmp_path / "c.safetensors").write_bytes(model_bytes(created=when(3), test_accuracy=0.9))
    (tmp_path / "b.safetensors").write_bytes(model_bytes(created=when(2), rounds=7))

    models = DirectorySource(tmp_path).list_models()

    assert [m.name for m in models] == ["c.safetensors", "b.safetensors", "a.safetensors"]
    assert models[0].test_accuracy == pytest.approx(0.9)
    assert models[1].rounds == 7
    assert models[0].created == when(3)
    assert all(m.origin == "folder" and m.size > 0 for m in models)


def test_folder_skips_what_is_not_a_model_file_and_lists_broken_ones_with_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "good.safetensors").write_bytes(model_bytes(created=when(2)))
    (tmp_path / "junk.safetensors").write_bytes(b"not a model at all")
    os.utime(tmp_path / "junk.safetensors", (0, 0))
    (tmp_path / ".partial.safetensors").write_bytes(model_bytes())
    (tmp_path / "good.safetensors.tmp").write_bytes(model_bytes())
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "dir.safetensors").mkdir()
    source = DirectorySource(tmp_path)

    for _ in range(2):
        good, junk = source.list_models()
        assert (good.name, good.problem) == ("good.safetensors", None)
        assert junk.name == "junk.safetensors"
        assert junk.meta is None
        assert junk.problem is not None and "not a readable model file" in junk.problem
    assert capsys.readouterr().out.count("model_file_unusable") == 1  # once per version


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (b"\x10\x00", "truncated safetensors"),
        (struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}", "header length is out of bounds"),
        (struct.pack("<Q", 2) + b"[]", "header must be an object"),
        (struct.pack("<Q", 3) + b"{x}", "header is not JSON"),
    ],
)
def test_a_folder_file_with_a_bad_header_is_refused_by_the_shared_parser(
    tmp_path: Path, head: bytes, message: str
) -> None:
    (tmp_path / "bad.safetensors").write_bytes(head)
    with pytest.raises(InvalidModelError, match=message):
        read_file_metadata(tmp_path / "bad.safetensors")
    (listed,) = DirectorySource(tmp_path).list_models()
    assert listed.problem is not None and message in listed.problem


def test_folder_without_created_metadata_falls_back_to_file_time(tmp_path: Path) -> None:
    undated = encode_weights(init_state(ModelSpec(), seed=1), WeightsMeta(ModelSpec()))
    (tmp_path / "dated.safetensors").write_bytes(model_bytes(created=when(1)))
    (tmp_path / "undated-new.safetensors").write_bytes(undated)
    (tmp_path / "undated-old.safetensors").write_bytes(undated)
    os.utime(tmp_path / "undated-old.safetensors", (0, 0))

    names = [m.name for m in DirectorySource(tmp_path).list_models()]

    assert names == ["undated-new.safetensors", "dated.safetensors", "undated-old.safetensors"]


def test_a_new_model_appears_without_restarting(tmp_path: Path) -> None:
    source = DirectorySource(tmp_path)
    assert source.list_models() == []

    (tmp_path / "fresh.safetensors").write_bytes(model_bytes())

    assert [m.name for m in source.list_models()] == ["fresh.safetensors"]


def test_folder_fetch_reads_the_file_and_refuses_odd_names(tmp_path: Path) -> None:
    data = model_bytes()
    (tmp_path / "m.safetensors").write_bytes(data)
    source = DirectorySource(tmp_path)
    (info,) = source.list_models()

    assert source.fetch(info) == data
    (tmp_path / "m.safetensors").unlink()
    with pytest.raises(NoModelError, match="no longer"):
        source.fetch(info)
    for name in ("../m.safetensors", "m.txt", ".hidden.safetensors"):
        with pytest.raises(NoModelError):
            source.fetch(dataclasses.replace(info, name=name))


def test_folder_refuses_files_over_the_limit(tmp_path: Path) -> None:
    (tmp_path / "m.safetensors").write_bytes(model_bytes())
    source = DirectorySource(tmp_path)
    (info,) = source.list_models()
    small = DirectorySource(tmp_path, max_bytes=1000)

    (listed,) = small.list_models()
    assert listed.problem is not None and "at most 0 MiB" in listed.problem
    with pytest.raises(InvalidModelError, match="at most"):
        small.fetch(info)


def test_loading_through_the_cache_decodes_once(models_dir: Path) -> None:
    source = DirectorySource(models_dir)
    cache = ModelCache()
    (info,) = source.list_models()

    assert load_model(source, cache, info) is load_model(source, cache, info)
    assert len(cache) == 1


# --- an orchestrator ---------------------------------------------------------------------


async def test_orchestrator_lists_and_downloads_models(
    aiohttp_server: AiohttpServer, models_dir: Path, trained: TrainedModel
) -> None:
    (models_dir / "final-older.safetensors").write_bytes(model_bytes(created=when(1)))
    source = OrchestratorSource([await serve(aiohttp_server, fake_orchestrator(models_dir))])

    models = await asyncio.to_thread(source.list_models)

    assert [m.name for m in models] == [trained.path.name, "final-older.safetensors"]
    newest = models[0]
    assert newest.origin == "orchestrator"
    assert newest.sha256 == hashlib.sha256(trained.data).hexdigest()
    assert newest.rounds == 5 and newest.nodes == 3
    assert newest.test_accuracy == pytest.approx(trained.test_accuracy, abs=1e-4)
    assert await asyncio.to_thread(source.fetch, newest) == trained.data


async def test_orchestrator_model_is_loaded_once_then_served_from_cache(
    aiohttp_server: AiohttpServer, models_dir: Path
) -> None:
    source = OrchestratorSource([await serve(aiohttp_server, fake_orchestrator(models_dir))])
    cache = ModelCache()
    (info,) = await asyncio.to_thread(source.list_models)
    first = await asyncio.to_thread(load_model, source, cache, info)
    (models_dir / info.name).unlink()  # a second download would now fail

    assert await asyncio.to_thread(load_model, source, cache, info) is first


async def test_a_download_that_does_not_match_its_sha256_is_refused(
    aiohttp_server: AiohttpServer, models_dir: Path
) -> None:
    app = fake_orchestrator(models_dir, corrupt=True)
    source = OrchestratorSource([await serve(aiohttp_server, app)])
    (info,) = await asyncio.to_thread(source.list_models)

    with pytest.raises(InvalidModelError, match="sha256"):
        await asyncio.to_thread(source.fetch, info)


async def test_a_model_gone_from_the_orchestrator_is_a_clear_error(
    aiohttp_server: AiohttpServer, models_dir: Path
) -> None:
    source = OrchestratorSource([await serve(aiohttp_server, fake_orchestrator(models_dir))])
    (info,) = await asyncio.to_thread(source.list_models)
    (models_dir / info.name).unlink()

    with pytest.raises(NoModelError):
        await asyncio.to_thread(source.fetch, info)


async def test_an_unreachable_orchestrator_is_a_source_error() -> None:
    source = OrchestratorSource(["http://127.0.0.1:9"], timeout_s=2)

    with pytest.raises(SourceError, match="cannot reach"):
        await asyncio.to_thread(source.list_models)


async def test_the_next_orchestrator_url_is_tried_when_one_is_down(
    aiohttp_server: AiohttpServer, models_dir: Path
) -> None:
    good = await serve(aiohttp_server, fake_orchestrator(models_dir))
    source = OrchestratorSource(["http://127.0.0.1:9", good], timeout_s=2)

    assert len(await asyncio.to_thread(source.list_models)) == 1


async def test_bad_listings_and_entries_are_handled(aiohttp_server: AiohttpServer) -> None:
    async def listing(_: web.Request) -> web.Response:
        spec = ModelSpec().to_dict()
        return web.json_response(
            {
                "models": [
                    "junk",
                    {"name": "../evil", "metadata": {"model_spec": spec}},
                    {"name": "bad-spec", "metadata": {"model_spec": {"arch": "vit"}}},
                    {
                        "name": "ok",
                        "sha256": "x",
                        "size": -1,
                        "metadata": {"model_spec": spec},
                    },
                ]
            }
        )

    app = web.Application()
    app.router.add_get("/models", listing)
    source = OrchestratorSource([await serve(aiohttp_server, app)])

    bad, ok = sorted(await asyncio.to_thread(source.list_models), key=lambda m: m.name)

    assert (ok.name, ok.sha256, ok.size, ok.problem) == ("ok", None, 0, None)
    assert bad.name == "bad-spec" and bad.meta is None
    assert bad.problem is not None and "unknown 'vit'" in bad.problem


async def test_a_listing_that_is_not_json_is_a_source_error(
    aiohttp_server: AiohttpServer,
) -> None:
    async def listing(_: web.Request) -> web.Response:
        return web.Response(text="<html>proxy login</html>")

    app = web.Application()
    app.router.add_get("/models", listing)
    source = OrchestratorSource([await serve(aiohttp_server, app)])

    with pytest.raises(SourceError, match="not a listing"):
        await asyncio.to_thread(source.list_models)


async def test_downloads_over_the_limit_are_refused(
    aiohttp_server: AiohttpServer, models_dir: Path
) -> None:
    url = await serve(aiohttp_server, fake_orchestrator(models_dir))
    (info,) = await asyncio.to_thread(OrchestratorSource([url]).list_models)

    with pytest.raises(InvalidModelError, match="at most"):
        await asyncio.to_thread(OrchestratorSource([url], max_bytes=1000).fetch, info)

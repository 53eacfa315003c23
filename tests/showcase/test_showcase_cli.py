"""Settings: env vars give defaults, flags override them, bad values stop startup clearly."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import structlog

from showcase.cli import build_source, configure_logging, parse_args
from showcase.errors import SettingsError
from showcase.settings import Settings, default_models_dir, parse_urls
from showcase.sources import DirectorySource, OrchestratorSource

HOME = {"HOME": "/home/ada"}


def test_defaults() -> None:
    settings = Settings.from_env(HOME)

    assert (settings.host, settings.port) == ("127.0.0.1", 7860)
    assert settings.models_dir == Path("/home/ada/.local/share/fedavg/models")
    assert settings.orchestrator_urls == ()
    assert settings.max_upload_bytes == 64 * 1024 * 1024


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"XDG_DATA_HOME": "/data"}, "/data/fedavg/models"),
        ({"XDG_DATA_HOME": "/data", "FEDAVG_HOME": "/srv/fedavg"}, "/srv/fedavg/models"),
        ({"FEDAVG_HOME": "/srv/fedavg", "FEDAVG_MODELS_DIR": "/m"}, "/m"),
    ],
)
def test_models_dir_follows_the_orchestrators_data_directory(
    env: dict[str, str], expected: str
) -> None:
    assert default_models_dir({**HOME, **env}) == Path(expected)


def test_orchestrator_url_from_env_selects_the_rest_api() -> None:
    env = {**HOME, "ORCHESTRATOR_URL": "http://a:11999/, http://b:11999"}

    assert Settings.from_env(env).orchestrator_urls == ("http://a:11999", "http://b:11999")


def test_an_explicit_models_dir_env_wins_over_an_orchestrator_url_env() -> None:
    env = {**HOME, "ORCHESTRATOR_URL": "http://a:11999", "FEDAVG_MODELS_DIR": "/m"}

    settings = Settings.from_env(env)

    assert settings.orchestrator_urls == ()
    assert settings.models_dir == Path("/m")


def test_flags_override_env() -> None:
    env = {**HOME, "SHOWCASE_PORT": "8000", "SHOWCASE_HOST": "0.0.0.0", "FEDAVG_MODELS_DIR": "/m"}

    settings = parse_args(
        ["--port", "7000", "--host", "127.0.0.1", "--orchestrator", "http://o:11999"], env
    )

    assert (settings.host, settings.port) == ("127.0.0.1", 7000)
    assert settings.orchestrator_urls == ("http://o:11999",)


def test_models_dir_flag_overrides_an_orchestrator_from_env() -> None:
    env = {**HOME, "ORCHESTRATOR_URL": "http://o:11999"}

    settings = parse_args(["--models-dir", "/x/models"], env)

    assert settings.orchestrator_urls == ()
    assert settings.models_dir == Path("/x/models")


def test_allowed_origins_come_from_env_and_flags() -> None:
    env = {**HOME, "SHOWCASE_ALLOW_ORIGIN": "box.lan:7860"}

    settings = parse_args(["--allow-origin", "10.0.0.5:7860"], env)

    assert settings.websocket_origins == [
        "10.0.0.5:7860",
        "127.0.0.1:7860",
        "box.lan:7860",
        "localhost:7860",
    ]


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--port", "70000"], {}, "between 1 and 65535"),
        (["--port", "seven"], {}, "invalid int"),
        ([], {"SHOWCASE_PORT": "x"}, "SHOWCASE_PORT must be a port"),
        (["--orchestrator", "ftp://o"], {}, "must look like http"),
        (["--orchestrator", " , "], {}, "needs a URL"),
        ([], {"ORCHESTRATOR_URL": "o:11999"}, "must look like http"),
        (["--models-dir", "/m", "--orchestrator", "http://o"], {}, "not allowed with"),
    ],
)
def test_bad_values_stop_startup_with_a_clear_message(
    argv: list[str], env: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv, {**HOME, **env})

    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_settings_validate_themselves() -> None:
    with pytest.raises(SettingsError):
        Settings(port=0)
    with pytest.raises(SettingsError):
        Settings(refresh_s=0)
    with pytest.raises(SettingsError):
        parse_urls("http://")


def test_the_websocket_has_room_for_the_largest_upload() -> None:
    settings = Settings(max_upload_bytes=3 * 1024 * 1024)

    assert settings.websocket_max_message_bytes >= 4 * 1024 * 1024


def test_the_source_follows_the_settings(tmp_path: Path) -> None:
    assert isinstance(build_source(Settings(models_dir=tmp_path)), DirectorySource)
    orchestrated = build_source(Settings(orchestrator_urls=("http://o:1",)))
    assert isinstance(orchestrated, OrchestratorSource)


def test_logs_are_json_lines_when_not_a_terminal() -> None:
    stream = io.StringIO()
    configure_logging(stream)
    try:
        structlog.get_logger("showcase.test").info("model_selected", model="m.safetensors")
    finally:
        structlog.reset_defaults()

    event = json.loads(stream.getvalue())
    assert event["event"] == "model_selected"
    assert event["model"] == "m.safetensors"
    assert event["level"] == "info"

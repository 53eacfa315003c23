"""Settings: env vars give defaults, flags override them, bad values stop startup clearly."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from node.shared.logs import LOG_BURST, configure_logging
from showcase import cli
from showcase.cli import build_source, parse_args
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
    assert settings.log_format == "auto"


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


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_logs_are_json_lines_when_not_a_terminal() -> None:
    stream = io.StringIO()
    configure_logging(Settings.from_env(HOME).log_format, stream=stream)
    structlog.get_logger("showcase.test").info("model_selected", model="m.safetensors")
    logging.getLogger("bokeh.server").warning("Refusing websocket connection from %s", "x")

    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "model_selected"
    assert first["model"] == "m.safetensors"
    assert first["level"] == "info"
    # Panel's and Bokeh's own records (the standard library's) are JSON lines too.
    assert (second["logger"], second["level"]) == ("bokeh.server", "warning")


@pytest.mark.usefixtures("restore_logging")
def test_repeated_lines_are_capped_like_the_servers() -> None:
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    for i in range(LOG_BURST + 30):
        structlog.get_logger("showcase.test").warning("model_unreadable", i=i)

    assert len(stream.getvalue().splitlines()) == LOG_BURST


@pytest.mark.parametrize(("value", "expected"), [("json", "json"), ("console", "console")])
def test_the_log_format_comes_from_fedavg_log_format(value: str, expected: str) -> None:
    assert parse_args([], {**HOME, "FEDAVG_LOG_FORMAT": value}).log_format == expected


def test_a_bad_log_format_stops_startup(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args([], {**HOME, "FEDAVG_LOG_FORMAT": "xml"})

    assert exit_info.value.code == 2
    assert "FEDAVG_LOG_FORMAT must be auto, json or console" in capsys.readouterr().err


def test_main_sets_up_the_shared_logging_in_the_configured_format(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, object]] = []
    monkeypatch.setattr(cli, "configure_logging", lambda fmt: calls.append(("logging", fmt)))
    monkeypatch.setattr(cli, "serve", lambda settings: calls.append(("serve", settings.port)))
    monkeypatch.setenv("FEDAVG_LOG_FORMAT", "console")

    cli.main(["--port", "7001"])

    assert calls == [("logging", "console"), ("serve", 7001)]


def test_home_serves_its_models_folder_whatever_the_orchestrator_variable() -> None:
    env = {**HOME, "ORCHESTRATOR_URL": "http://orch:11999"}
    settings = parse_args(["--home", "/srv/fed"], env)
    assert settings.models_dir == Path("/srv/fed/models")
    assert settings.orchestrator_urls == ()
    # FEDAVG_MODELS_DIR still moves the folder, as it does for the server's --home.
    moved = parse_args(["--home", "/srv/fed"], {**env, "FEDAVG_MODELS_DIR": "/m"})
    assert moved.models_dir == Path("/m")


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        ([], {"SHOWCASE_PORT": "abc"}, "SHOWCASE_PORT"),
        ([], {"ORCHESTRATOR_URL": "o:1"}, "ORCHESTRATOR_URL"),
        (["--orchestrator", "o:1"], {}, "--orchestrator"),
        (["--port", "0"], {}, "--port"),
        ([], {"FEDAVG_LOG_FORMAT": "xml"}, "FEDAVG_LOG_FORMAT"),
        (["--home", "/h", "--orchestrator", "http://o"], {}, "not allowed with"),
    ],
)
def test_a_bad_value_stops_startup_in_one_line_naming_it(
    argv: list[str], env: dict[str, str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv, {**HOME, **env})
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert named in err
    if named != "not allowed with":  # argparse's own refusals come with their usage line
        assert err.count("\n") == 1 and err.startswith("fedavg-showcase: ")

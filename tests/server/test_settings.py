"""Orchestrator settings: defaults, environment values, flags over env, clear start-up errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from node.shared.model import ModelSpec
from node.shared.protocol import TrainConfig
from server.settings import AGGREGATIONS, MiB, Settings, SettingsError

ENV = {"HOME": "/home/fed"}


def test_defaults() -> None:
    settings = Settings.from_env(ENV)
    assert settings.host == "127.0.0.1"
    assert settings.port == 11999
    assert settings.home == Path("/home/fed/.local/share/fedavg")
    assert settings.datasets_path == settings.home / "datasets"
    assert settings.models_path == settings.home / "models"
    assert settings.runs_path == settings.home / "runs"
    assert settings.db_path == settings.home / "fedavg.sqlite3"
    assert settings.round_deadline_s == 120.0
    assert settings.default_rounds == 5
    assert settings.shard_overlap == 0.15
    assert settings.aggregation == "weighted"
    assert settings.best_metric == "test_accuracy"
    assert settings.model_spec == ModelSpec()
    assert settings.train_config == TrainConfig()
    assert settings.seed == 0
    assert settings.mnist_download is True
    assert settings.admin_token is None
    assert settings.node_token is None
    assert settings.insecure is False
    assert settings.max_upload_bytes == 512 * MiB
    assert settings.is_loopback


def test_env_values() -> None:
    settings = Settings.from_env(
        {
            "FEDAVG_HOST": "::1",
            "FEDAVG_PORT": "12000",
            "FEDAVG_HOME": "/srv/fed",
            "FEDAVG_DATASETS_DIR": "/data/sets",
            "FEDAVG_MODELS_DIR": "/data/models",
            "EPOCH_SYNC_TIMEOUT": "30.5",
            "DEFAULT_EPOCHS": "7",
            "SHARD_OVERLAP": "0",
            "AGGREGATION": "uniform",
            "FEDAVG_LR": "0.05",
            "FEDAVG_BATCH_SIZE": "64",
            "FEDAVG_OPTIMIZER": "sgd",
            "FEDAVG_SEED": "11",
            "FEDAVG_MNIST_DOWNLOAD": "no",
            "FEDAVG_ADMIN_TOKEN": "adm",
            "FEDAVG_NODE_TOKEN": "join",
            "FEDAVG_HEARTBEAT": "2.5",
            "FEDAVG_MAX_UPLOAD_MB": "3",
            "FEDAVG_LOG_FORMAT": "json",
            "WANDB_PROJECT": "fed",
        }
    )
    assert settings.host == "::1"
    assert settings.is_loopback
    assert settings.port == 12000
    assert settings.home == Path("/srv/fed")
    assert settings.datasets_path == Path("/data/sets")
    assert settings.models_path == Path("/data/models")
    assert settings.runs_path == Path("/srv/fed/runs")
    assert settings.round_deadline_s == 30.5
    assert settings.default_rounds == 7
    assert settings.shard_overlap == 0.0
    assert settings.aggregation == "uniform"
    assert settings.train_config == TrainConfig(lr=0.05, batch_size=64, optimizer="sgd")
    assert settings.seed == 11
    assert settings.mnist_download is False
    assert (settings.admin_token, settings.node_token) == ("adm", "join")
    assert settings.heartbeat_s == 2.5
    assert settings.max_upload_bytes == 3 * MiB
    assert settings.log_format == "json"
    assert settings.wandb_project == "fed"


def test_model_hidden_and_dropout_variables_shape_the_spec() -> None:
    settings = Settings.from_env(
        {
            **ENV,
            "MODEL_HIDDEN_1": "512",
            "MODEL_HIDDEN_3": "32",
            "MODEL_DROPOUT_2": "0",
        }
    )
    assert settings.model_spec == ModelSpec(hidden=(512, 128, 32), dropout=(0.3, 0.0))


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"MODEL_HIDDEN_1": "wide"}, "MODEL_HIDDEN_1='wide' is not a whole number"),
        ({"MODEL_HIDDEN_2": "0"}, "MODEL_HIDDEN_2=0: hidden layers must be"),
        ({"MODEL_HIDDEN_2": "-5"}, "MODEL_HIDDEN_2=-5: hidden layers must be"),
        ({"MODEL_HIDDEN_1": "1e3"}, "MODEL_HIDDEN_1='1e3'"),
        ({"MODEL_DROPOUT_1": "1.5"}, "MODEL_DROPOUT_1=1.5: dropout"),
        ({"MODEL_DROPOUT_1": "half"}, "MODEL_DROPOUT_1='half' is not a number"),
    ],
)
def test_bad_model_variables_are_refused(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(SettingsError, match=fragment):
        Settings.from_env({**ENV, **env})


@pytest.mark.parametrize("name", AGGREGATIONS)
def test_every_aggregation_is_accepted(name: str) -> None:
    assert Settings.from_env({**ENV, "AGGREGATION": name}).aggregation == name


@pytest.mark.parametrize("value", ["1", "true", "YES", " on "])
def test_true_booleans(value: str) -> None:
    assert Settings.from_env({**ENV, "FEDAVG_MNIST_DOWNLOAD": value}).mnist_download is True


@pytest.mark.parametrize("value", ["0", "false", "No", "off"])
def test_false_booleans(value: str) -> None:
    assert Settings.from_env({**ENV, "FEDAVG_MNIST_DOWNLOAD": value}).mnist_download is False


def test_flags_override_env(tmp_path: Path) -> None:
    env = {**ENV, "FEDAVG_HOST": "::1", "FEDAVG_PORT": "12000", "FEDAVG_HOME": "/srv/fed"}
    settings = Settings.from_env(
        env, host="127.0.0.2", port=0, home=tmp_path, log_format="console", insecure=None
    )
    assert settings.host == "127.0.0.2"
    assert settings.port == 0
    assert settings.home == tmp_path
    assert settings.log_format == "console"
    assert settings.insecure is False  # None means "flag not given"


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"FEDAVG_PORT": "70000"}, "port 70000 is not 0..65535"),
        ({"FEDAVG_PORT": "-1"}, "port -1"),
        ({"FEDAVG_PORT": "http"}, "FEDAVG_PORT='http' is not a whole number"),
        ({"EPOCH_SYNC_TIMEOUT": "-5"}, "EPOCH_SYNC_TIMEOUT must be"),
        ({"EPOCH_SYNC_TIMEOUT": "0"}, "EPOCH_SYNC_TIMEOUT must be"),
        ({"EPOCH_SYNC_TIMEOUT": "nan"}, "EPOCH_SYNC_TIMEOUT must be"),
        ({"EPOCH_SYNC_TIMEOUT": "inf"}, "EPOCH_SYNC_TIMEOUT must be"),
        ({"EPOCH_SYNC_TIMEOUT": "soon"}, "EPOCH_SYNC_TIMEOUT='soon' is not a number"),
        ({"DEFAULT_EPOCHS": "0"}, "DEFAULT_EPOCHS must be 1..1000"),
        ({"DEFAULT_EPOCHS": "1001"}, "DEFAULT_EPOCHS must be 1..1000"),
        ({"SHARD_OVERLAP": "1.5"}, "SHARD_OVERLAP"),
        ({"SHARD_OVERLAP": "nan"}, "SHARD_OVERLAP"),
        ({"AGGREGATION": "mean"}, "AGGREGATION must be one of " + ", ".join(AGGREGATIONS)),
        ({"FEDAVG_LR": "0"}, "FEDAVG_LR=0.0: lr must be a positive"),
        ({"FEDAVG_LR": "nan"}, "FEDAVG_LR=nan: lr must be a positive"),
        ({"FEDAVG_LR": "inf"}, "FEDAVG_LR=inf: lr must be a positive"),
        ({"FEDAVG_BATCH_SIZE": "0"}, "FEDAVG_BATCH_SIZE=0: batch_size must be 1..65536"),
        ({"FEDAVG_OPTIMIZER": "adamw"}, "FEDAVG_OPTIMIZER='adamw' must be one of adam, sgd"),
        (
            {"FEDAVG_WIRE_DTYPE": "int8"},
            "FEDAVG_WIRE_DTYPE='int8' must be one of float32, bfloat16",
        ),
        ({"FEDAVG_MNIST_DOWNLOAD": "maybe"}, "is not a boolean"),
        ({"FEDAVG_HEARTBEAT": "0"}, "FEDAVG_HEARTBEAT"),
        ({"FEDAVG_HEARTBEAT": "nan"}, "FEDAVG_HEARTBEAT"),
        ({"FEDAVG_MAX_UPLOAD_MB": "0"}, "FEDAVG_MAX_UPLOAD_MB"),
        ({"FEDAVG_MAX_UPLOAD_MB": "1.5"}, "FEDAVG_MAX_UPLOAD_MB='1.5'"),
        ({"FEDAVG_LOG_FORMAT": "xml"}, "FEDAVG_LOG_FORMAT"),
        (
            {"FEDAVG_BEST_METRIC": "accuracy"},
            "FEDAVG_BEST_METRIC='accuracy' must be one of test_accuracy, test_loss",
        ),
        ({"FEDAVG_SEED": "x"}, "FEDAVG_SEED='x' is not a whole number"),
        ({"FEDAVG_PARTITION": "zipf:1"}, "FEDAVG_PARTITION: unknown kind 'zipf'"),
        ({"FEDAVG_PARTITION": "dirichlet:x"}, "FEDAVG_PARTITION: dirichlet's alpha"),
        ({"FEDAVG_PROXIMAL_MU": "-1"}, "FEDAVG_PROXIMAL_MU=-1.0: proximal_mu must be"),
        ({"MODEL_ARCH": "transformer"}, "MODEL_ARCH='transformer' must be one of mlp, cnn"),
        ({"FEDAVG_STRATEGY": "sgd"}, "FEDAVG_STRATEGY: unknown server optimizer 'sgd'"),
        ({"FEDAVG_STRATEGY": "fedadam", "FEDAVG_SERVER_LR": "-1"}, "FEDAVG_SERVER_LR: must be"),
        ({"FEDAVG_STRATEGY": "fedadam", "FEDAVG_SERVER_LR": "x"}, "FEDAVG_SERVER_LR='x'"),
        ({"FEDAVG_SERVER_MOMENTUM": "0.9"}, "FEDAVG_SERVER_MOMENTUM: none does not use it"),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(SettingsError, match=fragment):
        Settings.from_env({**ENV, **env})


@pytest.mark.parametrize("metric", ["test_accuracy", "test_loss"])
def test_the_best_metric_is_read_from_the_environment(metric: str) -> None:
    assert Settings.from_env({**ENV, "FEDAVG_BEST_METRIC": metric}).best_metric == metric


def test_a_best_metric_set_in_code_is_checked_too() -> None:
    with pytest.raises(SettingsError, match="FEDAVG_BEST_METRIC must be one of"):
        Settings(best_metric="f1").validate()


def test_bad_flags_are_refused() -> None:
    with pytest.raises(SettingsError, match="port 65536"):
        Settings.from_env(ENV, port=65536)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({**ENV, "FEDAVG_PORT": "99999", "AGGREGATION": "mean"})
    assert "port" in str(info.value)
    assert "AGGREGATION" in str(info.value)


def test_the_problems_come_in_one_fixed_order() -> None:
    env = {
        **ENV,
        "FEDAVG_MAX_EVENTS": "1",
        "FEDAVG_HEADER_TIMEOUT": "0",
        "FEDAVG_TLS_CERT": "/nonexistent/cert.pem",
        "FEDAVG_UPLOAD_SLOTS": "0",
        "FEDAVG_IDLE_TIMEOUT": "0",
        "SHARD_OVERLAP": "2",
    }
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    named = [problem.split()[0] for problem in str(info.value).split("; ")]
    assert named == [
        "SHARD_OVERLAP",
        "FEDAVG_IDLE_TIMEOUT",
        "FEDAVG_UPLOAD_SLOTS",
        "TLS",
        "FEDAVG_TLS_CERT/--tls-cert",
        "FEDAVG_HEADER_TIMEOUT",
        "FEDAVG_MAX_EVENTS",
    ]


def test_the_first_unreadable_value_is_the_one_named() -> None:
    env = {**ENV, "MODEL_HIDDEN_1": "wide", "FEDAVG_PORT": "high", "FEDAVG_MAX_EVENTS": "many"}
    with pytest.raises(SettingsError, match="'wide'"):
        Settings.from_env(env)
    with pytest.raises(SettingsError, match="'high'"):
        Settings.from_env({**env, "MODEL_HIDDEN_1": "64"})


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.4", "::", "fed.example"])
def test_a_public_host_needs_both_tokens_or_insecure(host: str) -> None:
    env = {**ENV, "FEDAVG_HOST": host}
    with pytest.raises(SettingsError, match="FEDAVG_ADMIN_TOKEN and FEDAVG_NODE_TOKEN"):
        Settings.from_env(env)
    with pytest.raises(SettingsError, match="--insecure"):
        Settings.from_env({**env, "FEDAVG_ADMIN_TOKEN": "adm"})
    with pytest.raises(SettingsError, match="not loopback"):
        Settings.from_env({**env, "FEDAVG_NODE_TOKEN": "join"})
    both = Settings.from_env({**env, "FEDAVG_ADMIN_TOKEN": "adm", "FEDAVG_NODE_TOKEN": "join"})
    assert not both.is_loopback
    assert Settings.from_env(env, insecure=True).insecure is True


def test_a_public_host_from_a_flag_is_checked_too() -> None:
    with pytest.raises(SettingsError, match=r"refusing to listen on 0\.0\.0\.0"):
        Settings.from_env(ENV, host="0.0.0.0")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.0.1", "::1", "localhost"])
def test_loopback_hosts_need_no_tokens(host: str) -> None:
    assert Settings.from_env({**ENV, "FEDAVG_HOST": host}).is_loopback


def test_wire_dtype_from_env_and_the_flag_wins() -> None:
    assert Settings.from_env(ENV).train_config.wire_dtype == "float32"
    from_env = Settings.from_env({**ENV, "FEDAVG_WIRE_DTYPE": "float16"})
    assert from_env.train_config.wire_dtype == "float16"
    flagged = Settings.from_env({**ENV, "FEDAVG_WIRE_DTYPE": "float16"}, wire_dtype="bfloat16")
    assert flagged.train_config.wire_dtype == "bfloat16"


def test_the_parameter_budget_defaults_to_20m_and_is_read_from_the_env() -> None:
    assert Settings.from_env(ENV).max_params == 20_000_000
    assert Settings.from_env({**ENV, "FEDAVG_MAX_PARAMS": "300000"}).max_params == 300_000


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"FEDAVG_MAX_PARAMS": "0"}, "FEDAVG_MAX_PARAMS must be 1..100000000"),
        ({"FEDAVG_MAX_PARAMS": "100000001"}, "FEDAVG_MAX_PARAMS must be 1..100000000"),
        ({"FEDAVG_MAX_PARAMS": "2e7"}, "FEDAVG_MAX_PARAMS='2e7' is not a whole number"),
        ({"FEDAVG_MAX_PARAMS": "200000"}, "242,762 parameters, over FEDAVG_MAX_PARAMS=200000"),
    ],
)
def test_a_bad_parameter_budget_is_refused_at_start_up(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(SettingsError, match=fragment):
        Settings.from_env({**ENV, **env})


def test_the_default_model_partition_and_fedprox_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {**ENV, "MODEL_ARCH": "cnn", "FEDAVG_PARTITION": "classes:2", "FEDAVG_PROXIMAL_MU": "0.1"}
    )
    assert settings.model_spec == ModelSpec(arch="cnn")
    assert str(settings.partition) == "classes:2"
    assert settings.train_config.proximal_mu == 0.1
    fedavgm = Settings.from_env(
        {**ENV, "FEDAVG_STRATEGY": "fedavgm", "FEDAVG_SERVER_MOMENTUM": "0.9"}
    )
    assert fedavgm.server_opt == {"strategy": "fedavgm", "server_lr": 1.0, "server_momentum": 0.9}


# Every variable the server reads as a number, a boolean or a choice.
NUMERIC_VARIABLES = (
    "FEDAVG_PORT", "EPOCH_SYNC_TIMEOUT", "DEFAULT_EPOCHS", "SHARD_OVERLAP", "FEDAVG_SEED",
    "MODEL_HIDDEN_1", "MODEL_HIDDEN_2", "MODEL_HIDDEN_3", "MODEL_DROPOUT_1", "MODEL_DROPOUT_2",
    "FEDAVG_LR", "FEDAVG_BATCH_SIZE", "FEDAVG_LOCAL_EPOCHS", "FEDAVG_PROXIMAL_MU",
    "FEDAVG_MAX_BATCHES", "FEDAVG_MAX_PARAMS", "FEDAVG_SERVER_LR", "FEDAVG_SERVER_MOMENTUM",
    "FEDAVG_HEARTBEAT", "FEDAVG_MAX_UPLOAD_MB", "FEDAVG_UPLOAD_SLOTS", "FEDAVG_IDLE_TIMEOUT",
    "FEDAVG_MIN_UPLOAD_KBPS", "FEDAVG_MAX_CAPACITY_RATIO", "FEDAVG_MAX_UPDATE_RATIO",
    "FEDAVG_MAX_MISSED_ROUNDS", "FEDAVG_HEADER_TIMEOUT", "FEDAVG_MAX_CONNECTIONS",
    "FEDAVG_MAX_PENDING_PER_PEER", "FEDAVG_NODE_FRAME_RATE", "FEDAVG_MAX_OFFLINE_NODES",
    "FEDAVG_MAX_NODE_IDS", "FEDAVG_MAX_EVENTS", "FEDAVG_IMPORT_MAX_MB",
    "FEDAVG_IMPORT_MAX_SAMPLES", "FEDAVG_MNIST_DOWNLOAD", "FEDAVG_OPTIMIZER",
    "FEDAVG_WIRE_DTYPE", "FEDAVG_LOG_FORMAT", "MODEL_ARCH", "FEDAVG_PARTITION",
    "FEDAVG_STRATEGY", "FEDAVG_BEST_METRIC",
)  # fmt: skip


@pytest.mark.parametrize("variable", NUMERIC_VARIABLES)
def test_an_unreadable_value_is_refused_naming_its_variable(variable: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({**ENV, variable: "abc"})
    message = str(info.value)
    assert variable in message
    assert "invalid literal" not in message and "could not convert" not in message


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("FEDAVG_LR", "-1"),
        ("FEDAVG_BATCH_SIZE", "0"),
        ("FEDAVG_LOCAL_EPOCHS", "0"),
        ("FEDAVG_MAX_BATCHES", "0"),
        ("FEDAVG_PROXIMAL_MU", "-1"),
        ("MODEL_HIDDEN_1", "0"),
        ("MODEL_DROPOUT_2", "1"),
        ("FEDAVG_MIN_UPLOAD_KBPS", "inf"),
        ("FEDAVG_MIN_UPLOAD_KBPS", "nan"),
    ],
)
def test_an_out_of_range_value_names_its_variable_and_no_other(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({**ENV, variable: value})
    named = set(re.findall(r"\b(?:FEDAVG|MODEL)_[A-Z0-9_]+", str(info.value)))
    assert named == {variable}, str(info.value)


def test_an_empty_value_counts_as_unset() -> None:
    empty = {name: "" for name in NUMERIC_VARIABLES}
    assert Settings.from_env({**ENV, **empty}) == Settings.from_env(ENV)

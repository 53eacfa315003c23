"""Node settings: defaults, environment values, flags over env, and clear start-up errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.local_datasets import DataSpec
from node.settings import NodeSettings, NodeSettingsError

ENV = {"HOME": "/home/fed", "NODE_NAME": "alpha", "NODE_ID": "alpha-1"}


def test_defaults(tmp_path: Path) -> None:
    settings = NodeSettings.from_env({"HOME": str(tmp_path)})
    assert settings.orchestrators == ("http://127.0.0.1:11999",)
    assert settings.name  # the host name
    assert settings.node_id.startswith(f"{settings.name}-")
    assert settings.device == "auto"
    assert settings.threads is None
    assert settings.validation_split == 0.1
    assert settings.cache_dir == tmp_path / ".local/share/fedavg/node-cache"
    assert settings.node_token is None
    assert settings.ca_cert is None
    assert settings.log_format == "auto"


def test_a_generated_node_id_is_only_a_candidate() -> None:
    # Settings read no files: the id a node keeps across starts is the one its identity file
    # names (node/identity.py); this fresh one is used only the first time.
    env = {"HOME": "/h", "NODE_NAME": "alpha"}
    first, second = NodeSettings.from_env(env), NodeSettings.from_env(env)
    assert first.node_id != second.node_id
    assert not first.explicit_node_id
    assert NodeSettings.from_env({**env, "NODE_ID": "alpha-1"}).explicit_node_id
    assert NodeSettings.from_env(env, node_id="alpha-2").explicit_node_id


def test_env_values() -> None:
    settings = NodeSettings.from_env(
        {
            **ENV,
            "ORCHESTRATOR_URL": "https://a.example:11999/, http://10.0.0.2:11999 ,,",
            "FEDAVG_DEVICE": "cuda:1",
            "FEDAVG_TORCH_THREADS": "3",
            "VALIDATION_SPLIT": "0.25",
            "FEDAVG_CACHE_DIR": "/var/cache/fed",
            "FEDAVG_NODE_TOKEN": "join-me",
            "FEDAVG_CA_CERT": "/etc/fed/ca.pem",
            "FEDAVG_LOG_FORMAT": "json",
        }
    )
    assert settings.orchestrators == ("https://a.example:11999", "http://10.0.0.2:11999")
    assert settings.name == "alpha"
    assert settings.node_id == "alpha-1"
    assert settings.device == "cuda:1"
    assert settings.threads == 3
    assert settings.validation_split == 0.25
    assert settings.cache_dir == Path("/var/cache/fed")
    assert settings.node_token == "join-me"
    assert settings.ca_cert == Path("/etc/fed/ca.pem")
    assert settings.log_format == "json"


def test_home_places_the_cache() -> None:
    assert NodeSettings.from_env({**ENV, "FEDAVG_HOME": "/srv/fed"}).cache_dir == Path(
        "/srv/fed/node-cache"
    )


def test_empty_env_values_count_as_unset() -> None:
    settings = NodeSettings.from_env(
        {**ENV, "FEDAVG_NODE_TOKEN": "", "FEDAVG_TORCH_THREADS": "", "FEDAVG_CA_CERT": ""}
    )
    assert settings.node_token is None
    assert settings.threads is None
    assert settings.ca_cert is None


def test_flags_override_env() -> None:
    env = {
        **ENV,
        "ORCHESTRATOR_URL": "http://env:1",
        "FEDAVG_DEVICE": "cuda",
        "FEDAVG_TORCH_THREADS": "8",
    }
    settings = NodeSettings.from_env(
        env,
        orchestrator="http://flag:2,http://flag:3",
        name="beta",
        node_id="beta-9",
        device="cpu",
        threads=2,
        exit_after_job=True,
        log_format="console",
        cache_dir=Path("/flag/cache"),
    )
    assert settings.orchestrators == ("http://flag:2", "http://flag:3")
    assert (settings.name, settings.node_id) == ("beta", "beta-9")
    assert settings.device == "cpu"
    assert settings.threads == 2
    assert settings.exit_after_job is True
    assert settings.log_format == "console"
    assert settings.cache_dir == Path("/flag/cache")


def test_unset_flags_leave_env_values() -> None:
    settings = NodeSettings.from_env(
        {**ENV, "FEDAVG_DEVICE": "cpu"}, orchestrator=None, device=None, threads=None
    )
    assert settings.device == "cpu"
    assert settings.orchestrators == ("http://127.0.0.1:11999",)


def test_flag_name_drives_the_generated_id() -> None:
    settings = NodeSettings.from_env({"HOME": "/h"}, name="gamma")
    assert settings.name == "gamma"
    assert settings.node_id.startswith("gamma-")


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"ORCHESTRATOR_URL": "ws://host:11999"}, "must start with http:// or https://"),
        ({"ORCHESTRATOR_URL": "host:11999"}, "must start with http:// or https://"),
        ({"ORCHESTRATOR_URL": " , "}, "no orchestrator URL"),
        ({"FEDAVG_DEVICE": "tpu"}, "device 'tpu' must be auto, cpu or cuda"),
        ({"FEDAVG_TORCH_THREADS": "0"}, "threads must be >= 1"),
        ({"FEDAVG_TORCH_THREADS": "-2"}, "threads must be >= 1"),
        ({"FEDAVG_TORCH_THREADS": "many"}, "FEDAVG_TORCH_THREADS='many' is not a whole"),
        ({"VALIDATION_SPLIT": "1"}, r"VALIDATION_SPLIT must be within \[0, 1\)"),
        ({"VALIDATION_SPLIT": "-0.1"}, "VALIDATION_SPLIT"),
        ({"VALIDATION_SPLIT": "nan"}, "VALIDATION_SPLIT"),
        ({"VALIDATION_SPLIT": "a tenth"}, "VALIDATION_SPLIT='a tenth' is not a number"),
        ({"NODE_NAME": "x" * 129}, "1..128 characters"),
        ({"NODE_ID": "x" * 129}, "1..128 characters"),
        ({"FEDAVG_LOG_FORMAT": "xml"}, "FEDAVG_LOG_FORMAT/--log-format must be auto, json"),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(NodeSettingsError, match=fragment):
        NodeSettings.from_env({**ENV, **env})


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(NodeSettingsError) as info:
        NodeSettings.from_env({**ENV, "FEDAVG_DEVICE": "tpu", "VALIDATION_SPLIT": "2"})
    assert "device" in str(info.value)
    assert "VALIDATION_SPLIT" in str(info.value)


def test_bad_flags_are_refused_too() -> None:
    with pytest.raises(NodeSettingsError, match="threads"):
        NodeSettings.from_env(ENV, threads=0)
    with pytest.raises(NodeSettingsError, match="https://"):
        NodeSettings.from_env(ENV, orchestrator="ftp://x")


@pytest.mark.parametrize(
    ("name", "variable"),
    [
        ("idle_timeout_s", "FEDAVG_IDLE_TIMEOUT"),
        ("max_backoff_s", "FEDAVG_RECONNECT_MAX"),
        ("progress_interval_s", "progress_interval_s"),
    ],
)
@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
def test_timeouts_must_be_positive_and_finite(name: str, variable: str, value: float) -> None:
    with pytest.raises(NodeSettingsError, match=variable):
        NodeSettings.from_env(ENV, **{name: value})
    assert getattr(NodeSettings.from_env(ENV, **{name: 2.5}), name) == 2.5


def test_the_heartbeat_and_a_pinned_capacity_come_from_the_environment() -> None:
    env = {"FEDAVG_HEARTBEAT": "2.5", "NODE_CAPACITY": "750"}
    settings = NodeSettings.from_env(env, name="n")
    assert (settings.heartbeat_s, settings.capacity) == (2.5, 750.0)
    assert NodeSettings.from_env({}, name="n").capacity is None  # measured at start-up
    for bad in ({"FEDAVG_HEARTBEAT": "0"}, {"NODE_CAPACITY": "-1"}, {"NODE_CAPACITY": "nan"}):
        with pytest.raises(NodeSettingsError):
            NodeSettings.from_env(bad, name="n")


# Every variable the node reads as a number.
NUMERIC_VARIABLES = (
    "FEDAVG_TORCH_THREADS", "NODE_CAPACITY", "VALIDATION_SPLIT", "FEDAVG_IDLE_TIMEOUT",
    "FEDAVG_RECONNECT_MAX", "FEDAVG_HEARTBEAT", "NODE_VIRTUAL", "NODE_VIRTUAL_WORKERS",
)  # fmt: skip


@pytest.mark.parametrize("variable", NUMERIC_VARIABLES)
@pytest.mark.parametrize("value", ["x", "abc", "1,5"])
def test_an_unreadable_value_is_refused_naming_its_variable(variable: str, value: str) -> None:
    with pytest.raises(NodeSettingsError) as info:
        NodeSettings.from_env({**ENV, variable: value})
    assert f"{variable}={value!r}" in str(info.value)
    assert "invalid literal" not in str(info.value)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"FEDAVG_TORCH_THREADS": "0"}, "FEDAVG_TORCH_THREADS"),
        ({"NODE_CAPACITY": "0"}, "NODE_CAPACITY"),
        ({"VALIDATION_SPLIT": "1.5"}, "VALIDATION_SPLIT"),
        ({"FEDAVG_IDLE_TIMEOUT": "0"}, "FEDAVG_IDLE_TIMEOUT"),
        ({"FEDAVG_RECONNECT_MAX": "-1"}, "FEDAVG_RECONNECT_MAX"),
        ({"FEDAVG_HEARTBEAT": "inf"}, "FEDAVG_HEARTBEAT"),
        ({"FEDAVG_DEVICE": "tpu"}, "FEDAVG_DEVICE"),
        ({"ORCHESTRATOR_URL": "ws://x"}, "ORCHESTRATOR_URL"),
    ],
)
def test_an_out_of_range_value_names_its_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(NodeSettingsError, match=named):
        NodeSettings.from_env({**ENV, **env})


def test_the_idle_timeout_comes_from_the_environment() -> None:
    assert NodeSettings.from_env({**ENV, "FEDAVG_IDLE_TIMEOUT": "5"}).idle_timeout_s == 5.0


def test_own_data_comes_from_node_data_or_the_flags_which_replace_it() -> None:
    env = {"NODE_DATA": "pets=/srv/pets; digits=/srv/d,1.npz", "NODE_TEST_SPLIT": "0.25"}
    settings = NodeSettings.from_env(env, name="n")
    assert settings.data == (
        DataSpec("pets", Path("/srv/pets")),
        DataSpec("digits", Path("/srv/d,1.npz")),  # ";" separates: a path may hold commas
    )
    assert settings.test_split == 0.25 and settings.share_label_counts is False
    flagged = settings.with_data_flags(["cars=/srv/cars"])
    assert flagged.data == (DataSpec("cars", Path("/srv/cars")),)
    assert settings.with_data_flags(None) is settings
    shared = NodeSettings.from_env({"NODE_SHARE_LABEL_COUNTS": "true"}, name="n")
    assert shared.share_label_counts is True and shared.data == ()


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"NODE_DATA": "pets"}, "NODE_DATA: 'pets' is not NAME=PATH"),
        ({"NODE_DATA": "a=/x;a=/y"}, "NODE_DATA: dataset 'a' is given twice"),
        ({"NODE_TEST_SPLIT": "1"}, r"NODE_TEST_SPLIT/--test-split must be within \(0, 1\)"),
        ({"NODE_TEST_SPLIT": "most"}, "NODE_TEST_SPLIT"),
        ({"NODE_SHARE_LABEL_COUNTS": "perhaps"}, "NODE_SHARE_LABEL_COUNTS"),
    ],
)
def test_bad_own_data_settings_name_their_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(NodeSettingsError, match=fragment):
        NodeSettings.from_env(env, name="n")
    with pytest.raises(NodeSettingsError, match="--data: 'x' is not NAME=PATH"):
        NodeSettings.from_env({}, name="n").with_data_flags(["x"])


def test_virtual_nodes_default_to_one_and_come_from_env_or_flags() -> None:
    assert (NodeSettings.from_env(ENV).virtual, NodeSettings.from_env(ENV).virtual_workers) == (
        1,
        1,
    )
    settings = NodeSettings.from_env({**ENV, "NODE_VIRTUAL": "50", "NODE_VIRTUAL_WORKERS": "4"})
    assert (settings.virtual, settings.virtual_workers) == (50, 4)
    flagged = NodeSettings.from_env(
        {**ENV, "NODE_VIRTUAL": "50"}, virtual=1000, virtual_workers=1000
    )
    assert (flagged.virtual, flagged.virtual_workers) == (1000, 1000)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"NODE_VIRTUAL": "0"}, "NODE_VIRTUAL/--virtual must be 1..1000, got 0"),
        ({"NODE_VIRTUAL": "1001"}, "NODE_VIRTUAL/--virtual must be 1..1000, got 1001"),
        ({"NODE_VIRTUAL_WORKERS": "0"}, r"NODE_VIRTUAL_WORKERS/--virtual-workers must be 1..NODE"),
        (
            {"NODE_VIRTUAL": "4", "NODE_VIRTUAL_WORKERS": "5"},
            r"--virtual-workers must be 1..NODE_VIRTUAL \(4\), got 5",
        ),
    ],
)
def test_virtual_limits_name_their_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(NodeSettingsError, match=fragment):
        NodeSettings.from_env({**ENV, **env})


def test_virtual_nodes_hold_no_own_data(tmp_path: Path) -> None:
    # N nodes announcing one dataset would count its samples N times.
    settings = NodeSettings.from_env({**ENV, "NODE_VIRTUAL": "2"})
    with pytest.raises(NodeSettingsError, match="NODE_DATA/--data cannot be used with"):
        settings.with_data_flags([f"digits={tmp_path}"])
    with pytest.raises(NodeSettingsError, match="NODE_DATA/--data cannot be used with"):
        NodeSettings.from_env({**ENV, "NODE_VIRTUAL": "2", "NODE_DATA": f"digits={tmp_path}"})


def test_an_api_key_alone_turns_wandb_on_for_one_node_but_not_for_virtual_ones() -> None:
    keyed = {**ENV, "WANDB_API_KEY": "k" * 40}
    assert NodeSettings.from_env(keyed).wandb_mode == "online"
    assert NodeSettings.from_env({**keyed, "NODE_VIRTUAL": "3"}).wandb_mode is None
    assert NodeSettings.from_env(keyed, virtual=3).wandb_mode is None
    asked = {**keyed, "NODE_VIRTUAL": "3", "WANDB_MODE": "offline"}
    assert NodeSettings.from_env(asked).wandb_mode == "offline"

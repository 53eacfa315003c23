"""The example env files in deploy/env document every setting, and only real ones.

"Every setting" is the command-line contract of each program (below), plus any variable
the program's own source reads (found by a pattern), so a new setting added to
server/settings.py without a line in server.env fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from deploy_support import ENV_SRC, REPO, UNIT_SRC, env_file_names, environment, read_unit

WANDB = {"WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT"}
CONTRACT = {
    "server.env": {
        "FEDAVG_HOST",
        "FEDAVG_PORT",
        "FEDAVG_HOME",
        "FEDAVG_DATASETS_DIR",
        "FEDAVG_MODELS_DIR",
        "EPOCH_SYNC_TIMEOUT",
        "DEFAULT_EPOCHS",
        "SHARD_OVERLAP",
        "AGGREGATION",
        "MODEL_HIDDEN_1",
        "MODEL_HIDDEN_2",
        "MODEL_HIDDEN_3",
        "MODEL_DROPOUT_1",
        "MODEL_DROPOUT_2",
        "FEDAVG_ADMIN_TOKEN",
        "FEDAVG_NODE_TOKEN",
        "FEDAVG_TLS_CERT",
        "FEDAVG_TLS_KEY",
        "FEDAVG_MNIST_DOWNLOAD",
        "FEDAVG_LOG_FORMAT",
        *WANDB,
    },
    "node.env": {
        "ORCHESTRATOR_URL",
        "NODE_NAME",
        "NODE_ID",
        "FEDAVG_DEVICE",
        "FEDAVG_TORCH_THREADS",
        "NODE_CAPACITY",
        "FEDAVG_HEARTBEAT",
        "VALIDATION_SPLIT",
        "FEDAVG_NODE_TOKEN",
        "FEDAVG_CA_CERT",
        "FEDAVG_CACHE_DIR",
        "FEDAVG_HOME",
        "FEDAVG_LOG_FORMAT",
        *WANDB,
    },
    "showcase.env": {
        "SHOWCASE_HOST",
        "SHOWCASE_PORT",
        "SHOWCASE_ALLOW_ORIGIN",
        "FEDAVG_MODELS_DIR",
        "ORCHESTRATOR_URL",
        "FEDAVG_HOME",
        "FEDAVG_LOG_FORMAT",
    },
}
UNIT_OF = {
    "server.env": "fedavg-server.service",
    "node.env": "fedavg-node@.service",
    "showcase.env": "fedavg-showcase.service",
}
PACKAGE_OF = {"server.env": "server", "node.env": "node", "showcase.env": "showcase"}
# Not the service's settings: the `fedavg` command (a client, run from any machine).
CLIENTS = ("server/console",)
# Read by the programs but not theirs to document: the platform's own variables.
NOT_SETTINGS = {"HOME", "PATH", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "TERM"}
# Variables the units set for the process, not settings a user changes.
UNIT_ONLY = {"PYTHONUNBUFFERED", "HOME"}
# env.get("NAME" / environ["NAME" / getenv("NAME" / env_values.whole(env, "NAME" (the
# readers of node/shared/env_values.py) / f"MODEL_HIDDEN_{i + 1}" style.
READ_PATTERN = re.compile(
    r"""(?:(?:env|environ)(?:\.get)?[\[(]|env_values\.[a-z_]+\(\s*env,)"""
    r"""\s*f?["'](?P<name>[A-Z][A-Z0-9_]*)(?P<index>\{[^}]*\})?["']"""
    r"""|getenv\(\s*["'](?P<getenv>[A-Z][A-Z0-9_]*)["']"""
)


def read_by_source(package: str) -> set[str]:
    """Environment variables a package's modules read (MODEL_HIDDEN_{i} -> _1, _2, ...)."""
    names: set[str] = set()
    for module in (REPO / package).glob("**/*.py"):
        if str(module.relative_to(REPO)).startswith(CLIENTS):
            continue
        for match in READ_PATTERN.finditer(module.read_text()):
            name = match["name"] or match["getenv"]
            if match["index"]:  # an f-string index: the documented names carry the digits
                continue
            names.add(name)
    return names - NOT_SETTINGS


@pytest.mark.parametrize("env_file", sorted(CONTRACT))
def test_every_contract_setting_is_documented(env_file: str) -> None:
    documented = env_file_names(ENV_SRC / env_file)
    missing = CONTRACT[env_file] - documented.keys()
    assert not missing, f"{env_file} does not document {sorted(missing)}"


@pytest.mark.parametrize("env_file", sorted(CONTRACT))
def test_every_setting_the_program_reads_is_documented(env_file: str) -> None:
    documented = env_file_names(ENV_SRC / env_file)
    missing = read_by_source(PACKAGE_OF[env_file]) - documented.keys()
    assert not missing, f"{PACKAGE_OF[env_file]}/ reads {sorted(missing)}: add them to {env_file}"


@pytest.mark.parametrize("env_file", sorted(CONTRACT))
def test_every_setting_in_the_unit_is_documented(env_file: str) -> None:
    documented = env_file_names(ENV_SRC / env_file)
    unit_env = environment(read_unit(UNIT_SRC / UNIT_OF[env_file]))
    missing = unit_env.keys() - UNIT_ONLY - documented.keys()
    assert not missing, f"{UNIT_OF[env_file]} sets {sorted(missing)}; {env_file} does not explain"


@pytest.mark.parametrize("env_file", sorted(CONTRACT))
def test_examples_change_nothing_until_uncommented(env_file: str) -> None:
    """Installed as-is, an example file must not override the unit's defaults."""
    for line in (ENV_SRC / env_file).read_text().splitlines():
        assert not line.strip() or line.startswith("#"), f"{env_file}: active line {line!r}"


@pytest.mark.parametrize("env_file", sorted(CONTRACT))
def test_every_documented_setting_has_an_explanation(env_file: str) -> None:
    """Each `#NAME=` line sits in a block of comment prose, not alone."""
    lines = (ENV_SRC / env_file).read_text().splitlines()
    for i, line in enumerate(lines):
        if re.fullmatch(r"#[A-Z][A-Z0-9_]*=.*", line):
            block_start = i
            while block_start > 0 and lines[block_start - 1].startswith("#"):
                block_start -= 1
            prose = [x for x in lines[block_start:i] if not re.fullmatch(r"#[A-Z][A-Z0-9_]*=.*", x)]
            assert prose, f"{env_file}: {line!r} has no explanation above it"


def test_the_source_scan_finds_settings() -> None:
    """The scan's own check, on a literal: it must see env.get, environ[...], getenv and the
    env_values readers."""
    sample = (
        'env.get("FEDAVG_A", "1"); os.environ["FEDAVG_B"]; os.getenv("FEDAVG_C"); '
        'env_values.whole(env, "FEDAVG_D", 1); env_values.optional_path(\n    env, "FEDAVG_E")'
    )
    found = {m["name"] or m["getenv"] for m in READ_PATTERN.finditer(sample)}
    assert found == {"FEDAVG_A", "FEDAVG_B", "FEDAVG_C", "FEDAVG_D", "FEDAVG_E"}


def test_unit_defaults_agree_with_the_documented_ones() -> None:
    """Where a unit sets a default, the env file shows that same value."""
    for env_file, unit in UNIT_OF.items():
        documented = env_file_names(ENV_SRC / env_file)
        for name, value in environment(read_unit(UNIT_SRC / unit)).items():
            if name in UNIT_ONLY or "%" in value:
                continue
            assert documented[name] == value, (env_file, name)


def test_env_files_are_the_ones_the_units_read() -> None:
    shipped = {p.name for p in Path(ENV_SRC).glob("*.env")}
    assert shipped == set(CONTRACT)

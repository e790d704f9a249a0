"""Secrets for a flow run: a Prefect Secret block's environment variables, set in this process only.

Why environment variables: the S3 client (``AWS_*``), ``${NAME}`` references in ``storage.storage_options``
and ``teacher.server.api_key_env`` all read the environment when they connect, so one channel serves every
secret, and nothing secret ever enters the config, which heal copies into ``config.yaml``, flow parameters
and logs. A worker either has the variables already (its own environment, a Kubernetes Secret) or fetches
them from the Secret block named by ``orchestration.secrets_block`` at the start of every flow run.
"""

from __future__ import annotations

import os

from prefect import get_run_logger
from prefect.blocks.system import Secret

from heal_core.config import HealConfig


class SecretsError(ValueError):
    """The configured Secret block is missing or does not hold environment variables."""


def export_secrets(cfg: HealConfig) -> list[str]:
    """Set the Secret block's variables in this process; returns (and logs) their names, never their values."""
    name = cfg.orchestration.secrets_block
    if not name:
        return []
    try:
        value = Secret.load(name).get()
    except ValueError as exc:
        raise SecretsError(f"orchestration.secrets_block: cannot load Prefect Secret block {name!r}: {exc}") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise SecretsError(
            f"orchestration.secrets_block: Secret block {name!r} must hold a JSON object of "
            "environment variable names to string values"
        )
    os.environ.update(value)
    get_run_logger().info("environment from Secret block %r: %s", name, ", ".join(sorted(value)))
    return sorted(value)

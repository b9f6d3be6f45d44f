"""The rendered command line is one the herald binary accepts.

For every value set, the Deployment's container args go through
`herald <args> --check-config`, which parses and validates every flag and
exits without serving; a flag renamed or removed in src/config.rs makes it
exit non-zero and fails here. `make chart-test` builds the binary first;
HERALD_BIN points elsewhere (relative paths are from the repository root).
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest

import chartlib
from chartlib import VALUE_SETS, only, render

HERALD_BIN = chartlib.REPO_ROOT / os.environ.get("HERALD_BIN", "target/debug/herald")

# What the Downward API would put in each fieldRef of the container env.
DOWNWARD_API = {"status.podIP": "10.0.0.7", "metadata.namespace": chartlib.NAMESPACE}

# What the user's Secrets would put in each secretKeyRef of the container env,
# by variable.
SECRET_ENV = {"HERALD_REDIS_URL": "redis://redis.herald.svc.cluster.local:6379/0"}

needs_binary = pytest.mark.skipif(
    not HERALD_BIN.is_file(),
    reason=f"no herald binary at {HERALD_BIN}; run `cargo build --bin herald` or set HERALD_BIN",
)


def container_env(c: dict[str, Any]) -> dict[str, str]:
    """The process environment the container would get, with Downward API
    fields and Secret values filled in and none of the caller's HERALD_*
    settings leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HERALD_", "POD_", "RUST_LOG"))}
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "secretKeyRef" in var["valueFrom"]:
            env[var["name"]] = SECRET_ENV[var["name"]]
        else:
            env[var["name"]] = DOWNWARD_API[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def check_config(values: dict[str, Any], *extra: str) -> subprocess.CompletedProcess[str]:
    """Run the rendered args (plus `extra`) with --check-config."""
    c = only(render(values), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return subprocess.run(
        [str(HERALD_BIN), *c["args"], *extra, "--check-config"],
        env=container_env(c),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@needs_binary
@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_the_binary_accepts_the_rendered_command_line(name: str) -> None:
    result = check_config(VALUE_SETS[name])
    assert result.returncode == 0, (
        f"herald rejected the args rendered for value set {name!r} "
        f"(exit {result.returncode}):\n{result.stderr}{result.stdout}"
    )


@needs_binary
def test_the_binary_rejects_an_unknown_flag() -> None:
    # Proves the check above can fail: the same command line plus a flag
    # that does not exist must not pass.
    result = check_config({}, "--no-such-flag")
    assert result.returncode != 0, f"herald accepted --no-such-flag:\n{result.stdout}"
    # NB: clap names only the first bad flag, so when the rendered args are
    # already broken stderr names that one; the checks above report it.
    assert "error" in result.stderr, result.stderr


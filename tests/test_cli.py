"""Every command, given a user's mistake, answers with an exit code and one line on
stderr: no traceback, no timestamped log line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app import __version__

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> tuple[int, str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TRIGGERFISH_", "KUBE"))}
    proc = subprocess.run(
        [sys.executable, "-m", "app.compose.cli", *args],
        env={**base, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_bare_command_lists_the_commands() -> None:
    code, out, err = cli()
    assert code == 2 and err == ""
    for command in ("run", "validate", "test", "crds", "controller", "eventsource", "sensor"):
        assert any(line.split()[:1] == [command] for line in out.splitlines()), command


def test_version_flag() -> None:
    assert cli("--version") == (0, f"triggerfish {__version__}\n", "")


def test_every_option_has_help() -> None:
    for command in ("run", "validate", "test", "crds", "controller", "eventsource", "sensor"):
        code, out, _err = cli(command, "--help")
        assert code == 0
        options = [line for line in out.splitlines() if line.strip().startswith("-")]
        assert options, command
        for line in options:
            flag = line.split()[0].rstrip(",")
            assert len(line.split()) > 1 or flag in ("-h",), (command, line)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"TRIGGERFISH_BUS__PUBLISH_TIMEOUT_SECONDS": "abc"},
            "triggerfish: error: bad setting: TRIGGERFISH_BUS__PUBLISH_TIMEOUT_SECONDS='abc': "
            "Input should be a valid number",
        ),
        (
            {"TRIGGERFISH_LOG_FORMAT": "jsn"},
            "triggerfish: error: bad setting: TRIGGERFISH_LOG_FORMAT='jsn': "
            "Input should be 'text' or 'json'",
        ),
        (
            {"TRIGGERFISH_LOG_LEVEL": "loud"},
            "triggerfish: error: bad setting: TRIGGERFISH_LOG_LEVEL='loud': expected DEBUG",
        ),
        (
            {"TRIGGERFISH_API_PORT": "http"},
            "triggerfish: error: bad setting: TRIGGERFISH_API_PORT='http': "
            "Input should be a valid integer",
        ),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], expected: str) -> None:
    code, _out, err = cli("validate", "-f", "examples", env=env)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(expected), err


def _one_line(err: str) -> str:
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    assert err.startswith("triggerfish: error: "), err
    return err


def test_user_mistakes_give_one_line(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    sensor = REPO / "examples" / "ml-pipeline" / "sensor.yaml"
    cases: list[tuple[tuple[str, ...], int, str]] = [
        (("crds", "--output-dir", str(a_file / "x")), 2, "Not a directory"),
        (("test", str(sensor), "--event", str(tmp_path / "none.json")), 2, "cannot read event"),
        (("run", "-f", str(tmp_path / "none")), 2, "invalid manifests"),
        (("run", "-f", str(sensor), "--port-map", "a=b"), 2, "--port-map wants FROM=TO"),
        (("controller",), 2, "cannot load Kubernetes configuration"),
    ]
    env = {"HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "none")}
    for args, want_code, want in cases:
        code, _out, err = cli(*args, env=env, cwd=tmp_path)
        assert code == want_code, (args, err)
        if args[0] == "run" and want == "invalid manifests":
            assert "Traceback" not in err and err.startswith("triggerfish: error: " + want), err
        else:
            assert want in _one_line(err), (args, err)


def test_unknown_command_and_missing_argument_are_usage_errors() -> None:
    for args in (("frobnicate",), ("validate",), ("test",)):
        code, _out, err = cli(*args)
        assert code == 2, args
        assert "Traceback" not in err and "usage: triggerfish" in err

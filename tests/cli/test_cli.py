"""The `dapo` command as a user meets it: help with examples, version, gen-data, errors."""

import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from dapo_cli import __version__
from dapo_cli.cli.app import app

runner = CliRunner()


def all_commands():
    """Every (path, command) in the CLI tree, groups included."""
    root = typer.main.get_command(app)
    out = []

    def walk(cmd, path):
        out.append((path, cmd))
        if hasattr(cmd, "commands"):  # a group (typer may vendor its own click)
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])

    walk(root, [])
    return out


@pytest.mark.parametrize(
    "path", [p for p, _ in all_commands()], ids=lambda p: " ".join(p) or "dapo"
)
def test_every_command_has_help_with_an_example(path):
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example: dapo" in result.output
    cmd = dict((tuple(p), c) for p, c in all_commands())[tuple(path)]
    assert cmd.help, f"{path} has no help text"


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"dapo {__version__}"


def test_python_dash_m_is_the_same_command():
    out = subprocess.run(
        [sys.executable, "-m", "dapo_cli", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"dapo {__version__}"


@pytest.mark.parametrize("ext", [".jsonl", ".csv", ".parquet"])
def test_gen_data_is_byte_identical_for_a_seed(tmp_path, ext):
    args = ["gen-data", "--num-samples", "40", "--task-types", "math", "--seed", "5"]
    a, b, c = tmp_path / f"a{ext}", tmp_path / f"b{ext}", tmp_path / f"c{ext}"
    for path, seed in ((a, "5"), (b, "5"), (c, "6")):
        result = runner.invoke(app, [*args[:-1], seed, "--output", str(path)])
        assert result.exit_code == 0, result.output
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert "40 samples written" in result.output


def test_gen_data_creates_missing_folder(tmp_path):
    out = tmp_path / "deep" / "er" / "d.jsonl"
    result = runner.invoke(
        app, ["gen-data", "--num-samples", "5", "--task-types", "math", "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num-samples", "0"], "--num-samples must be at least 1"),
        (["--task-types", "math,poetry"], "unknown task type(s) poetry"),
        (["--difficulty", "insane"], "unknown difficulty 'insane'"),
        (["--output", "x.txt"], "unsupported file type '.txt'"),
        (["--test-fraction", "1.5"], "--test-fraction must be in [0, 1)"),
    ],
)
def test_gen_data_bad_flags_give_one_line(tmp_path, args, message):
    base = ["gen-data", "--num-samples", "10", "--task-types", "math"]
    result = runner.invoke(app, [*base, "--output", str(tmp_path / "d.jsonl"), *args])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "d.jsonl").exists()


def test_debug_shows_the_traceback():
    result = runner.invoke(app, ["--debug", "gen-data", "--num-samples", "0"])
    assert result.exit_code != 0
    assert result.exception is not None and "num-samples" in str(result.exception)

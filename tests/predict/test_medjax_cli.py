"""The ``medjax`` console command: subcommands, packaged config names, --help."""

import os
import subprocess
import sys
import tomllib

from medjax import cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_pyproject_declares_the_console_command_and_ships_configs():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    assert project["project"]["scripts"]["medjax"] == "medjax.cli:main"
    assert "configs" in project["tool"]["setuptools"]["packages"]["find"]["include"]


def test_subcommands_and_packaged_config_names_become_launch_flags(tmp_path):
    argv = cli.prepare_argv(["medjax", "train", "--config=unet3d:tiny", "--config.seed=1"])
    assert argv[1] == "--mode=train"
    assert argv[2] == f"--config={os.path.join(REPO, 'configs', 'unet3d.py')}:tiny"
    assert argv[3] == "--config.seed=1"
    # A path is left alone; predict without --config gets the run's own config.
    assert cli.prepare_argv(["x", "--config=configs/unet.py"])[1] == "--config=configs/unet.py"
    argv = cli.prepare_argv(["medjax", "predict", f"--workdir={tmp_path}"])
    assert argv[1].startswith("--config=") and argv[1].endswith(f"run_config.py:{tmp_path}")


def test_help_exits_zero_and_lists_the_subcommands():
    r = subprocess.run(
        [sys.executable, "-m", "medjax.cli", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "medjax predict --workdir" in r.stdout and "--mode" in r.stdout

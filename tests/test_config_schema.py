"""Every key of every experiment config can be set from the command line."""

import glob
import importlib
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    os.path.basename(p)[:-3]
    for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
    if not p.endswith(("common.py", "__init__.py"))
)


def _none_typed_keys(cfg, prefix=""):
    for key in cfg.keys():
        value = cfg[key]
        if hasattr(value, "keys"):
            yield from _none_typed_keys(value, f"{prefix}{key}.")
        elif value is None and cfg.get_type(key) is type(None):
            yield prefix + key


@pytest.mark.parametrize("name", CONFIGS)
def test_no_key_is_a_plain_none(name):
    # ml_collections refuses to override a field whose type is NoneType: such keys must be
    # typed placeholders (config_dict.placeholder(tuple/str/...)).
    cfg = importlib.import_module(f"configs.{name}").get_config()
    assert list(_none_typed_keys(cfg)) == []


def test_placeholder_keys_take_command_line_values():
    code = (
        "import sys; from absl import flags; from ml_collections import config_flags;"
        "config_flags.DEFINE_config_file('config', lock_config=True);"
        "flags.FLAGS(sys.argv);"
        "c = flags.FLAGS.config.data.preprocess;"
        "print(c.reorient, tuple(c.target_size))"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "--config=configs/luna.py",
            "--config.data.preprocess.reorient=RAS",
            "--config.data.preprocess.target_size=(8, 16, 16)",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["RAS", "(8,", "16,", "16)"]

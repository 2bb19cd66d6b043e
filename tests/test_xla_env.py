"""medjax's XLA defaults: which flags, when they are added, and that XLA obeys them."""

import json
import os
import subprocess
import sys

import pytest

from medjax import xla_env

FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


def test_defaults_added_for_measured_jaxlib():
    assert xla_env.xla_defaults({}, (0, 10)) == [FLAG]
    assert xla_env.xla_defaults({"XLA_FLAGS": "--foo=1"}, (0, 11)) == [FLAG]


def test_nothing_for_unchecked_jaxlib():
    # An XLA that does not know a flag aborts at backend start: never guess.
    assert xla_env.xla_defaults({}, (0, 9)) == []
    assert xla_env.xla_defaults({}, (0, 12)) == []
    assert xla_env.xla_defaults({}, (1, 0)) == []
    assert xla_env.xla_defaults({}, None) == []


def test_user_setting_wins_and_opt_out():
    mine = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="}
    assert xla_env.xla_defaults(mine, (0, 10)) == []
    assert xla_env.xla_defaults({"MEDJAX_XLA_DEFAULTS": "0"}, (0, 10)) == []
    assert xla_env.xla_defaults({"MEDJAX_XLA_DEFAULTS": "1"}, (0, 10)) == [FLAG]
    assert xla_env.xla_defaults({"MEDJAX_XLA_DEFAULTS": "off"}, (0, 10)) == []


def test_unknown_opt_out_value_warns_naming_the_variable():
    with pytest.warns(UserWarning, match="MEDJAX_XLA_DEFAULTS='maybe' is not one of"):
        assert xla_env.xla_defaults({"MEDJAX_XLA_DEFAULTS": "maybe"}, (0, 10)) == [FLAG]


def test_apply_appends_and_keeps_existing_flags(monkeypatch):
    monkeypatch.setattr(xla_env, "_jaxlib_version", lambda: (0, 10))
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert xla_env.apply_xla_defaults(env) == [FLAG]
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {FLAG}"
    assert xla_env.apply_xla_defaults(env) == []  # idempotent: the flag is there now
    assert env["XLA_FLAGS"].count("ynn") == 1


# A two-layer conv net whose gradient XLA (jaxlib 0.10) gives YNNPACK convolutions by default.
_PROBE = """
import json, os, sys
{prelude}
import medjax  # applies the defaults (or warns)
import flax.linen as nn
import jax
import jax.numpy as jnp
from medjax.models import layers

class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        return layers.conv(32, 3, 2, impl="xla")(nn.relu(layers.conv(32, 3, 2, impl="xla")(x)))

net, x = Net(), jnp.ones((2, 8, 8, 16))
params = net.init(jax.random.key(0), x)
grad = jax.jit(jax.grad(lambda p: jnp.sum(net.apply(p, x) ** 2)))
hlo = grad.lower(params).compile().as_text().splitlines()
print(json.dumps({{
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "ynn_convs": sum("__ynn_fusion" in l and "conv_general_dilated" in l for l in hlo),
}}))
"""


def _probe(env: dict[str, str], prelude: str = "") -> tuple[dict, str]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", **env}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(prelude=prelude)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def _skip_unless_flagged() -> None:
    if not xla_env.xla_defaults({}, xla_env._jaxlib_version()):
        pytest.skip("medjax adds no XLA flag for this jaxlib")


def test_xla_uses_its_own_convolutions_after_import_medjax():
    _skip_unless_flagged()
    off, _ = _probe({"MEDJAX_XLA_DEFAULTS": "0"})
    if off["ynn_convs"] == 0:
        pytest.skip("this jaxlib does not give these convolutions to YNNPACK anyway")
    on, _ = _probe({"MEDJAX_XLA_DEFAULTS": "1"})
    assert off["xla_flags"] == ""
    assert on["xla_flags"] == FLAG
    assert on["ynn_convs"] == 0


def test_warns_when_jax_started_first():
    _skip_unless_flagged()
    started = "import jax, jax.numpy as jnp; jnp.ones(2).block_until_ready()"
    result, stderr = _probe({"MEDJAX_XLA_DEFAULTS": "1"}, prelude=started)
    assert result["xla_flags"] == ""  # left alone: it could not take effect any more
    assert "medjax was imported after JAX started its backends" in stderr

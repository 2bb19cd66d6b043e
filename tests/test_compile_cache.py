"""medjax's commands keep compiled programs in JAX's persistent cache under the medjax cache."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = (
    "import json, jax; from medjax import compile_cache; "
    "path = compile_cache.enable(); f = jax.jit(lambda x: (x @ x.T).sum()); "
    "c = f.lower(jax.numpy.ones((64, 64))).compile(); "
    "print(json.dumps([path, jax.config.jax_compilation_cache_dir]))"
)


def _probe(tmp_path, **env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    clean.update(MEDJAX_CACHE=str(tmp_path / "cache"), JAX_PLATFORMS="cpu", **env)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, env=clean, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cache_goes_under_the_medjax_cache_unless_the_user_chose(tmp_path):
    want = str(tmp_path / "cache" / "jax")
    assert _probe(tmp_path) == [want, want]
    # JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0: even this small program is stored.
    _probe(tmp_path, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    assert any(name.endswith("-cache") for name in os.listdir(want))
    theirs = str(tmp_path / "theirs")
    assert _probe(tmp_path, JAX_COMPILATION_CACHE_DIR=theirs) == [theirs, theirs]
    assert _probe(tmp_path, MEDJAX_COMPILATION_CACHE="0") == [None, None]

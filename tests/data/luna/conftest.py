"""Shared fixtures: one small synthetic LUNA folder and its cutout store per test session."""

import pytest

from medjax.data.luna import cutouts, synthetic

# Small enough to build in about a second, big enough to hold nodules, vessels and edges.
SMALL = dict(num_scans=4, num_subsets=2, seed=3, shape=(24, 64, 64), negatives_per_scan=12)
STORE_SIZE = (8, 16, 16)


@pytest.fixture(scope="session")
def luna_args():
    """The arguments the session's dataset was made with (tests import no conftest names)."""
    return dict(SMALL)


@pytest.fixture(scope="session")
def luna_root(tmp_path_factory):
    return synthetic.make_luna_dataset(tmp_path_factory.mktemp("luna") / "data", **SMALL)


@pytest.fixture(scope="session")
def luna_store(luna_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("luna_store") / "store"
    cutouts.build_cutout_store(luna_root, out, size=STORE_SIZE, workers=0, progress=False)
    return out

"""The sweep's search space: each distribution, its Ray domain, and every bad spec."""

import math

import numpy as np
import pytest
from scipy import stats

from configs import unet
from medjax import errors
from medjax.train import tune_space


def _config(*params):
    c = unet.get_config("tiny")
    c.tune.params = tuple(params)
    c.lock()
    return c


def test_each_distribution_parses_and_applies():
    c = _config(
        "optim.lr=loguniform(1e-4, 1e-2)",
        " train.batch_size = choice(8, 16) ",
        "optim.weight_decay=uniform(0, 0.1)",
        "optim.name=grid('adam', 'sgd')",
        "data.patch_size=choice((32, 32), (16, 16))",
    )
    params = tune_space.parse_space(c)
    assert [(p.key, p.dist, p.args) for p in params] == [
        ("optim.lr", "loguniform", (1e-4, 1e-2)),
        ("train.batch_size", "choice", (8, 16)),
        ("optim.weight_decay", "uniform", (0.0, 0.1)),
        ("optim.name", "grid", ("adam", "sgd")),
        ("data.patch_size", "choice", ((32, 32), (16, 16))),
    ]
    out = tune_space.apply_values(
        c, {"optim.lr": 3e-3, "train.batch_size": 16, "data.patch_size": (16, 16)}
    )
    assert (out.optim.lr, out.train.batch_size, out.data.patch_size) == (3e-3, 16, (16, 16))
    assert (c.optim.lr, c.train.batch_size) == (3e-3, 8)  # the original is untouched


def test_ray_domains_draw_from_the_declared_distributions():
    params = tune_space.parse_space(
        _config(
            "optim.lr=loguniform(1e-4, 1e-2)",
            "optim.weight_decay=uniform(0.2, 0.5)",
            "train.batch_size=choice(8, 16, 24)",
            "optim.name=grid('adam', 'sgd')",
        )
    )
    space = tune_space.ray_space(params)
    rng = np.random.default_rng(0)
    lr = np.asarray(space["optim.lr"].sample(size=2000, random_state=rng))
    wd = np.asarray(space["optim.weight_decay"].sample(size=2000, random_state=rng))
    bs = np.asarray(space["train.batch_size"].sample(size=3000, random_state=rng))
    # Independent reference: scipy's uniform law on log(lr) and on wd (KS test).
    lo, hi = math.log(1e-4), math.log(1e-2)
    assert stats.kstest(np.log(lr), stats.uniform(lo, hi - lo).cdf).pvalue > 1e-3
    assert stats.kstest(wd, stats.uniform(0.2, 0.3).cdf).pvalue > 1e-3
    assert set(bs.tolist()) == {8, 16, 24}
    assert np.all(np.abs(np.bincount(bs)[[8, 16, 24]] / 3000 - 1 / 3) < 0.05)
    assert space["optim.name"] == {"grid_search": ["adam", "sgd"]}


def test_max_epochs_is_the_largest_of_the_space():
    assert tune_space.max_epochs(_config("optim.lr=choice(0.1)"), []) == 2
    c = _config("train.epochs=choice(3, 7, 5)")
    assert tune_space.max_epochs(c, tune_space.parse_space(c)) == 7
    c = _config("train.epochs=grid(1)")  # below the config's 2: the drawn values decide
    assert tune_space.max_epochs(c, tune_space.parse_space(c)) == 1


@pytest.mark.parametrize(
    "spec, message",
    [
        ("optim.lrr=choice(0.1)", "unknown config key 'optim.lrr'"),
        ("optimizer.lr=choice(0.1)", "unknown config key 'optimizer.lr'"),
        ("optim=choice(1)", "'optim' is a config section"),
        ("optim.lr=normal(0, 1)", "unknown distribution 'normal'"),
        ("optim.lr", "expected 'config.key=dist(args)'"),
        ("optim.lr=choice(0.1", "is not 'config.key=dist(args)'"),
        ("optim.lr=choice(low=1)", "positional arguments"),
        ("optim.lr=choice(x)", "must be literals"),
        ("optim.lr=choice()", "choice() needs at least one value"),
        ("optim.lr=uniform(1)", "takes two finite numbers"),
        ("optim.lr=uniform(1, 'a')", "takes two finite numbers"),
        ("optim.lr=uniform(0.2, 0.1)", "needs low < high"),
        ("optim.lr=loguniform(0, 0.1)", "needs 0 < low < high"),
        ("train.epochs=uniform(1, 5)", "train.epochs is an integer"),
        ("train.epochs=choice(2, 2.5)", "train.epochs cannot hold 2.5"),
        ("optim.lr=grid('fast')", "optim.lr cannot hold 'fast'"),
    ],
)
def test_bad_spec_is_a_config_error_naming_it(spec, message):
    with pytest.raises(errors.ConfigError, match="tune.params entry") as e:
        tune_space.parse_space(_config(spec))
    assert message in str(e.value) and spec in str(e.value)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("params", (), "tune.params is empty"),
        ("params", ("optim.lr=choice(1)", "optim.lr=uniform(0, 1)"), "optim.lr appear"),
        ("mode", "maximum", "tune.mode='maximum'"),
        ("num_samples", 0, "tune.num_samples=0"),
        ("scheduler", "hyperband", "tune.scheduler='hyperband'"),
        ("asha.reduction_factor", 1, "tune.asha.reduction_factor=1"),
        ("resources_per_trial.cpus", 0.0, "tune.resources_per_trial.cpus=0.0"),
    ],
)
def test_bad_tune_section_is_a_config_error(key, value, message):
    c = unet.get_config("tiny")
    c.tune.params = ("optim.lr=choice(0.1)",)
    tune_space.set_value(c.tune, key, value)
    with pytest.raises(errors.ConfigError) as e:
        tune_space.parse_space(c)
    assert message in str(e.value)


@pytest.mark.parametrize("arg", [None, "tiny"])
def test_luna_tune_space_parses(arg):
    from configs import luna_tune

    c = luna_tune.get_config(arg)
    c.lock()
    params = tune_space.parse_space(c)
    assert [p.key for p in params] == [
        "optim.lr",
        "train.batch_size",
        "train.epochs",
        "model.kwargs.num_blocks",
        "model.kwargs.channels",
        "model.kwargs.dropout",
        "optim.name",
    ]
    assert c.tune.metric == "val/auc" and c.model.name == "luna"
    assert tune_space.max_epochs(c, params) == (2 if arg else 10)

"""The search space of a sweep: ``config.tune.params`` specs parsed, checked and applied.

A spec is ``"config.key=dist(args)"`` with arguments that are Python literals (parsed with
``ast.literal_eval``, never ``eval``):

    choice(a, b, ...)       one of the values, drawn uniformly
    uniform(low, high)      a float in [low, high)
    loguniform(low, high)   a float whose logarithm is uniform (0 < low < high)
    grid(a, b, ...)         every value; each grid point is run ``tune.num_samples`` times

Every error is a ``ConfigError`` naming the spec or the ``tune.*`` key. Ray is imported only by
``ray_space``: parsing works without the ``tune`` extra.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from typing import Any

import ml_collections

from medjax import errors

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "grid")
_FORMAT = "'config.key=dist(args)' with dist one of " + ", ".join(DISTRIBUTIONS)


@dataclasses.dataclass(frozen=True)
class Param:
    """One dimension of the search space: a config key and its distribution."""

    key: str  # dotted config path, e.g. "optim.lr"
    dist: str  # one of DISTRIBUTIONS
    args: tuple[Any, ...]  # the values (choice, grid) or (low, high)


def _lookup(config: ml_collections.ConfigDict, key: str, where: str) -> Any:
    node: Any = config
    for i, part in enumerate(key.split(".")):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            prefix = ".".join(key.split(".")[:i]) or "the config"
            have = ", ".join(sorted(node)) if isinstance(node, ml_collections.ConfigDict) else ""
            raise errors.ConfigError(
                f"{where}: unknown config key {key!r} ({prefix} has: {have or 'no keys'})."
            )
        node = node[part]
    if isinstance(node, ml_collections.ConfigDict):
        raise errors.ConfigError(f"{where}: {key!r} is a config section, not a value.")
    return node


def set_value(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    """Sets the dotted ``key`` of ``config`` (ConfigDict type checks apply)."""
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[last] = value


def parse_param(spec: str, config: ml_collections.ConfigDict) -> Param:
    """Parses one ``"config.key=dist(args)"`` spec and checks it against ``config``.

    Arguments are Python literals (``ast.literal_eval``, never ``eval``).

    Raises:
      ConfigError: naming the spec: bad syntax, an unknown distribution or config key, or a
        value the key cannot hold (e.g. a float draw for an integer key).
    """
    where = f"tune.params entry {spec!r}"
    if not isinstance(spec, str) or "=" not in spec:
        raise errors.ConfigError(f"{where}: expected {_FORMAT}.")
    key, expr = (s.strip() for s in spec.split("=", 1))
    try:
        node = ast.parse(expr, mode="eval").body
    except SyntaxError as e:
        raise errors.ConfigError(f"{where}: {expr!r} is not {_FORMAT}.") from e
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)) or node.keywords:
        raise errors.ConfigError(f"{where}: {expr!r} is not {_FORMAT} (positional arguments).")
    dist = node.func.id
    if dist not in DISTRIBUTIONS:
        raise errors.ConfigError(
            f"{where}: unknown distribution {dist!r}; expected one of {', '.join(DISTRIBUTIONS)}."
        )
    try:
        args = tuple(ast.literal_eval(a) for a in node.args)
    except ValueError as e:
        raise errors.ConfigError(f"{where}: the arguments of {dist}() must be literals.") from e
    current = _lookup(config, key, where)
    if dist in ("choice", "grid"):
        if not args:
            raise errors.ConfigError(f"{where}: {dist}() needs at least one value.")
        candidates = args
    else:
        if len(args) != 2 or not all(
            isinstance(a, int | float) and not isinstance(a, bool) and math.isfinite(a)
            for a in args
        ):
            raise errors.ConfigError(f"{where}: {dist}(low, high) takes two finite numbers.")
        low, high = (float(a) for a in args)
        if not low < high or (dist == "loguniform" and low <= 0):
            bound = "0 < low < high" if dist == "loguniform" else "low < high"
            raise errors.ConfigError(f"{where}: {dist}({low}, {high}) needs {bound}.")
        if isinstance(current, int) and not isinstance(current, bool):
            raise errors.ConfigError(
                f"{where}: {key} is an integer but {dist}() draws floats; use choice() or grid()."
            )
        args, candidates = (low, high), (low, high)
    probe = config.copy_and_resolve_references()
    for value in candidates:
        try:
            set_value(probe, key, value)
        except (TypeError, ValueError) as e:
            raise errors.ConfigError(
                f"{where}: {key} cannot hold {value!r} (it is {current!r}): {e}"
            ) from e
    return Param(key, dist, args)


def parse_space(config: ml_collections.ConfigDict) -> list[Param]:
    """Checks ``config.tune`` and returns its search space, one ``Param`` per entry.

    Raises:
      ConfigError: naming the ``tune.*`` key or the ``tune.params`` entry that is wrong.
    """
    t = config.tune
    specs = t.params
    if isinstance(specs, str) or not isinstance(specs, tuple | list):
        raise errors.ConfigError(f"tune.params must be a tuple of {_FORMAT}; got {specs!r}.")
    if not specs:
        raise errors.ConfigError(
            "tune.params is empty: declare the search space, e.g. "
            "--config.tune.params='(\"optim.lr=loguniform(1e-4, 1e-2)\",)'."
        )
    params = [parse_param(s, config) for s in specs]
    keys = [p.key for p in params]
    if dupes := sorted({k for k in keys if keys.count(k) > 1}):
        raise errors.ConfigError(f"tune.params: {', '.join(dupes)} appear more than once.")
    checks = [
        (t.mode in ("min", "max"), "tune.mode", "'min' or 'max'"),
        (t.num_samples >= 1, "tune.num_samples", ">= 1"),
        (t.max_concurrent >= 0, "tune.max_concurrent", ">= 0 (0: as the resources allow)"),
        (t.scheduler in ("asha", "fifo"), "tune.scheduler", "'asha' or 'fifo'"),
        (t.asha.grace_period >= 1, "tune.asha.grace_period", ">= 1 epoch"),
        (t.asha.reduction_factor > 1, "tune.asha.reduction_factor", "> 1"),
        (t.asha.max_t >= 0, "tune.asha.max_t", ">= 0 epochs (0: the largest train.epochs)"),
        (t.resources_per_trial.cpus > 0, "tune.resources_per_trial.cpus", "> 0"),
        (t.resources_per_trial.gpus >= 0, "tune.resources_per_trial.gpus", ">= 0"),
        (bool(t.metric), "tune.metric", "a validation metric such as 'val/dice'"),
    ]
    for ok, key, allowed in checks:
        if not ok:
            raise errors.ConfigError(f"{key}={_lookup(config, key, key)!r}: must be {allowed}.")
    return params


def apply_values(config: ml_collections.ConfigDict, values: dict[str, Any]) -> Any:
    """A copy of ``config`` with ``values`` (``{"optim.lr": 0.01, ...}``) set."""
    out = config.copy_and_resolve_references()
    for key, value in values.items():
        set_value(out, key, value)
    return out


def max_epochs(config: ml_collections.ConfigDict, params: list[Param]) -> int:
    """ASHA's ``max_t``: ``tune.asha.max_t``, else the largest ``train.epochs`` of the space."""
    if config.tune.asha.max_t:
        return int(config.tune.asha.max_t)
    drawn = [v for p in params if p.key == "train.epochs" for v in p.args]
    return int(max(drawn or [config.train.epochs]))


def ray_space(params: list[Param]) -> dict[str, Any]:
    """Ray Tune's ``param_space``: one ``tune.choice`` / ``uniform`` / ... per key."""
    from ray import tune

    make = {
        "choice": lambda a: tune.choice(list(a)),
        "grid": lambda a: tune.grid_search(list(a)),
        "uniform": lambda a: tune.uniform(*a),
        "loguniform": lambda a: tune.loguniform(*a),
    }
    return {p.key: make[p.dist](p.args) for p in params}

"""Jaxpr inspection for tests: which primitives a traced function really uses."""

from __future__ import annotations

from typing import Any

import jax.extend.core


def conv_input_ranks(jaxpr: Any) -> list[int]:
    """Ranks of the inputs of every convolution in a jaxpr, sub-jaxprs included.

    4 is a 2D convolution (``[B, H, W, C]``), 5 a 3D one; im2col traces none.
    """
    ranks = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            ranks.append(eqn.invars[0].aval.ndim)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            ranks += conv_input_ranks(sub)
    return ranks

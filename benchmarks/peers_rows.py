"""Rows of ``benchmarks/peers.py``: interleaved rounds turned into the results table's rows.

Pure functions of the answers the workers gave (no processes, no frameworks), shared by the
train-step comparison (``peers.py``) and the loader one (``peers_loader.py``).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def summarize(
    bench: str,
    setting: str,
    unit: str,
    results: dict[str, list[dict]],
    infos: dict[str, dict],
    peers: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Rows for one interleaved comparison.

    Args:
      bench: the rows' ``benchmark``.
      setting: what was compared; each row appends its side's name.
      unit: unit of the values (higher is better).
      results: side name -> per-round ``{"value", "load"}``, as ``interleave`` returns them.
      infos: side name -> the worker's static facts, copied into its row.
      peers: the sides the others are compared with (default: the last side).

    Returns:
      One row per side (its best round), then for each other side and each peer a ratio row
      ``<side>/<peer>``: best vs best, and the median of the per-round (paired) ratios.
    """
    peers = list(results)[-1:] if peers is None else list(peers)
    ours = [name for name in results if name not in peers]
    best = {name: max(r["value"] for r in rs) for name, rs in results.items()}
    rows = []
    for name, rs in results.items():
        i = max(range(len(rs)), key=lambda j: rs[j]["value"])
        row = {
            "benchmark": bench,
            "setting": f"{setting} {name}",
            "value": best[name],
            "unit": unit,
            "extra": f"load {rs[i]['load']:.1f}; rounds "
            + ", ".join(f"{r['value']:.3g}@{r['load']:.1f}" for r in rs),
            "side": name,
            "rounds": [{"value": r["value"], "load": r["load"]} for r in rs],
            **{k: v for k, v in infos[name].items() if k != "ready"},
        }
        rows.append(row)
    for name in ours:
        for peer in peers:
            pairs = [
                a["value"] / b["value"] for a, b in zip(results[name], results[peer], strict=True)
            ]
            rows.append(
                {
                    "benchmark": bench,
                    "setting": f"{setting} {name}/{peer}",
                    "value": best[name] / best[peer],
                    "unit": "ratio (best)",
                    "extra": f"median of paired rounds {statistics.median(pairs):.2f} "
                    f"({', '.join(f'{p:.2f}' for p in pairs)})",
                    "side": "ratio",
                    "paired": pairs,
                }
            )
    return rows


def error_row(setting: str, name: str, info: dict[str, Any]) -> dict[str, Any]:
    """The row of a side that could not run: its error where the value would be."""
    return {
        "benchmark": "peers",
        "setting": f"{setting} {name}",
        "value": "error",
        "unit": "",
        "extra": info["error"],
        "side": name,
        **{k: v for k, v in info.items() if k not in ("ready", "error")},
    }

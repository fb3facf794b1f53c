"""Plots of the latency model: speed against round-trip time, and SpecSteer/SD speedup against
acceptance with the break-even point marked."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

from costeer_jax.costs import latency


def _finish(fig, ax, path, xlabel: str, ylabel: str, title: str) -> Path:
    import matplotlib.pyplot as plt

    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_speed_vs_rtt(times: latency.StepTimes, network: latency.Network, methods: Sequence[tuple[str, dict]],
                      path: str | Path, max_rtt_ms: float = 100.0, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rtts = [max_rtt_ms * i / 100 for i in range(101)]
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, kwargs in methods:
        method = kwargs.get("method", label)
        extra = {k: v for k, v in kwargs.items() if k != "method"}
        ratios = [latency.speed_ratio(method, times, dataclasses.replace(network, rtt_s=r / 1e3), **extra) for r in rtts]
        ax.plot(rtts, ratios, label=label)
        half = latency.rtt_at_speed_ratio(method, times, network, 0.5, **extra)
        if half is not None and half * 1e3 <= max_rtt_ms:
            ax.plot([half * 1e3], [0.5], "o", color=ax.lines[-1].get_color())
    ax.axhline(0.5, color="gray", lw=0.8, ls=":")
    return _finish(fig, ax, path, "round-trip time (ms)", "speed / vanilla LLM speed", title)


def plot_speedup_vs_acceptance(times: latency.StepTimes, network: latency.Network, methods: Sequence[tuple[str, dict]],
                               path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = [i / 100 for i in range(101)]
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, kwargs in methods:
        method = kwargs.get("method", label)
        extra = {k: v for k, v in kwargs.items() if k != "method"}
        ax.plot(grid, [latency.speed_ratio(method, times, network, acceptance=a, **extra) for a in grid], label=label)
        even = latency.breakeven_acceptance(method, times, network, **extra)
        if even is not None:
            ax.plot([even], [1.0], "o", color=ax.lines[-1].get_color())
    return _finish(fig, ax, path, "per-draft acceptance", "speedup over vanilla LLM", title)

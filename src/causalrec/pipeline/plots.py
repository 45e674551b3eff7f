"""The stages' figures (PNG next to the CSV that DVC plots read)."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd


@contextmanager
def figure(path: Path, size: tuple[float, float]):
    """A matplotlib axis saved to `path` (Agg backend: no display needed) and closed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    yield ax
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def propensity_histogram(values: np.ndarray, path: Path) -> None:
    with figure(path, (5, 3.2)) as ax:
        ax.hist(values, bins=40, color="#4477aa")
        ax.set(xlabel="propensity of exposure", ylabel="exposed rows", title="Logged propensities (exposed rows)")


def training_curves(curve: pd.DataFrame, path: Path) -> None:
    with figure(path, (5.5, 3.5)) as ax:
        for name, g in curve.groupby("model"):
            ax.plot(g["epoch"], g["train_loss"], label=f"{name} train")
            ax.plot(g["epoch"], g["val_loss"], "--", label=f"{name} val (SNIPS-weighted)")
        ax.set(xlabel="epoch", ylabel="weighted BCE", title="Training curves")
        if len(curve):
            ax.legend(fontsize=7)


def qini(qini: pd.DataFrame, path: Path) -> None:
    with figure(path, (5, 3.5)) as ax:
        ax.plot(qini["fraction_targeted"], qini["model"], label="uplift model")
        ax.plot(qini["fraction_targeted"], qini["oracle"], "--", label="oracle (true uplift)")
        ax.plot([0, 1], [0, qini["model"].iloc[-1]], ":", color="grey", label="random targeting")
        ax.set(xlabel="fraction of pairs targeted", ylabel="incremental outcomes per pair", title="Qini curve")
        ax.legend(fontsize=8)

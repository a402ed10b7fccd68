"""Spectrogram pictures for TensorBoard, reports and quick looks (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never try to open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def mel_figure(mels: list[torch.Tensor], titles: list[str], hop_length: int, sample_rate: int,
               value_range: tuple[float, float] | None = None, width: float = 10.0):
    """One panel per log-mel (n_mels, F), stacked, sharing the colour scale (`value_range`, default
    the range of all panels) and the time axis (seconds)."""
    arrays = [m.detach().float().cpu().numpy() for m in mels]
    vmin, vmax = value_range or (min(float(a.min()) for a in arrays), max(float(a.max()) for a in arrays))
    fig, axes = plt.subplots(len(arrays), 1, figsize=(width, 2.6 * len(arrays)), squeeze=False, constrained_layout=True)
    for ax, array, title in zip(axes[:, 0], arrays, titles, strict=True):
        seconds = array.shape[-1] * hop_length / sample_rate
        image = ax.imshow(array, origin="lower", aspect="auto", vmin=vmin, vmax=vmax,
                          extent=(0, seconds, 0, array.shape[0]), cmap="magma")
        ax.set_title(title)
        ax.set_ylabel("mel bin")
    axes[-1, 0].set_xlabel("time (s)")
    fig.colorbar(image, ax=axes[:, 0].tolist(), label="log magnitude")
    return fig


def save_figure(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def curves_figure(panels: dict[str, dict[str, tuple[list[float], list[float]]]],
                  lines: dict[str, dict[str, float]] | None = None, xlabel: str = "step", width: float = 10.0):
    """One small panel per quantity: panels[title][label] = (x, y) curves, lines[title][label] = a
    horizontal reference (e.g. the teacher's score); a grid of up to three columns."""
    titles = list(panels)
    cols = min(3, max(1, len(titles)))
    rows = max(1, -(-len(titles) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width, 2.6 * rows), squeeze=False, constrained_layout=True)
    for ax in axes.flat[len(titles):]:
        ax.set_visible(False)
    for ax, title in zip(axes.flat, titles, strict=False):
        for label, (x, y) in panels[title].items():
            ax.plot(x, y, marker="o" if len(x) < 30 else None, markersize=3, label=label)
        for i, (label, value) in enumerate((lines or {}).get(title, {}).items()):
            if value is not None and np.isfinite(value):
                ax.axhline(value, color=f"C{len(panels[title]) + i}", linestyle="--", linewidth=1, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if len(panels[title]) + len((lines or {}).get(title, {})) > 1:
            ax.legend(fontsize=7)
    return fig

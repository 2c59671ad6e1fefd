"""Line charts of scores against steps or seconds (a training run's detection curve, the benchmarks' curves).

matplotlib draws them when it is installed, else Pillow (a core dependency), so a chart never needs an extra install.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

Panel = tuple[str, dict[str, list[tuple[float, float]]]]  # title, series name -> (x, y) points


def save_panels(panels: list[Panel], path: str | Path) -> str:
    """One chart per panel, side by side, saved as ``path``; returns the backend used."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _save_pillow(panels, path)
        return "pillow"
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (title, series) in zip(axes[0], panels):
        for name, points in series.items():
            if points:
                ax.plot(*zip(*points), marker="o", ms=3, label=name)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return "matplotlib"


def _save_pillow(panels, path: Path, w: int = 420, h: int = 320, pad: int = 40) -> None:
    from PIL import Image, ImageDraw

    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (127, 127, 127)]
    image = Image.new("RGB", (w * len(panels), h), "white")
    draw = ImageDraw.Draw(image)
    for k, (title, series) in enumerate(panels):
        x0 = k * w
        points = np.array([p for s in series.values() for p in s], dtype=np.float64).reshape(-1, 2)
        if not len(points):
            continue
        lo = np.array([points[:, 0].min(), min(0.0, points[:, 1].min())])
        span = np.array([points[:, 0].max(), points[:, 1].max()]) - lo
        span[span <= 0] = 1.0  # a flat series: a unit axis
        draw.rectangle([x0 + pad, pad, x0 + w - pad, h - pad], outline="black")
        draw.text((x0 + pad, 8), title, fill="black")
        draw.text((x0 + 2, pad - 5), f"{lo[1] + span[1]:.3g}", fill="black")
        draw.text((x0 + 2, h - pad - 5), f"{lo[1]:.3g}", fill="black")
        draw.text((x0 + w - pad - 20, h - pad + 5), f"{lo[0] + span[0]:.3g}", fill="black")
        for j, (name, pts) in enumerate(series.items()):
            if not pts:
                continue
            unit = (np.asarray(pts, dtype=np.float64) - lo) / span
            xy = [(x0 + pad + u * (w - 2 * pad), h - pad - v * (h - 2 * pad)) for u, v in unit]
            colour = colours[j % len(colours)]
            if len(xy) > 1:
                draw.line(xy, fill=colour, width=2)
            for x, y in xy:
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
            draw.text((x0 + pad + 5, pad + 5 + 12 * j), name, fill=colour)
    image.save(path)

"""Loss curves of a training output directory as one PNG."""
from __future__ import annotations

import os
from typing import Optional

from a2llm_ros.tools.training.loop import LOSSES_FILE, read_losses

#: Loss keys drawn per run (others in the log are ignored in the plot).
PLOTTED = ("total", "recon", "velocity", "commit", "text_ce", "speech_ce", "motion_ce")


def plot_losses(out_dir: str, png: Optional[str] = None,
                runs=("rvq", "base", "connector", "joint", "affective")) -> Optional[str]:
    """Draw every run's logged losses (one panel per run, log scale); returns the PNG path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    logged = [(r, read_losses(os.path.join(out_dir, r, LOSSES_FILE))) for r in runs]
    logged = [(r, rows) for r, rows in logged if rows]
    if not logged:
        return None
    fig, axes = plt.subplots(1, len(logged), figsize=(4.2 * len(logged), 3.4), squeeze=False)
    for ax, (run, rows) in zip(axes[0], logged):
        steps = [r["step"] for r in rows]
        for key in PLOTTED:
            if key in rows[0]:
                ax.plot(steps, [max(r[key], 1e-6) for r in rows], label=key)
        ax.set_yscale("log")
        ax.set_title(run)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    png = png or os.path.join(out_dir, "losses.png")
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png

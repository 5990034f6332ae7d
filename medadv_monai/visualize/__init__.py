"""Image grids, plots, the Grad-CAM figure and the markdown report of an evaluation."""

from __future__ import annotations

from medadv_monai.visualize.figures import (
    adversarial_grid,
    attack_examples,
    gradcam_figure,
    plot_asr_by_coverage,
    plot_ranking,
    plot_robust_accuracy,
    plot_tradeoff,
    plot_transfer_matrix,
)
from medadv_monai.visualize.report import eps_table, markdown_table, write_html

__all__ = [
    "adversarial_grid",
    "attack_examples",
    "eps_table",
    "gradcam_figure",
    "markdown_table",
    "plot_asr_by_coverage",
    "plot_ranking",
    "plot_robust_accuracy",
    "plot_tradeoff",
    "plot_transfer_matrix",
    "write_html",
]

"""Image grids, plots, the Grad-CAM figure, the MRI-physics attacks' field figures and the markdown report of an
evaluation."""

from __future__ import annotations

from medadv_monai.visualize.detection_figures import detection_table, plot_roc_curves
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
from medadv_monai.visualize.physics_figures import physics_change, physics_examples, plot_physics_accuracy
from medadv_monai.visualize.report import eps_table, markdown_table, write_html

__all__ = [
    "adversarial_grid",
    "attack_examples",
    "detection_table",
    "eps_table",
    "gradcam_figure",
    "markdown_table",
    "physics_change",
    "physics_examples",
    "plot_asr_by_coverage",
    "plot_physics_accuracy",
    "plot_ranking",
    "plot_robust_accuracy",
    "plot_roc_curves",
    "plot_tradeoff",
    "plot_transfer_matrix",
    "write_html",
]

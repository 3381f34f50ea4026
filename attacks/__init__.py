"""Gradient-inversion attacks (DLG / iDLG) on observed client gradients."""

from attacks.inversion import (
    ENGINES,
    METHODS,
    OBJECTIVES,
    AttackConfig,
    AttackResult,
    infer_label_idlg,
    invert_gradients,
    invert_gradients_loop,
    LBFGSMemory,
    loss_scale,
    matching_loss,
    single_image_gradients,
)

__all__ = [
    "ENGINES",
    "METHODS",
    "OBJECTIVES",
    "AttackConfig",
    "AttackResult",
    "infer_label_idlg",
    "invert_gradients",
    "invert_gradients_loop",
    "LBFGSMemory",
    "loss_scale",
    "matching_loss",
    "single_image_gradients",
]

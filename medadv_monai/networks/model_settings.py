"""What a trained classifier takes in, saved with its weights, so every later stage reads it the same way.

Stage 1 saves its ``model_settings`` (input modalities, modality set, slice size, layout, label convention and
region, foreground, ...) in ``models/model.pt`` under the key ``settings`` beside the weights (``model``). Stages 2
and 3, and stage 1's own inference, read the classifier's config with those values applied
(:func:`classifier_config`), so a modality swap or a region change made when training flows to them without
repeating it; values given as ``classifier_overrides`` (or ``train_overrides``) win over the recorded ones.

Beside them, under the key ``training``, stage 1 records how the weights were trained (``{"method": "standard"}``,
or an adversarial training's method, eps, step size, steps, beta and warm-up), which stage 3 reads back with
:func:`recorded_training` to compare models (its trade-off table of clean and robust accuracy against training eps).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from medadv_monai.bundle import load_bundle_config
from medadv_monai.errors import MedAdvInputError
from medadv_monai.networks.io import load_checkpoint

__all__ = ["ModelSettings", "classifier_config", "recorded_settings", "recorded_training"]

SETTINGS_KEY = "settings"
TRAINING_KEY = "training"


class ModelSettings:
    """Config ids and their values (or any JSON-able record, such as how a model was trained), as an object with a
    state dict that a checkpoint saver stores.

    Example (a bundle config)::

        model_settings: {_target_: medadv_monai.networks.ModelSettings, modalities: '@modalities', ...}
        ... save_dict: {model: '@network', settings: '@model_settings'}
    """

    def __init__(self, **settings: Any) -> None:
        self.settings = dict(settings)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.settings)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.settings = dict(state)


def _recorded(path: str | os.PathLike, key: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    state = load_checkpoint(path)
    record = state.get(key, {}) if isinstance(state, Mapping) else {}
    if not isinstance(record, Mapping):
        raise MedAdvInputError(f"checkpoint {str(path)!r}: its {key!r} entry is not a mapping")
    return dict(record)


def recorded_settings(path: str | os.PathLike) -> dict[str, Any]:
    """The ``settings`` saved in the checkpoint at ``path``; ``{}`` when the file does not exist yet (whoever loads
    the weights names it) or was saved without them.

    Raises:
        MedAdvInputError: the file exists but is no readable, safe checkpoint, or its settings are not a mapping.
    """
    return _recorded(path, SETTINGS_KEY)


def recorded_training(path: str | os.PathLike) -> dict[str, Any]:
    """How the model at ``path`` was trained (its ``training`` entry): ``{"method": "standard"}`` or an
    adversarial training's settings (``method``, ``eps``, ``step_size``, ``steps``, ``beta``, ...); ``{}`` for a
    checkpoint saved without it (before the record existed, or by another program).

    Raises:
        MedAdvInputError: the file exists but is no readable, safe checkpoint, or the entry is not a mapping.
    """
    return _recorded(path, TRAINING_KEY)


def classifier_config(config: str | os.PathLike, checkpoint: str | os.PathLike,
                      overrides: Mapping[str, Any] | None = None, **ids: Any) -> Any:
    """The classifier's bundle config as the model at ``checkpoint`` was trained.

    Args:
        config: the classifier bundle's ``train.yaml``.
        checkpoint: the trained model (``models/model.pt``); its recorded settings are applied first.
        overrides: config ids that win over the recorded settings (a bundle's ``classifier_overrides``).
        ids: further ids, e.g. ``dataset_dir`` and ``work_dir`` (they win over both).

    Raises:
        MedAdvInputError: an unreadable checkpoint, or an override id the config does not have.
    """
    merged = {**recorded_settings(checkpoint), **dict(overrides or {}), **ids}
    return load_bundle_config(config, **merged)

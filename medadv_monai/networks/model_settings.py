"""What a trained classifier takes in, saved with its weights, so every later stage reads it the same way.

Stage 1 saves its ``model_settings`` (input modalities, modality set, slice size, layout, label convention and
region, foreground, ...) in ``models/model.pt`` under the key ``settings`` beside the weights (``model``). Stages 2
and 3, and stage 1's own inference, read the classifier's config with those values applied
(:func:`classifier_config`), so a modality swap or a region change made when training flows to them without
repeating it; values given as ``classifier_overrides`` (or ``train_overrides``) win over the recorded ones.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from medadv_monai.bundle import load_bundle_config
from medadv_monai.errors import MedAdvInputError
from medadv_monai.networks.io import load_checkpoint

__all__ = ["ModelSettings", "classifier_config", "recorded_settings"]

SETTINGS_KEY = "settings"


class ModelSettings:
    """Config ids and their values, as an object with a state dict that a checkpoint saver stores.

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


def recorded_settings(path: str | os.PathLike) -> dict[str, Any]:
    """The ``settings`` saved in the checkpoint at ``path``; ``{}`` when the file does not exist yet (whoever loads
    the weights names it) or was saved without them.

    Raises:
        MedAdvInputError: the file exists but is no readable, safe checkpoint, or its settings are not a mapping.
    """
    if not os.path.isfile(path):
        return {}
    state = load_checkpoint(path)
    settings = state.get(SETTINGS_KEY, {}) if isinstance(state, Mapping) else {}
    if not isinstance(settings, Mapping):
        raise MedAdvInputError(f"checkpoint {str(path)!r}: its {SETTINGS_KEY!r} entry is not a mapping of config ids")
    return dict(settings)


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

"""Finding and reading the project's MONAI bundles.

The CLI, the demo, the benchmarks, the engines and the bundle configs themselves read bundle configs through
:func:`load_bundle_config`; no module but the entry points imports :mod:`medadv_monai.cli`.

Where the bundles are (:func:`bundles_dir`), first match wins:

1. the folder named by the environment variable ``MEDADV_BUNDLES``;
2. ``bundles/`` of the source checkout this package was imported from (a clone, or an editable install);
3. ``<prefix>/share/medadv-monai/bundles``, where ``pip install .`` puts them (``sys.prefix``: the venv).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medadv_monai.errors import MedAdvInputError

__all__ = ["BUNDLES_ENV", "bundle_path", "bundles_dir", "load_bundle_config"]

BUNDLES_ENV = "MEDADV_BUNDLES"
_MARKER = Path("brats_slice_classifier") / "configs" / "train.yaml"


def _candidates() -> list[Path]:
    found = []
    if os.environ.get(BUNDLES_ENV):
        found.append(Path(os.environ[BUNDLES_ENV]))
    found.append(Path(__file__).resolve().parents[1] / "bundles")
    found.append(Path(sys.prefix) / "share" / "medadv-monai" / "bundles")
    return found


def bundles_dir() -> Path:
    """The folder that holds the project's bundles (see the module docstring for the search order).

    A folder counts when it holds ``brats_slice_classifier/configs/train.yaml``. A non-editable install gets the
    bundles' configs, docs and licences (not their ``models/``, ``work/``, ``eval/`` or ``runs/``) from
    ``[tool.setuptools.data-files]`` in ``pyproject.toml``, which puts them under ``<prefix>/share/medadv-monai``.

    Raises:
        MedAdvInputError: none of the places holds them (the message names each place looked at).
    """
    places = _candidates()
    if os.environ.get(BUNDLES_ENV):  # an explicit choice is not second-guessed
        if not (places[0] / _MARKER).is_file():
            raise MedAdvInputError(f"{BUNDLES_ENV}={str(places[0])!r} does not hold the bundles (expected "
                                   f"{str(places[0] / _MARKER)!r})")
        return places[0]
    for place in places:
        if (place / _MARKER).is_file():
            return place
    raise MedAdvInputError(f"the medadv-monai bundles were not found in {[str(p) for p in places]}; set "
                           f"{BUNDLES_ENV} to the repository's bundles/ folder")


def bundle_path(name: str, *parts: str) -> Path:
    """A path inside bundle ``name``, e.g. ``bundle_path("brats_slice_classifier", "configs", "train.yaml")``."""
    return bundles_dir().joinpath(name, *parts)


def load_bundle_config(config: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                       **overrides: Any) -> Any:
    """Read a bundle config (or a list of them) with MONAI's ``ConfigParser``, apply overrides, return the parser.

    Args:
        config: config file(s); default: the slice classifier's ``configs/train.yaml``.
        overrides: config ids to set, as ``python -m monai.bundle run --id value`` does.

    ``bundle_root`` defaults to the folder above ``configs/`` so the bundle works from any directory.

    Raises:
        MedAdvInputError: a config file that does not exist.
    """
    from monai.bundle import ConfigParser

    if config is None:
        config = bundle_path("brats_slice_classifier", "configs", "train.yaml")
    files = [config] if isinstance(config, (str, os.PathLike)) else list(config)
    for f in files:
        if not Path(f).is_file():
            raise MedAdvInputError(f"config file {str(f)!r} does not exist")
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    parser["bundle_root"] = str(Path(files[0]).resolve().parents[1])
    for key, value in overrides.items():
        parser[key] = value
    return parser

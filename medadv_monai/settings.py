"""The user-facing settings of the bundles, checked in one place before anything runs.

One table (:data:`RULES`) says what each setting must be; :func:`check_settings` checks a mapping of them and
:func:`check_config` the ones a bundle config holds. Each bundle calls :func:`check_settings` in ``initialize``
(after :func:`medadv_monai.bundle.check_run`), e.g. the slice classifier's ``train.yaml``::

    initialize:
      - $medadv_monai.errors.install_excepthook()
      - $medadv_monai.bundle.check_run()
      - "$medadv_monai.settings.check_settings({'image_size': @image_size, 'batch_size': @batch_size,
         'modalities': @modalities, 'all_modalities': @all_modalities,
         'train#trainer#max_epochs': @train#trainer#max_epochs})"

A key is a config id; its rule is found by its last part (``train#trainer#max_epochs`` -> ``max_epochs``), and
the error names the id as given. ``all_modalities`` is no setting: it lists the names ``modalities`` may use.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any

from medadv_monai.errors import MedAdvInputError
from medadv_monai.utils.checks import check_choice, check_eps, check_image_size, check_int

__all__ = ["CONFIG_IDS", "RULES", "SPLITS", "check_config", "check_settings"]

SPLITS: tuple[str, ...] = ("training", "validation", "test")


def _hint(value: Any, choices: Any) -> str:
    near = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.5) if isinstance(value, str) else []
    return f"; did you mean {near[0]!r}?" if near else ""


def _split(value: Any, what: str, _: Mapping[str, Any]) -> str:
    if not isinstance(value, str) or value not in SPLITS:
        raise MedAdvInputError(f"{what} must be one of {list(SPLITS)}, got {value!r}{_hint(value, SPLITS)}")
    return value


def _modalities(value: Any, what: str, given: Mapping[str, Any]) -> list[str]:
    known = given.get("all_modalities")  # the channels the slice cache stores; without them any names pass
    names = f" from {list(known)}" if known is not None else ""
    if isinstance(value, str):  # len('t2') == 2 would build a 2-channel network
        raise MedAdvInputError(f"{what} {value!r}: expected a list of names{names}, e.g. \"['{value}']\", "
                               f"got a string")
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(m, str) for m in value):
        raise MedAdvInputError(f"{what} {value!r}: expected a non-empty list of names{names}")
    unknown = [] if known is None else [m for m in value if m not in known]
    if unknown:
        raise MedAdvInputError(f"{what} {list(value)}: unknown {unknown}; expected a non-empty list{names}"
                               f"{_hint(unknown[0], list(known))}")
    return list(value)


def _eps(value: Any, what: str, _: Mapping[str, Any]) -> float | list[float]:
    if isinstance(value, (list, tuple)):  # a grid of budgets (brats_attack_eval)
        if not value:
            raise MedAdvInputError(f"{what} must be a number in [0, 1] or a non-empty list of them, got {value!r}")
        return [check_eps(e, f"{what} in the grid") for e in value]
    return check_eps(value, what)


#: setting -> (checker(value, id, all given settings) -> normalised value, what it must be)
RULES: dict[str, tuple[Callable[[Any, str, Mapping[str, Any]], Any], str]] = {
    "image_size": (lambda v, what, _: check_image_size(v, what), "a list of two integers > 0"),
    "batch_size": (lambda v, what, _: check_int(v, what, 1), "an integer >= 1"),
    "max_epochs": (lambda v, what, _: check_int(v, what, 1), "an integer >= 1"),
    "modalities": (_modalities, "a non-empty list of names from all_modalities"),
    "split": (_split, f"one of {list(SPLITS)}"),
    "eval_split": (_split, f"one of {list(SPLITS)}"),
    "infer_split": (_split, f"one of {list(SPLITS)}"),
    "eps": (_eps, "a number in [0, 1] (or a list of them: a grid)"),
    "select_model": (lambda v, what, _: check_choice(v, ("last", "best"), what), "last or best"),
}

#: the config ids :func:`check_config` looks for (each checked where the config holds it)
CONFIG_IDS: tuple[str, ...] = ("image_size", "batch_size", "modalities", "split", "eval_split", "infer_split", "eps",
                               "select_model", "train#trainer#max_epochs")


def check_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Check user-facing settings against :data:`RULES` and return them normalised (same keys).

    Args:
        settings: config id -> value, e.g. ``{"image_size": [64, 64], "train#trainer#max_epochs": 12}`` (``::``
            for ``#`` works too: MONAI writes ids that way inside ``$`` expressions); may hold
            ``all_modalities`` (the names ``modalities`` may use; default the four BraTS modalities).

    Raises:
        MedAdvInputError: the first setting that breaks its rule, named with its value and what was expected.
        KeyError: a key with no rule (a mistake in the config that calls this, not in the user's input).

    Returns:
        The settings normalised, keyed by id with ``#`` (not ``::``).
    """
    out = {}
    for raw, value in settings.items():
        key = str(raw).replace("::", "#")  # MONAI writes `#` as `::` inside `$` expressions, string keys too
        if key == "all_modalities":
            out[key] = value
            continue
        rule = RULES.get(key.split("#")[-1])
        if rule is None:
            raise KeyError(f"check_settings: no rule for {raw!r}; known: {sorted(RULES)} and all_modalities")
        out[key] = rule[0](value, key, settings)
    return out


def _is_plain(value: Any) -> bool:
    """Whether ``value`` holds no ``$`` expression, ``@`` reference or ``%`` macro (so it is its own value)."""
    if isinstance(value, str):
        return not value.startswith(("$", "@", "%"))
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(_is_plain(v) for v in value.values())
    return True


def check_config(parser: Any, evaluate: bool = True) -> dict[str, Any]:
    """Check the :data:`CONFIG_IDS` that a MONAI ``ConfigParser`` holds; return them normalised.

    Args:
        parser: the parsed bundle config (with its overrides applied).
        evaluate: evaluate ``$`` expressions and ``@`` references to check their values (this runs the config's
            code for those ids); ``False`` checks only the settings given as plain values.

    Raises:
        MedAdvInputError: as :func:`check_settings`.
    """
    given = {}
    for key in (*CONFIG_IDS, "all_modalities"):
        if key not in parser:
            continue
        if evaluate:
            given[key] = parser.get_parsed_content(key)
        elif _is_plain(parser[key]):
            given[key] = parser[key]
    if not evaluate and "modalities" in given and "all_modalities" in parser and "all_modalities" not in given:
        del given["modalities"]  # its names are known only once all_modalities is evaluated
    return check_settings(given)

"""Finding and reading the project's MONAI bundles.

The CLI, the demo, the benchmarks, the engines and the bundle configs themselves read bundle configs through
:func:`load_bundle_config`; no module but the entry points imports :mod:`medadv_monai.cli`.

Where the bundles are (:func:`bundles_dir`), first match wins:

1. the folder named by the environment variable ``MEDADV_BUNDLES``;
2. ``bundles/`` of the source checkout this package was imported from (a clone, or an editable install);
3. ``<prefix>/share/medadv-monai/bundles``, where ``pip install .`` puts them (``sys.prefix``: the venv).

Config checks before anything runs: :func:`load_bundle_config` refuses a config file that is not valid YAML/JSON
(naming the file and line), an override id that exists in none of the config files (naming the nearest valid
id), and a user-facing setting of the wrong type or range (:mod:`medadv_monai.settings`). :func:`check_run` does
the same for the ``--id value`` overrides of ``python -m monai.bundle run``; the bundles call it in ``initialize``.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from medadv_monai import settings
from medadv_monai.errors import MedAdvInputError

__all__ = ["BUNDLES_ENV", "MONAI_RUN_ARGS", "TRUST_NOTE", "bundle_path", "bundles_dir", "check_override_ids",
           "check_run", "load_bundle_config", "read_config_file", "trust_note", "write_model_metadata"]

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



# ------------------------------------------------------------------------------------------ reading config files
def read_config_file(path: str | os.PathLike) -> dict:
    """The content of one bundle config (or ``args_file``): a mapping of config ids.

    Raises:
        MedAdvInputError: the file does not exist, is a folder, is not valid YAML/JSON (the message names the line
            and column), is empty, or holds something other than a mapping of ids.
    """
    import json

    import yaml
    from monai.bundle import ConfigParser

    name = str(path)
    if not Path(path).is_file():
        what = "is a folder; expected a YAML or JSON file" if Path(path).is_dir() else "does not exist"
        raise MedAdvInputError(f"config file {name!r} {what}")
    try:
        content = ConfigParser.load_config_file(name)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise MedAdvInputError(f"config file {name!r} is not valid YAML{where}: {e.problem or e.context}") from e
    except yaml.YAMLError as e:
        raise MedAdvInputError(f"config file {name!r} is not valid YAML: {e}") from e
    except json.JSONDecodeError as e:
        raise MedAdvInputError(f"config file {name!r} is not valid JSON at line {e.lineno}, column {e.colno}: "
                               f"{e.msg}") from e
    except UnicodeDecodeError as e:
        raise MedAdvInputError(f"config file {name!r} is not a text file (YAML or JSON expected)") from e
    except ValueError as e:  # MONAI: a suffix other than .json/.yaml/.yml, or a duplicate key
        raise MedAdvInputError(f"config file {name!r}: {e}") from e
    if not isinstance(content, dict):
        got = "nothing" if content is None else f"a {type(content).__name__}"
        raise MedAdvInputError(f"config file {name!r} holds {got}; expected a mapping of config ids (id: value)")
    return content


def _read_parser(files: Sequence[str | os.PathLike]) -> Any:
    """A MONAI ``ConfigParser`` of ``files`` merged in order, each checked by :func:`read_config_file` first."""
    from monai.bundle import ConfigParser

    for f in files:
        read_config_file(f)
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    return parser


# ------------------------------------------------------------------------------------------ override ids
def _children(parser: Any, parent: str) -> list[str]:
    """The ids one level below ``parent`` ("" for the top level)."""
    value = parser[parent] if parent else parser.get()
    keys = [str(k) for k in value] if isinstance(value, dict) else (
        [str(i) for i in range(len(value))] if isinstance(value, list) else [])
    return [f"{parent}#{k}" if parent else k for k in keys]


def _deepest_parent(parser: Any, key: str) -> str:
    """The longest existing id that ``key`` lies under ("" if even its first part is unknown)."""
    parts, parent = key.split("#"), ""
    for i in range(1, len(parts)):
        candidate = "#".join(parts[:i])
        if candidate not in parser:
            break
        parent = candidate
    return parent


def check_override_ids(parser: Any, ids: Iterable[str], files: Sequence[str | os.PathLike],
                       allowed: Iterable[str] = ()) -> None:
    """Refuse override ids that exist in none of the config files, naming the nearest valid id.

    An id may be nested (``train#trainer#max_epochs``; MONAI's ``::`` works too). A new key is accepted only under
    a mapping that is empty in the configs (an open table such as ``classifier_overrides: {}``); ids starting with
    ``_meta_`` (the metadata) and those in ``allowed`` are always accepted.

    Raises:
        MedAdvInputError: ``unknown id 'imagesize' (not in train.yaml); did you mean 'image_size'?``.
    """
    allowed = set(allowed)
    for raw in ids:
        key = str(raw).replace("::", "#")
        if key in allowed or key.split("#")[0] == "_meta_" or key in parser:
            continue
        parent = _deepest_parent(parser, key)
        if parent and key.count("#") == parent.count("#") + 1 and parser[parent] == {}:
            continue  # a new entry of an open table
        pool = _children(parser, parent) + (_children(parser, "") if parent else [])
        near = difflib.get_close_matches(key, pool, n=1, cutoff=0.6)
        names = ", ".join(Path(f).name for f in files)
        hint = f"; did you mean {near[0]!r}?" if near else f"; expected an id of {names}"
        raise MedAdvInputError(f"unknown id {raw!r} (not in {names}){hint}")


# ------------------------------------------------------------------------------------------ loading
def load_bundle_config(config: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                       **overrides: Any) -> Any:
    """Read a bundle config (or a list of them) with MONAI's ``ConfigParser``, apply overrides, return the parser.

    Args:
        config: config file(s); default: the slice classifier's ``configs/train.yaml``.
        overrides: config ids to set, as ``python -m monai.bundle run --id value`` does.

    ``bundle_root`` defaults to the folder above ``configs/`` so the bundle works from any directory. Nothing of
    the config is evaluated here; the user-facing settings given as plain values are checked
    (:func:`medadv_monai.settings.check_config` with ``evaluate=False``), those given as ``$`` expressions are
    checked when the caller evaluates them (``check_config(parser)``, or the bundle's ``initialize``).

    Raises:
        MedAdvInputError: a config file that does not exist or is not valid YAML/JSON, an override id that is in
            none of the files (with the nearest valid id), or a setting of the wrong type or range.
    """
    if config is None:
        config = bundle_path("brats_slice_classifier", "configs", "train.yaml")
    files = [config] if isinstance(config, (str, os.PathLike)) else list(config)
    parser = _read_parser(files)
    parser["bundle_root"] = str(Path(files[0]).resolve().parents[1])
    check_override_ids(parser, overrides, files, allowed={"bundle_root"})
    for key, value in overrides.items():
        parser[key] = value
    settings.check_config(parser, evaluate=False)
    return parser


# ------------------------------------------------------------------------------------------ python -m monai.bundle run
#: Arguments of ``python -m monai.bundle run`` / ``run_workflow`` (and of the workflow they make) that are not ids.
MONAI_RUN_ARGS = frozenset({"config_file", "meta_file", "logging_file", "bundle_root", "init_id", "run_id",
                            "final_id", "tracking", "args_file", "workflow_name", "workflow_type",
                            "properties_path"})
_POSITIONAL = {"run": ("run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking",
                       "args_file"),
               "run_workflow": ("workflow_name", "args_file")}


def _bundle_run_args(argv: Sequence[str]) -> tuple[str, list[str]] | None:
    """``(command, the arguments after it)`` when ``argv`` is ``python -m monai.bundle run ...``, else ``None``."""
    if not argv:
        return None
    rest = [str(a) for a in argv[1:]]
    is_main = Path(str(argv[0])).parts[-3:] == ("monai", "bundle", "__main__.py")
    if is_main and rest and rest[0] in _POSITIONAL:
        return rest[0], rest[1:]
    if "run" in rest and any(a.split("=")[0] == "--config_file" for a in rest):
        return "run", rest[rest.index("run") + 1:]
    return None


def _is_flag(arg: str) -> bool:
    return arg.startswith("--") or (len(arg) > 1 and arg[0] == "-" and arg[1].isalpha())


def _fire_arguments(command: str, args: Sequence[str]) -> dict[str, Any]:
    """The keyword arguments python-fire gives ``monai.bundle.scripts.<command>`` for ``args`` (values unparsed;
    ``--key`` alone is ``True``; fire's own flags after a lone ``--`` are left out)."""
    args = list(args[: args.index("--")] if "--" in args else args)
    positional, found, i = [], {}, 0
    while i < len(args):
        arg = args[i]
        if not _is_flag(arg):
            positional.append(arg)
            i += 1
            continue
        stripped = arg.lstrip("-")
        if "=" in stripped:
            key, value = stripped.split("=", 1)
            i += 1
        elif i + 1 == len(args) or _is_flag(args[i + 1]):
            key, value = stripped, True
            i += 1
        else:
            key, value = stripped, args[i + 1]
            i += 2
        found[key.replace("-", "_")] = value
    for name, value in zip(_POSITIONAL[command], positional):
        found.setdefault(name, value)
    return found


def _config_files(value: Any) -> list[str]:
    """``--config_file`` as fire and MONAI read it: a path, a Python list of paths, or paths joined by commas."""
    from fire.parser import DefaultParseValue

    value = DefaultParseValue(value) if isinstance(value, str) else value
    if isinstance(value, str):
        return value.split(",") if "," in value and not Path(value).is_file() else [value]
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else []


def check_run(argv: Sequence[str] | None = None) -> None:
    """Refuse ``--id value`` overrides of ``python -m monai.bundle run`` whose id is in none of its config files.

    The bundles call it in ``initialize`` (``$medadv_monai.bundle.check_run()``), right after
    :func:`medadv_monai.errors.install_excepthook`. It reads the overrides from ``argv`` (default ``sys.argv``)
    the way python-fire does, plus those of ``--args_file``, re-reads the ``--config_file`` files with MONAI's
    ``ConfigParser`` and checks every id (nested ``a#b`` ids too) with :func:`check_override_ids`. MONAI's own
    arguments (:data:`MONAI_RUN_ARGS`, and the tracking settings with ``--tracking``) are not ids. When the
    process is not ``python -m monai.bundle run`` (a ``ConfigWorkflow`` in Python, pytest) it does nothing.

    Raises:
        MedAdvInputError: ``unknown id 'imagesize' (not in train.yaml); did you mean 'image_size'?``.
    """
    found = _bundle_run_args(sys.argv if argv is None else argv)
    if found is None:
        return
    command, args = found
    given = _fire_arguments(command, args)
    keys = set(given)
    if isinstance(given.get("args_file"), str):
        from_file = read_config_file(given["args_file"])
        keys |= set(from_file)
        given.setdefault("config_file", from_file.get("config_file"))
    files = _config_files(given.get("config_file"))
    if not files:
        return  # MONAI itself refuses a run without config files
    allowed = set(MONAI_RUN_ARGS)
    if given.get("tracking") is not None:
        from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

        allowed |= {k for s in DEFAULT_EXP_MGMT_SETTINGS.values() for k in s.get("configs", {})}
    check_override_ids(_read_parser(files), sorted(keys), files, allowed=allowed)


# ------------------------------------------------------------------------------------------ the trust note
#: MONAI's warning of ``python -m monai.bundle run`` (``monai.bundle.scripts.create_workflow``), in its words.
TRUST_NOTE = ('parsing config_file {files} and its overrides: any `"_target_"` value in them is resolved to an '
              'importable callable and invoked with no allow list, and any `"$"`-prefixed value is passed to '
              "Python `eval()`. Only proceed if this config is from a source you trust "
              "(see https://github.com/Project-MONAI/MONAI/security/advisories/GHSA-873f-pvrv-4x83).")
_noted = False


def trust_note(files: Sequence[str | os.PathLike], stream: Any = None) -> bool:
    """Print MONAI's trust note about ``$`` expressions and ``_target_`` values (:data:`TRUST_NOTE`) to stderr,
    once per process, as ``python -m monai.bundle run`` warns before it parses a config. Returns whether it
    printed now."""
    global _noted
    if _noted:
        return False
    _noted = True
    print("medadv: note: " + TRUST_NOTE.format(files=[str(f) for f in files]), file=stream or sys.stderr)
    return True



# ------------------------------------------------------------------------------------------ metadata of a trained model
def write_model_metadata(meta_file: str | os.PathLike, out: str | os.PathLike, modalities: Sequence[str],
                         image_size: Sequence[int], input_key: str = "image") -> Path:
    """Write the metadata of a trained model: the bundle's ``meta_file`` with ``network_data_format.inputs`` set to
    the configured input channels (``num_channels``, ``channel_def``) and slice size (``spatial_shape``).

    A bundle's ``configs/metadata.json`` describes its default inputs; a model trained on other modalities writes
    this file (``models/metadata.json``) beside its weights, so ``verify_net_in_out`` and ``ckpt_export`` given
    ``--meta_file models/metadata.json`` check and embed what the model really takes.

    Raises:
        MedAdvInputError: ``meta_file`` is unreadable or has no ``network_data_format.inputs.<input_key>``, or
            ``out`` cannot be written.
    """
    from medadv_monai.utils import save_json

    meta = read_config_file(meta_file)
    try:
        image = meta["network_data_format"]["inputs"][input_key]
    except (KeyError, TypeError):
        raise MedAdvInputError(f"{meta_file}: no network_data_format.inputs.{input_key}; expected model-zoo "
                               "metadata") from None
    image.update(num_channels=len(modalities), spatial_shape=[int(s) for s in image_size],
                 channel_def={str(i): str(m).upper() for i, m in enumerate(modalities)})
    try:
        save_json(meta, out)
    except OSError as e:
        raise MedAdvInputError(f"{out}: cannot write the model's metadata ({e.strerror or e})") from e
    return Path(out)

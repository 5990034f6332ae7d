"""The ``medadv`` command.

::

    medadv synth    --out DIR [--kind geometric --subjects 16 --shape "[96,96,64]" --seed 0]   synthetic BraTS
    medadv figure   --out PNG --real SUBJECT_DIR                             anatomical synthetic beside a real one
    medadv datalist --dataset_dir DIR --out FILE [--layout auto --seed 0]     subject-level split, MONAI datalist
    medadv cache    [--config FILE] [--dataset_dir DIR ...]                   build the slice cache of a bundle config
    medadv stats    [--config FILE] [--out FILE] [--dataset_dir DIR ...]      subjects / slices / positives per split
    medadv bench    --out FILE [--only realsize --data_dir DIR]              benchmarks, as JSON and a table
    medadv demo     --out DIR                                                the whole pipeline on synthetic data

``cache`` and ``stats`` read a bundle config (default: the slice classifier's ``configs/train.yaml``); any other
``--key value`` overrides that config id, as with ``python -m monai.bundle run``. The config is checked before
anything runs: a file that is not valid YAML (its line is named), an id that is in none of the config files
(``--imagesize`` -> "did you mean 'image_size'?") and a setting of the wrong type or range
(:mod:`medadv_monai.settings`) are refused. Commands that parse bundle configs print MONAI's trust note about
``$`` expressions once, on stderr.

Exit status: 0 on success; 2 for a failure the user or the machine caused, shown as one line
``medadv: error: ...`` naming the file, id or value and what was expected (bad input, a YAML syntax error, disk
full, permission denied, a folder where a file is expected: ``<file>: <reason>``); anything else is a bug and keeps
its traceback (exit status 1). ``medadv --debug ...`` (or ``MEDADV_DEBUG=1``, which also works for
``python -m monai.bundle run``) shows the traceback of every failure.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medadv_monai.bundle import bundles_dir, load_bundle_config, trust_note
from medadv_monai.errors import MedAdvInputError, close_progress_bars, debug_enabled, describe_failure

__all__ = ["main"]


def _config(config: str | None, overrides: dict[str, Any]) -> Any:
    """The bundle config with its overrides, checked before anything of it runs (the trust note comes first)."""
    from medadv_monai.settings import check_config

    parser = load_bundle_config(config, **overrides)  # files, YAML, ids, plain settings: nothing evaluated yet
    files = [config] if isinstance(config, (str, Path)) else list(config or [])
    trust_note(files or [Path(bundles_dir(), "brats_slice_classifier", "configs", "train.yaml")])
    check_config(parser)  # settings given as `$` expressions, evaluated
    return parser


def _file_out(out: str | None, example: str) -> None:
    """Refuse an ``--out`` that names a folder where a file is written (before any work is done)."""
    if out and Path(out).is_dir():
        raise MedAdvInputError(f"--out {out!r} is a folder; expected a file name, e.g. {str(Path(out, example))!r}")


def _datasets(parser: Any) -> tuple[Any, dict]:
    """The slice cache and the datalist of a bundle config."""
    cache = parser.get_parsed_content("slice_cache")
    datalist = parser.get_parsed_content("datalist")
    return cache, datalist


class Commands:
    """medadv: adversarial stress tests for brain-tumour MRI models."""

    def synth(self, out: str, subjects: int | None = None, shape: Sequence[int] | None = None, seed: int = 0,
              tumour_fraction: float = 0.75, overwrite: bool = False, kind: str = "anatomical") -> str:
        """Write a synthetic BraTS 2021-layout dataset (four modalities + seg per subject) to OUT.

        KIND: anatomical (default, the demo's dataset: the MNI152 2009 template deformed per subject, tissue
        contrasts of real BraTS; 40 subjects of 96x96x64 voxels, 240x240x155 the BraTS grid at 1 mm) or geometric
        (an ellipsoid brain, 64x64x48 by default; the tests' tiny, fast data).
        """
        from medadv_monai.data.synthetic import DEFAULT_SHAPE, DEFAULT_SUBJECTS
        from medadv_monai.utils.checks import check_choice

        kind = check_choice(kind, ("geometric", "anatomical"), "kind")
        if kind == "anatomical":
            from medadv_monai.data.synthetic_anatomy import ANATOMY_DEFAULT_SHAPE as default_shape
            from medadv_monai.data.synthetic_anatomy import make_anatomical_brats as make
        else:
            from medadv_monai.data.synthetic_dataset import make_synthetic_brats as make

            default_shape = DEFAULT_SHAPE
        subjects = DEFAULT_SUBJECTS if subjects is None else subjects
        shape = default_shape if shape is None else shape
        dirs = make(out, subjects=subjects, shape=tuple(shape), seed=seed, tumour_fraction=tumour_fraction,
                    overwrite=overwrite)
        return f"{len(dirs)} synthetic subjects ({kind}) in {out}"

    def figure(self, out: str, real: str, seed: int = 0, shape: Sequence[int] = (240, 240, 155)) -> str:
        """Write OUT (PNG): an anatomical synthetic subject beside the real subject folder REAL, four modalities at
        each one's largest tumour section (BraTS 2017-2021 or 2023 names; the real data is only read)."""
        import nibabel as nib
        import numpy as np

        from medadv_monai.data import MODALITIES, anatomical_subject, find_subjects
        from medadv_monai.visualize.subjects import subjects_figure

        _file_out(out, "synthetic_vs_real.png")
        folder = Path(real)
        entry = next((e for e in find_subjects(folder.parent) if e["subject"] == folder.name), None)
        if entry is None:
            raise MedAdvInputError(f"real {real!r}: not a subject folder with BraTS file names")
        shown = {f"synthetic (seed {seed})": anatomical_subject(seed, 0, tuple(shape), tumour=True),
                 f"real {folder.name}": {k: np.asarray(nib.load(entry[k]).dataobj) for k in (*MODALITIES, "seg")}}
        return str(subjects_figure(shown, out))

    def datalist(self, dataset_dir: str, out: str, layout: Any = "auto",
                 fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0,
                 modalities: Sequence[str] = ("t1", "t1ce", "t2", "flair"), channels: Any = None) -> str:
        """Find the subjects of DATASET_DIR (subject folders or an MSD task), split by subject, write a MONAI
        datalist JSON to OUT. LAYOUT: auto, brats2021, brats2023, msd, or an alias table file; MODALITIES: the
        modality set; CHANNELS: an MSD channel map {modality: index}."""
        from medadv_monai.data import build_datalist

        _file_out(out, "datalist.json")
        dl = build_datalist(dataset_dir, out=out, layout=layout, fractions=fractions, seed=seed,
                            modalities=list(modalities), channels=channels)
        return f"{out}: " + ", ".join(f"{k} {len(v)}" for k, v in dl.items()) + " subjects"

    def cache(self, config: str | None = None, **overrides: Any) -> str:
        """Build the slice cache of a bundle config by running its `slice_transforms` over every subject."""
        cache, datalist = _datasets(_config(config, overrides))
        figures = cache.build([i for items in datalist.values() for i in items], progress=True)
        return f"slice cache {cache.path}: " + json.dumps(figures)

    def stats(self, config: str | None = None, out: str | None = None, **overrides: Any) -> str:
        """Subjects, slices, positive and negative slices per split (builds the cache if needed)."""
        from medadv_monai.data import format_statistics, split_statistics
        from medadv_monai.utils import save_json

        _file_out(out, "stats.json")
        parser = _config(config, overrides)
        cache, datalist = _datasets(parser)
        rows = split_statistics(cache.datasets(datalist, modalities=parser["modalities"]))
        if out:
            save_json(rows, out)
        return format_statistics(rows)

    def bench(self, out: str = "bench_out/bench.json", quick: bool = False, only: Sequence[str] | None = None,
              data_dir: str | None = None) -> str:
        """Run the project's benchmarks, write them to OUT as JSON and print a table. ONLY: section names (e.g.
        realsize); DATA_DIR: a real dataset folder for the realsize section (default: synthetic subjects)."""
        from medadv_monai.bench import format_bench, run_benchmarks

        _file_out(out, "bench.json")
        trust_note([bundles_dir()])
        return format_bench(run_benchmarks(out, quick=quick, only=only, data_dir=data_dir))

    def demo(self, out: str = "demo_out", dataset_dir: str | None = None, redo: bool = False,
             verbose: bool = False) -> str:
        """Run every stage on synthetic data (or DATASET_DIR, a BraTS 2021 folder) and write OUT/report.md.

        Finished steps are reused on a second run unless --redo; --verbose shows the bundles' logs.
        """
        from medadv_monai.demo import run_demo

        trust_note([bundles_dir()])
        return str(run_demo(out, dataset_dir=dataset_dir, redo=redo, verbose=verbose))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medadv`` console command; returns the exit status (see the module docstring)."""
    import fire

    args = list(sys.argv[1:] if argv is None else argv)
    head = args[: args.index("--")] if "--" in args else args
    debug = "--debug" in head or debug_enabled()
    args = [a for a in head if a != "--debug"] + args[len(head):]
    if "--" not in args and ({"--help", "-h"} & set(args)):
        # `cache` and `stats` take any --key as a config override, so fire would read --help as one
        args = [a for a in args if a not in ("--help", "-h")] + ["--", "--help"]
    try:
        fire.Fire(Commands, command=args, name="medadv")  # prints results
    except Exception as e:  # noqa: BLE001 - failures the user or machine caused become one line; bugs keep tracebacks
        line = None if debug else describe_failure(e)
        if line is None:
            raise
        close_progress_bars()
        print(f"medadv: error: {line}", file=sys.stderr)
        return 2
    except SystemExit as e:  # fire exits on usage errors
        return int(e.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

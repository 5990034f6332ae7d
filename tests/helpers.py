"""Helpers shared by the test modules (no test module imports another): paths, bundle copies, bundle runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
CLASSIFIER_BUNDLE = BUNDLES / "brats_slice_classifier"
ADVGAN_BUNDLE = BUNDLES / "brats_advgan"
ATTACK_EVAL_BUNDLE = BUNDLES / "brats_attack_eval"
CLASSIFIER_TRAIN = CLASSIFIER_BUNDLE / "configs" / "train.yaml"
REAL_SAMPLE = Path(os.environ.get("MEDADV_REAL_SAMPLE", REPO.parent / "shared" / "data" / "real_sample"))


def bundle_copy(src: Path, dst: Path) -> Path:
    """A copy of a bundle (configs and docs only, no models/eval/work) so runs write nothing into the repository."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("models", "eval", "work"))
    return dst


def workflow(bundle: Path, files: list[str], workflow_type: str, **kwargs: Any):
    """A MONAI ``ConfigWorkflow`` of ``bundle``'s config ``files`` (merged in order), rooted at the bundle."""
    from monai.bundle import ConfigWorkflow

    return ConfigWorkflow(
        config_file=[str(bundle / "configs" / f) for f in files],
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(bundle),
        **kwargs,
    )


def bundle_cmd(bundle: Path, configs: list[str], **overrides: Any) -> list[str]:
    """The ``python -m monai.bundle run`` command line of ``bundle``'s ``configs`` with ``--id value`` overrides."""
    files = "[" + ",".join(f"'{bundle / 'configs' / c}'" for c in configs) + "]"
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, "--bundle_root", str(bundle)]
    for key, value in overrides.items():
        args += [f"--{key}", value if isinstance(value, str) else repr(value)]
    return args


def run(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a command with this checkout on ``PYTHONPATH``; the caller checks the outcome."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def run_cli(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m <args>`` that must succeed."""
    proc = run([sys.executable, "-m", *args], cwd, timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def classifier_config(dataset_dir: Path, work_dir: Path, **overrides: Any):
    """The classifier bundle's config pointed at ``dataset_dir``, writing under ``work_dir``, 32x32 slices."""
    from medadv_monai.bundle import load_bundle_config

    settings = {"dataset_dir": str(dataset_dir), "work_dir": str(work_dir), "image_size": [32, 32]}
    settings.update(overrides)
    return load_bundle_config(CLASSIFIER_TRAIN, **settings)


def copy_subjects(src: Path, dst: Path, n: int | None = None) -> Path:
    """Copy the first ``n`` subject folders of a dataset (all without ``n``), to damage or extend them."""
    dst.mkdir(parents=True)
    for d in sorted(p for p in src.iterdir() if p.is_dir())[:n]:
        shutil.copytree(d, dst / d.name)
    return dst


def build_cache(parser: Any):
    """Build the slice cache of a config; an input error is re-raised as itself (MONAI's config wraps it)."""
    from medadv_monai.errors import find_input_error

    try:
        cache, datalist = parser.get_parsed_content("slice_cache"), parser.get_parsed_content("datalist")
        cache.build([i for items in datalist.values() for i in items])
    except RuntimeError as e:
        raise find_input_error(e) or e
    return cache, datalist


def start_until(args: list[str], cwd: Path, marker: Path, timeout: float = 240) -> subprocess.Popen:
    """Start a command (this checkout on ``PYTHONPATH``) and wait until it creates ``marker`` (it pauses there)."""
    proc = subprocess.Popen(args, cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not marker.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"{args[:6]} ended or timed out before creating {marker}")
        time.sleep(0.2)
    return proc


#: Task01_BrainTumour's channel order and names, and its labels from BraTS 2021's (1 NCR -> 2, 2 ED -> 1, 4 ET -> 3)
MSD_CHANNELS = ("flair", "t1", "t1ce", "t2")
MSD_MODALITY = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
MSD_LABELS = {0: 0, 1: 2, 2: 1, 4: 3}


def make_msd(src: Path, dst: Path, n: int | None = None, modality: dict | None = MSD_MODALITY) -> Path:
    """An MSD Task01-layout copy of a BraTS 2021-layout dataset: 4D ``imagesTr`` (channels in MSD order), MSD labels
    in ``labelsTr``, a ``dataset.json`` (with ``modality`` unless it is None) and one unlabelled image in
    ``imagesTs``."""
    import json

    import nibabel as nib
    import numpy as np

    (dst / "imagesTr").mkdir(parents=True)
    (dst / "labelsTr").mkdir()
    (dst / "imagesTs").mkdir()
    training = []
    subjects = sorted(p for p in src.iterdir() if p.is_dir())[:n]
    for i, d in enumerate(subjects, 1):
        vols = [nib.load(d / f"{d.name}_{m}.nii.gz") for m in MSD_CHANNELS]
        image = np.stack([np.asarray(v.dataobj) for v in vols], axis=-1)
        seg = nib.load(d / f"{d.name}_seg.nii.gz")
        labels = np.vectorize(MSD_LABELS.get)(np.asarray(seg.dataobj)).astype(np.uint8)
        name = f"BRATS_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image, vols[0].affine), dst / "imagesTr" / name)
        nib.save(nib.Nifti1Image(labels, seg.affine), dst / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    shutil.copy(dst / "imagesTr" / "BRATS_001.nii.gz", dst / "imagesTs" / "BRATS_900.nii.gz")
    meta = {"name": "BrainTumour", "tensorImageSize": "4D", "numTraining": len(training), "training": training,
            "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
            "test": ["./imagesTs/BRATS_900.nii.gz"]}
    if modality is not None:
        meta["modality"] = modality
    (dst / "dataset.json").write_text(json.dumps(meta, indent=1))
    return dst


def keep_modalities(src: Path, dst: Path, keep: tuple[str, ...], n: int | None = None) -> Path:
    """A copy of a BraTS 2021-layout dataset whose subjects have only the ``keep`` modalities and the seg."""
    dst.mkdir(parents=True)
    for d in sorted(p for p in src.iterdir() if p.is_dir())[:n]:
        (dst / d.name).mkdir()
        for key in (*keep, "seg"):
            shutil.copy(d / f"{d.name}_{key}.nii.gz", dst / d.name)
    return dst


def gen(seed: int = 0):
    """A CPU ``torch.Generator`` seeded with ``seed``."""
    import torch

    return torch.Generator().manual_seed(seed)


def brain(shape: tuple[int, ...], seed: int = 0):
    """A toy image: random intensities in [0.2, 0.8] inside a centred box, exactly 0 outside (the background)."""
    import torch

    x = torch.zeros(shape)
    inner = (slice(None), slice(None)) + tuple(slice(s // 4, s - s // 4) for s in shape[2:])
    x[inner] = 0.2 + 0.6 * torch.rand(x[inner].shape, generator=gen(seed))
    return x

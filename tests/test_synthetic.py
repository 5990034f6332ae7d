"""Tests for the seeded synthetic BraTS 2021 generator (tiny volumes, a few subjects: the file runs in seconds)."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medadv_monai.data.synthetic import MIN_BRAIN_INTENSITY, MODALITIES, synthetic_subject
from medadv_monai.data.synthetic_dataset import make_synthetic_brats
from medadv_monai.errors import MedAdvInputError

SHAPE = (32, 32, 24)
SUBJECTS = 6
KEYS = (*MODALITIES, "seg")


def _load(folder: Path) -> dict[str, np.ndarray]:
    return {key: np.asarray(nib.load(str(folder / f"{folder.name}_{key}.nii.gz")).dataobj) for key in KEYS}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], list[dict[str, np.ndarray]]]:
    root = tmp_path_factory.mktemp("synthetic") / "brats"
    folders = make_synthetic_brats(root, subjects=SUBJECTS, shape=SHAPE, seed=0)
    return root, folders, [_load(f) for f in folders]


def _brain(volumes: dict[str, np.ndarray]) -> np.ndarray:
    return np.any([volumes[m] != 0 for m in MODALITIES], axis=0)


# ------------------------------------------------------------------------------------------------------- layout
def test_layout_and_file_names(dataset):
    root, folders, _ = dataset
    names = [f"BraTS2021_{i:05d}" for i in range(SUBJECTS)]
    assert folders == [root / n for n in names]
    assert sorted(p.name for p in root.iterdir()) == [*names, "synthetic.stamp.json"]  # no temporary folders
    for folder in folders:
        assert sorted(p.name for p in folder.iterdir()) == sorted(f"{folder.name}_{k}.nii.gz" for k in KEYS)


def test_volumes_load_with_shape_dtype_and_affine(dataset):
    _, folders, _ = dataset
    for folder in folders:
        for key in KEYS:
            image = nib.load(str(folder / f"{folder.name}_{key}.nii.gz"))
            assert image.shape == SHAPE
            np.testing.assert_allclose(image.affine, np.eye(4))  # 1 mm isotropic
            dtype = np.asarray(image.dataobj).dtype
            if key == "seg":
                assert np.issubdtype(dtype, np.integer)
            else:
                assert dtype == np.float32


def test_seg_labels_are_brats_labels(dataset):
    _, _, volumes = dataset
    for v in volumes:
        assert set(np.unique(v["seg"]).tolist()) <= {0, 1, 2, 4}


# ------------------------------------------------------------------------------------------- background / brain
def test_background_is_exactly_zero_and_brain_positive(dataset):
    _, _, volumes = dataset
    for v in volumes:
        brain = _brain(v)
        assert 0.2 * brain.size < brain.sum() < 0.8 * brain.size
        for m in MODALITIES:
            assert v[m].dtype == np.float32 and np.isfinite(v[m]).all()
            assert np.all(v[m][~brain] == 0.0), m  # exactly zero outside the brain, in every modality
            assert v[m][brain].min() >= MIN_BRAIN_INTENSITY > 0.0, m  # no brain voxel is 0 or negative
        # a few empty axial slices at both ends; the brain tapers towards them
        per_slice = brain.sum(axis=(0, 1))
        assert per_slice[0] == 0 and per_slice[-1] == 0
        inner = np.flatnonzero(per_slice)
        assert per_slice[inner[0]] < 0.5 * per_slice.max() and per_slice[inner[-1]] < 0.5 * per_slice.max()


def test_seg_only_inside_brain(dataset):
    _, _, volumes = dataset
    for v in volumes:
        assert not np.any((v["seg"] > 0) & ~_brain(v))


def test_intensities_are_raw_units_not_normalised(dataset):
    _, _, volumes = dataset
    for v in volumes:
        for m in MODALITIES:
            brain_values = v[m][_brain(v)]
            assert 100.0 < np.median(brain_values) < 3000.0, m
    # a random global gain per subject: the same modality has different scales in different subjects
    medians = [float(np.median(v["t1"][_brain(v)])) for v in volumes]
    assert max(medians) / min(medians) > 1.05


# ------------------------------------------------------------------------------------------------------ contrasts
def _tumour_subjects(volumes):
    return [v for v in volumes if v["seg"].any()]


def test_tumour_contrasts(dataset):
    _, _, volumes = dataset
    checked = {"flair_ed": 0, "t2_ed": 0, "t1ce_et": 0}
    for v in _tumour_subjects(volumes):
        seg = v["seg"]
        normal = _brain(v) & (seg == 0)
        oedema, enhancing = seg == 2, seg == 4
        if oedema.any():
            assert v["flair"][oedema].mean() > v["flair"][normal].mean()
            assert v["t2"][oedema].mean() > v["t2"][normal].mean()
            checked["flair_ed"] += 1
            checked["t2_ed"] += 1
        if enhancing.any():
            assert v["t1ce"][enhancing].mean() > v["t1ce"][normal].mean()
            # the enhancement is a T1ce feature: on T1 the rim is not brighter than on T1ce, relative to normal
            ratio_t1ce = v["t1ce"][enhancing].mean() / v["t1ce"][normal].mean()
            ratio_t1 = v["t1"][enhancing].mean() / v["t1"][normal].mean()
            assert ratio_t1ce > ratio_t1
            checked["t1ce_et"] += 1
    assert all(n >= 1 for n in checked.values()), checked


def test_normal_tissue_contrasts_in_memory():
    """CSF is dark on T1 / FLAIR and bright on T2: the brightest T2 voxels are the darkest on T1 and FLAIR."""
    v = synthetic_subject(0, shape=(48, 48, 32), seed=0, tumour_fraction=0.0, noise=0.0, bias=0.0)
    brain = _brain(v)
    csf_like = brain & (v["t2"] > np.percentile(v["t2"][brain], 99))
    for m in ("t1", "flair"):
        assert v[m][csf_like].mean() < 0.6 * v[m][brain].mean(), m


# --------------------------------------------------------------------------------------------- tumour presence
def test_subjects_with_and_without_tumour(dataset):
    _, _, volumes = dataset
    flags = [bool(v["seg"].any()) for v in volumes]
    assert any(flags) and not all(flags)


def test_tumour_spans_only_part_of_the_brain_slices(dataset):
    _, _, volumes = dataset
    for v in _tumour_subjects(volumes):
        brain_slices = _brain(v).any(axis=(0, 1))
        tumour_slices = (v["seg"] > 0).any(axis=(0, 1))
        assert np.any(brain_slices & tumour_slices)
        assert np.any(brain_slices & ~tumour_slices)


@pytest.mark.parametrize("fraction, expected", [(0.0, False), (1.0, True)])
def test_tumour_fraction_extremes(tmp_path, fraction, expected):
    folders = make_synthetic_brats(tmp_path, subjects=3, shape=(16, 16, 12), tumour_fraction=fraction)
    assert [bool(_load(f)["seg"].any()) for f in folders] == [expected] * 3


@pytest.mark.parametrize("shape", [(8, 8, 8), (20, 12, 9), (33, 29, 17)])
def test_small_and_odd_shapes(shape):
    for index in range(3):
        v = synthetic_subject(index, shape=shape, seed=5, tumour_fraction=1.0)
        brain = _brain(v)
        assert brain.any() and v["seg"].any()
        assert all(v[m].shape == shape and np.all(v[m][~brain] == 0) for m in MODALITIES)
        assert not np.any((v["seg"] > 0) & ~brain)


# --------------------------------------------------------------------------------------------------- determinism
def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    for key in KEYS:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_same_seed_same_arrays(dataset, tmp_path):
    _, _, volumes = dataset
    again = make_synthetic_brats(tmp_path / "again", subjects=SUBJECTS, shape=SHAPE, seed=0)
    for folder, v in zip(again, volumes):
        _assert_same(_load(folder), v)


def test_prefix_of_a_larger_run(dataset, tmp_path):
    _, _, volumes = dataset
    smaller = make_synthetic_brats(tmp_path / "small", subjects=2, shape=SHAPE, seed=0)
    assert len(smaller) == 2
    for folder, v in zip(smaller, volumes):
        _assert_same(_load(folder), v)


def test_in_memory_subject_matches_files(dataset):
    _, _, volumes = dataset
    _assert_same(synthetic_subject(3, shape=SHAPE, seed=0), volumes[3])


def test_different_seed_differs(dataset, tmp_path):
    _, _, volumes = dataset
    other = make_synthetic_brats(tmp_path / "other", subjects=2, shape=SHAPE, seed=1)
    for folder, v in zip(other, volumes):
        assert not np.array_equal(_load(folder)["t1"], v["t1"])


# ------------------------------------------------------------------------------------------- atomic, idempotent
def _set_old_mtimes(root: Path) -> dict[Path, int]:
    old = 1_000_000_000
    for path in root.rglob("*.nii.gz"):
        os.utime(path, (old, old))
    return {path: path.stat().st_mtime_ns for path in root.rglob("*.nii.gz")}


def test_second_call_skips_existing_subjects(tmp_path):
    root = tmp_path / "brats"
    make_synthetic_brats(root, subjects=2, shape=(16, 16, 12))
    before = _set_old_mtimes(root)
    assert len(before) == 10
    folders = make_synthetic_brats(root, subjects=2, shape=(16, 16, 12))
    assert len(folders) == 2
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.nii.gz")} == before
    assert not list(root.rglob("*.tmp")) and not [p for p in root.rglob(".*")]


def test_overwrite_rewrites_subjects(tmp_path):
    root = tmp_path / "brats"
    folders = make_synthetic_brats(root, subjects=2, shape=(16, 16, 12))
    original = _load(folders[0])
    before = _set_old_mtimes(root)
    make_synthetic_brats(root, subjects=2, shape=(16, 16, 12), overwrite=True)
    after = {p: p.stat().st_mtime_ns for p in root.rglob("*.nii.gz")}
    assert after.keys() == before.keys()
    assert all(after[p] != before[p] for p in before)
    _assert_same(_load(folders[0]), original)
    assert not list(root.rglob("*.tmp")) and not [p for p in root.rglob(".*")]


def test_incomplete_subject_is_regenerated(tmp_path):
    root = tmp_path / "brats"
    folders = make_synthetic_brats(root, subjects=2, shape=(16, 16, 12))
    original = _load(folders[1])
    (folders[1] / f"{folders[1].name}_flair.nii.gz").unlink()
    (folders[1] / "stray.txt").write_text("left over")
    before = _set_old_mtimes(root)
    make_synthetic_brats(root, subjects=2, shape=(16, 16, 12))
    for path, mtime in before.items():
        changed = path.stat().st_mtime_ns != mtime
        assert changed == (path.parent == folders[1]), path
    assert not (folders[1] / "stray.txt").exists()  # the folder was replaced whole
    _assert_same(_load(folders[1]), original)


# --------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"subjects": 0}, "subjects"),
        ({"subjects": 2.5}, "subjects"),
        ({"subjects": True}, "subjects"),
        ({"shape": (32, 32)}, "shape"),
        ({"shape": (32, 32, 24, 1)}, "shape"),
        ({"shape": (32, 32, 4)}, "shape"),
        ({"shape": (32, -32, 24)}, "shape"),
        ({"shape": (32.0, 32, 24)}, "shape"),
        ({"shape": "abc"}, "shape"),
        ({"seed": -1}, "seed"),
        ({"tumour_fraction": 1.5}, "tumour_fraction"),
        ({"tumour_fraction": -0.1}, "tumour_fraction"),
        ({"tumour_fraction": float("nan")}, "tumour_fraction"),
        ({"noise": -0.01}, "noise"),
        ({"noise": "low"}, "noise"),
        ({"bias": -1.0}, "bias"),
        ({"bias": float("inf")}, "bias"),
    ],
)
def test_bad_arguments_raise(tmp_path, kwargs, name):
    root = tmp_path / "brats"
    with pytest.raises(MedAdvInputError) as info:
        make_synthetic_brats(root, **{"subjects": 1, "shape": (16, 16, 12), **kwargs})
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert f"{name}=" in message and "expected" in message
    assert not root.exists()  # nothing written

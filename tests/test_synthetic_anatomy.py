"""Tests for the anatomical synthetic BraTS generator (MNI152 template; default grid, a few subjects: seconds)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medadv_monai.data import find_subjects
from medadv_monai.data.synthetic import MIN_BRAIN_INTENSITY, MODALITIES
from medadv_monai.data.synthetic_anatomy import (
    ANATOMY_DEFAULT_SHAPE,
    anatomical_subject,
    make_anatomical_brats,
    voxel_size,
)
from medadv_monai.errors import MedAdvInputError

SHAPE = ANATOMY_DEFAULT_SHAPE
# same voxel size as SHAPE (the z axis sets it), so the filtered template is reused
OTHER_SHAPE = (100, 90, 64)


@pytest.fixture(scope="module")
def subject() -> dict[str, np.ndarray]:
    return anatomical_subject(0, 1, SHAPE, tumour=True, with_tissue=True)


@pytest.fixture(scope="module")
def healthy() -> dict[str, np.ndarray]:
    return anatomical_subject(0, 1, SHAPE, tumour=False, with_tissue=True)


def _median(volume: np.ndarray, mask: np.ndarray) -> float:
    assert mask.sum() >= 50, "too few voxels for a median"
    return float(np.median(volume[mask]))


def _tissue(v: dict[str, np.ndarray], name: str) -> np.ndarray:
    """Voxels that are mostly ``name`` (fraction > 0.8) and not tumour."""
    return (v[name] > 0.8) & (v["seg"] == 0)


# ----------------------------------------------------------------------------------------------------- contrast
def test_tissue_orderings(subject):
    med = {m: {t: _median(subject[m], _tissue(subject, t)) for t in ("wm", "gm", "csf")} for m in MODALITIES}
    assert med["t1"]["wm"] > med["t1"]["gm"] > med["t1"]["csf"]
    assert med["t1ce"]["wm"] > med["t1ce"]["gm"] > med["t1ce"]["csf"]
    assert med["t2"]["csf"] > med["t2"]["gm"] > med["t2"]["wm"]
    assert med["flair"]["gm"] > med["flair"]["wm"] > med["flair"]["csf"]
    assert med["flair"]["csf"] < 0.6 * med["flair"]["wm"]  # CSF suppressed


def test_tumour_contrasts(subject, healthy):
    seg = subject["seg"]
    oedema, rim, necrosis = seg == 2, seg == 4, seg == 1
    wm = _tissue(subject, "wm")
    assert _median(subject["flair"], oedema) > 1.2 * _median(subject["flair"], wm)
    assert _median(subject["t2"], oedema) > _median(subject["t2"], wm)
    assert _median(subject["t1"], oedema | rim | necrosis) < _median(subject["t1"], wm)
    # T1ce enhances the rim: brighter than T1 there, relative to each one's WM
    t1ce_rim = _median(subject["t1ce"], rim) / _median(subject["t1ce"], wm)
    t1_rim = _median(subject["t1"], rim) / _median(subject["t1"], wm)
    assert t1ce_rim > t1_rim + 0.15
    assert _median(subject["t1ce"], rim) > _median(subject["t1ce"], necrosis)
    assert _median(subject["t2"], necrosis) > _median(subject["t2"], wm)
    # the same brain without tumour: the rim region is not enhanced, and voxels away from the tumour are identical
    assert _median(healthy["t1ce"], rim) < _median(subject["t1ce"], rim)
    away = ~ndimage.binary_dilation(seg > 0, np.ones((3, 3, 3), bool), iterations=3)  # partial volume reach
    for m in MODALITIES:
        assert np.array_equal(healthy[m][away], subject[m][away]), m


# -------------------------------------------------------------------------------------------------------- labels
def test_labels(subject, healthy):
    assert subject["seg"].dtype == np.uint8
    assert set(np.unique(subject["seg"]).tolist()) == {0, 1, 2, 4}
    assert set(np.unique(healthy["seg"]).tolist()) == {0}
    for index in range(2, 8):  # every tumour subject has all three labels, on some slices only
        seg = anatomical_subject(5, index, SHAPE)["seg"]
        assert set(np.unique(seg).tolist()) == {0, 1, 2, 4}
        brain_slices = (anatomical_subject(5, index, SHAPE, tumour=False)["t1"] > 0).any(axis=(0, 1))
        assert ((seg > 0).any(axis=(0, 1)) < brain_slices).any(), "expected tumour-free brain slices"


def test_background_and_values(subject):
    brain = subject["t1"] > 0
    assert 0.1 < brain.mean() < 0.5
    for m in MODALITIES:
        v = subject[m]
        assert v.dtype == np.float32 and v.shape == SHAPE
        assert np.isfinite(v).all()
        assert np.array_equal(v > 0, brain), f"{m}: brain mask differs"
        assert (v[brain] >= MIN_BRAIN_INTENSITY).all()
        assert 100 < np.percentile(v[brain], 99) < 3000  # raw MRI-like units
    assert not subject["seg"][~brain].any()
    for t in ("gm", "wm", "csf"):
        assert not subject[t][~brain].any()
    np.testing.assert_allclose((subject["gm"] + subject["wm"] + subject["csf"])[brain], 1.0, atol=1e-5)


# --------------------------------------------------------------------------------------------------- determinism
def test_determinism(subject):
    again = anatomical_subject(0, 1, SHAPE, tumour=True, with_tissue=True)
    for key, value in subject.items():
        assert np.array_equal(value, again[key]), key
    other_seed = anatomical_subject(1, 1, SHAPE)
    other_index = anatomical_subject(0, 2, SHAPE)
    for other in (other_seed, other_index):
        assert not np.array_equal(other["t1"], subject["t1"])
        assert not np.array_equal(other["seg"], subject["seg"])


def test_shape_option():
    assert voxel_size((240, 240, 155)) == 1.0  # the BraTS grid is 1 mm
    assert voxel_size(OTHER_SHAPE) == voxel_size(SHAPE) > 1.0
    v = anatomical_subject(0, 0, OTHER_SHAPE)
    assert all(v[k].shape == OTHER_SHAPE for k in (*MODALITIES, "seg"))
    assert set(np.unique(v["seg"]).tolist()) == {0, 1, 2, 4}


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"shape": (8, 96, 64)}, "shape"),
        ({"shape": (96, 96)}, "shape"),
        ({"index": -1}, "index"),
        ({"seed": -3}, "seed"),
        ({"noise": -0.1}, "noise"),
        ({"bias": float("nan")}, "bias"),
    ],
)
def test_bad_arguments(kwargs, name):
    args = {"seed": 0, "index": 0, "shape": SHAPE, **kwargs}
    with pytest.raises(MedAdvInputError, match=rf"anatomical_subject: {name}="):
        anatomical_subject(**args)


# --------------------------------------------------------------------------------------------------------- writer
def test_dataset_writer(tmp_path: Path):
    root = tmp_path / "brats"
    folders = make_anatomical_brats(root, subjects=2, shape=SHAPE, seed=0, tumour_fraction=0.5)
    assert [f.name for f in folders] == ["BraTS2021_00000", "BraTS2021_00001"]
    entries = find_subjects(root)
    assert [Path(e["seg"]).parent for e in entries] == folders
    segs = []
    for folder in folders:
        for key in (*MODALITIES, "seg"):
            image = nib.load(str(folder / f"{folder.name}_{key}.nii.gz"))
            assert image.shape == SHAPE
            np.testing.assert_allclose(image.header.get_zooms(), [voxel_size(SHAPE)] * 3, rtol=1e-6)
            assert nib.aff2axcodes(image.affine) == ("L", "P", "S")  # as BraTS
        segs.append(np.asarray(nib.load(str(folder / f"{folder.name}_seg.nii.gz")).dataobj))
    assert sorted(bool(s.any()) for s in segs) == [False, True]  # one subject with and one without a tumour
    # complete folders are left alone; overwrite regenerates them identically
    stamp = (folders[0] / "BraTS2021_00000_t1.nii.gz").stat().st_mtime_ns
    make_anatomical_brats(root, subjects=2, shape=SHAPE, seed=0, tumour_fraction=0.5)
    assert (folders[0] / "BraTS2021_00000_t1.nii.gz").stat().st_mtime_ns == stamp
    make_anatomical_brats(root, subjects=2, shape=SHAPE, seed=0, tumour_fraction=0.5, overwrite=True)
    again = np.asarray(nib.load(str(folders[1] / "BraTS2021_00001_seg.nii.gz")).dataobj)
    assert np.array_equal(again, segs[1])
    assert not list(root.glob(".*.tmp"))


def test_writer_rejects_a_file(tmp_path: Path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(MedAdvInputError, match="is a file"):
        make_anatomical_brats(target, subjects=1, shape=SHAPE)
    with pytest.raises(MedAdvInputError, match="make_anatomical_brats: tumour_fraction="):
        make_anatomical_brats(tmp_path / "new", subjects=1, shape=SHAPE, tumour_fraction=1.5)


def test_cli_writes_either_kind_and_refuses_another(tmp_path: Path, capsys):
    from medadv_monai.cli import main

    assert main(["synth", "--out", str(tmp_path / "a"), "--kind", "anatomical", "--subjects", "2",
                 "--shape", "[24,24,20]"]) == 0
    assert "2 synthetic subjects (anatomical)" in capsys.readouterr().out
    assert len(find_subjects(tmp_path / "a")) == 2
    assert main(["synth", "--out", str(tmp_path / "b"), "--kind", "phantom", "--subjects", "2"]) == 2
    assert "kind: expected one of ['geometric', 'anatomical'], got 'phantom'" in capsys.readouterr().err


def test_figure_shows_a_synthetic_subject_beside_a_real_one(synth_dir: Path, tmp_path: Path):
    from matplotlib.image import imread

    from medadv_monai.cli import main

    real = sorted(synth_dir.iterdir())[0]  # any subject folder with BraTS names stands in for a real one
    out = tmp_path / "fig" / "synthetic_vs_real.png"
    assert main(["figure", "--out", str(out), "--real", str(real), "--shape", "[48,48,32]"]) == 0
    image = imread(out)
    assert image.shape[0] > 300 and image.shape[1] > 4 * 150  # two rows of four modalities
    assert main(["figure", "--out", str(tmp_path / "x.png"), "--real", str(tmp_path)]) == 2


def test_a_dataset_folder_is_reused_only_for_the_generator_and_settings_that_made_it(tmp_path: Path):
    from medadv_monai.data import make_synthetic_brats

    root = tmp_path / "data"
    make_synthetic_brats(root, subjects=2, shape=(16, 16, 12))
    t1 = root / "BraTS2021_00000" / "BraTS2021_00000_t1.nii.gz"
    geometric = nib.load(t1).get_fdata()
    make_synthetic_brats(root, subjects=2, shape=(16, 16, 12))  # the same: left alone
    np.testing.assert_array_equal(nib.load(t1).get_fdata(), geometric)
    make_anatomical_brats(root, subjects=2, shape=SHAPE)  # another generator: written again
    assert nib.load(t1).shape == tuple(SHAPE)
    make_synthetic_brats(root, subjects=2, shape=(16, 16, 12), seed=1)  # another seed: written again
    again = nib.load(t1).get_fdata()
    assert again.shape == (16, 16, 12) and not np.array_equal(again, geometric)

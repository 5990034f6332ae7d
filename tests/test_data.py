"""Data layer: datalists, the slice chain, the slice cache and statistics."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medadv_monai.data import (
    RobustScaleIntensity,
    build_datalist,
    find_subjects,
    load_datalist,
    split_statistics,
    split_subjects,
)
from medadv_monai.errors import MedAdvInputError
from tests.helpers import REAL_SAMPLE, build_cache, classifier_config, copy_subjects

MODS = ("t1", "t1ce", "t2", "flair")


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------------------- datalists
def test_datalist_brats2021(synth_dir, tmp_path):
    out = tmp_path / "dl.json"
    dl = build_datalist(synth_dir, out=out, layout="brats2021", seed=3)
    assert load_datalist(out) == dl
    entries = [e for items in dl.values() for e in items]
    assert sorted(e["subject"] for e in entries) == sorted(p.name for p in synth_dir.iterdir() if p.is_dir())
    for e in entries:
        for key in (*MODS, "seg"):
            assert Path(e[key]).name == f"{e['subject']}_{key}.nii.gz"
    assert [len(dl[k]) for k in ("training", "validation", "test")] == [6, 1, 1]


def test_datalist_brats2023_names_auto(synth_dir, tmp_path):
    names = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}
    root = tmp_path / "brats2023"
    for d in sorted(synth_dir.iterdir())[:3]:
        sid = d.name.replace("BraTS2021_", "BraTS-GLI-")
        (root / sid).mkdir(parents=True)
        for key, new in names.items():
            shutil.copy(d / f"{d.name}_{key}.nii.gz", root / sid / f"{sid}-{new}.nii.gz")
    for aliases in ("auto", "brats2023"):
        entries = find_subjects(root, layout=aliases)
        assert len(entries) == 3
        assert all(Path(e["flair"]).name.endswith("-t2f.nii.gz") for e in entries)


REAL_ALIASES = {
    "t1": ["{subject}_t1_bet.nii.gz"],
    "t1ce": ["{subject}_t1c_bet.nii.gz"],
    "t2": ["{subject}_t2_bet.nii.gz"],
    "flair": ["{subject}_fla_bet.nii.gz"],
    "seg": ["fusion/simple.nii.gz"],
}


@pytest.mark.skipif(not REAL_SAMPLE.is_dir(), reason="shared/data/real_sample is not beside this checkout")
def test_real_sample_loads_with_aliases_only(tmp_path):
    import yaml

    table = tmp_path / "aliases.yaml"
    table.write_text(yaml.safe_dump(REAL_ALIASES))
    (entry,) = find_subjects(REAL_SAMPLE, layout=str(table))
    assert entry["subject"] == "TCGA-DU-7294" and entry["seg"].endswith("fusion/simple.nii.gz")
    with pytest.raises(MedAdvInputError, match="no file for 't1'"):
        find_subjects(REAL_SAMPLE)  # BraTS names do not match: the aliases are needed
    # the whole slice chain runs on it: 240x240x155 raw intensities -> scaled, labelled slices
    parser = classifier_config(REAL_SAMPLE, tmp_path / "work", layout=REAL_ALIASES, image_size=[64, 64])
    cache = parser.get_parsed_content("slice_cache")
    arrays = cache.run_chain(entry)
    seg = np.asarray(nib.load(entry["seg"]).dataobj)
    tumour_z = set(np.nonzero(seg.reshape(-1, seg.shape[-1]).any(axis=0))[0].tolist())
    kept = arrays["slice_index"]
    assert {z for z, lab in zip(kept, arrays["label"]) if lab} == tumour_z & set(kept)
    assert len(tumour_z) >= 30
    assert arrays["images"].min() == 0.0 and 0.99 < arrays["images"].max() <= 1.0


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 60), seed=st.integers(0, 10_000))
def test_split_is_by_subject(n, seed):
    ids = [f"s{i:03d}" for i in range(n)]
    split = split_subjects(ids, seed=seed)
    flat = [s for part in split.values() for s in part]
    assert sorted(flat) == ids and len(set(flat)) == n  # every subject exactly once
    if n >= 3:
        assert all(split[k] for k in split)  # every split gets a subject
    else:
        assert split["training"] == ids
    assert split == split_subjects(ids, seed=seed)


def test_split_fractions_validated():
    with pytest.raises(MedAdvInputError, match="summing to 1"):
        split_subjects(["a", "b", "c"], fractions=(0.5, 0.5, 0.5))


# ------------------------------------------------------------------------------------------------- chain
def test_scaling_brain_in_unit_range_background_zero(synth_dir):
    vol = nib.load(next(synth_dir.glob("*/*_flair.nii.gz"))).get_fdata().astype(np.float32)
    x = torch.from_numpy(vol)[None]
    y = RobustScaleIntensity(1, 99)(x)
    bg = x == 0
    assert torch.equal(y[bg], torch.zeros_like(y[bg]))
    assert float(y.min()) == 0.0 and float(y.max()) == 1.0
    lo, hi = np.percentile(vol[vol != 0], [1, 99])
    inside = (x > lo) & (x < hi)
    expected = (x[inside] - lo) / (hi - lo)
    assert torch.allclose(y[inside], expected.float(), atol=1e-5)
    assert 0.005 < (y[~bg] == 1).float().mean() < 0.03  # ~1% of brain voxels saturate at the top


def test_slice_labels_agree_with_seg(synth_config):
    cache, datalist = synth_config.get_parsed_content("slice_cache"), synth_config.get_parsed_content("datalist")
    checked_pos = 0
    for entry in datalist["training"]:
        seg = np.asarray(nib.load(entry["seg"]).dataobj)
        tumour_z = {int(z) for z in np.nonzero(seg.reshape(-1, seg.shape[-1]).any(axis=0))[0]}
        ds = cache.dataset([entry], modalities=["t2"], build=False)
        for i in range(len(ds)):
            item = ds[i]
            assert bool(item["label"].item()) == (item["slice_index"] in tumour_z)
            assert bool(item["label"].item()) == bool(item["mask"].any())
            checked_pos += int(item["label"].item())
    assert checked_pos > 0


def test_background_slices_dropped(synth_config):
    cache, datalist = synth_config.get_parsed_content("slice_cache"), synth_config.get_parsed_content("datalist")
    entry = datalist["training"][0]
    t1 = np.asarray(nib.load(entry["t1"]).dataobj)
    brain_z = [z for z in range(t1.shape[-1]) if (t1[..., z] != 0).mean() >= 0.001]
    ds = cache.dataset([entry], modalities=["t1"], build=False)
    assert [ds[i]["slice_index"] for i in range(len(ds))] == brain_z
    assert len(brain_z) < t1.shape[-1]  # the synthetic volume has empty slices at both ends


def test_per_subject_caps(synth_dir, tmp_path):
    parser = classifier_config(synth_dir, tmp_path, max_positive_per_subject=2, max_negative_per_subject=3)
    cache = parser.get_parsed_content("slice_cache")
    entry = parser.get_parsed_content("datalist")["training"][0]
    first, again = cache.run_chain(entry), cache.run_chain(entry)
    assert first["slice_index"] == again["slice_index"] == sorted(first["slice_index"])
    assert sum(first["label"]) <= 2 and len(first["label"]) - sum(first["label"]) <= 3


# ------------------------------------------------------------------------------------------------- cache
def test_cache_round_trips_exactly(synth_config):
    cache, datalist = synth_config.get_parsed_content("slice_cache"), synth_config.get_parsed_content("datalist")
    entry = datalist["validation"][0]
    fresh = cache.run_chain(entry)
    ds = cache.dataset([entry], modalities=["t1", "t1ce", "t2", "flair"], build=False)
    assert len(ds) == len(fresh["label"]) > 0
    for i in range(len(ds)):
        item = ds[i]
        np.testing.assert_array_equal(item["image"].numpy(), fresh["images"][i])
        np.testing.assert_array_equal(item["mask"].numpy(), fresh["mask"][i].astype(np.float32))
        assert item["label"].item() == fresh["label"][i]
        assert item["slice_index"] == fresh["slice_index"][i]
    # a modality subset is a channel view of the same cache, no rebuild
    sub = cache.dataset([entry], modalities=["flair", "t1ce"], build=False)
    np.testing.assert_array_equal(sub[0]["image"].numpy(), fresh["images"][0][[3, 1]])


def test_cache_rebuilds_when_a_shaping_setting_changes(synth_dir, synth_config, tmp_path):
    base = synth_config.get_parsed_content("slice_cache")
    work = synth_config["work_dir"]
    same = classifier_config(synth_dir, work).get_parsed_content("slice_cache")
    assert same.path == base.path
    for override in ({"image_size": [24, 24]}, {"region": "ET"}, {"foreground": "above_min"}, {"empty_threshold": 0.2},
                     {"reader": "ITKReader"}, {"max_positive_per_subject": 1}):
        changed = classifier_config(synth_dir, work, **override).get_parsed_content("slice_cache")
        assert changed.path != base.path, override
    # a modality choice does not shape the cache
    assert classifier_config(synth_dir, work, modalities=["t1ce"]).get_parsed_content("slice_cache").path == base.path


def test_cache_reuses_and_rebuilds_changed_subject(synth_dir, tmp_path):
    data = copy_subjects(synth_dir, tmp_path / "data", n=4)
    parser = classifier_config(data, tmp_path / "work", split_fractions=[1.0, 0.0, 0.0])
    cache, datalist = parser.get_parsed_content("slice_cache"), parser.get_parsed_content("datalist")
    items = datalist["training"]
    assert cache.build(items)["subjects_built"] == 4
    assert cache.build(items)["subjects_built"] == 0
    touched = Path(items[0]["t2"])
    img = nib.load(touched)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 2, img.affine), touched)
    assert cache.missing(items) == [items[0]]
    assert cache.build(items)["subjects_built"] == 1


def test_itk_reader_gives_the_same_slices(synth_dir, tmp_path):
    entry = find_subjects(synth_dir)[0]
    nib_cache = classifier_config(synth_dir, tmp_path).get_parsed_content("slice_cache")
    itk_cache = classifier_config(synth_dir, tmp_path, reader="ITKReader").get_parsed_content("slice_cache")
    a, b = nib_cache.run_chain(entry), itk_cache.run_chain(entry)
    assert a["slice_index"] == b["slice_index"] and a["label"] == b["label"]
    np.testing.assert_allclose(a["images"], b["images"], atol=1e-5)


def test_statistics(synth_config):
    cache, datalist = synth_config.get_parsed_content("slice_cache"), synth_config.get_parsed_content("datalist")
    rows = split_statistics(cache.datasets(datalist, modalities=["t2"]))
    assert rows["total"]["subjects"] == 8
    for name in ("training", "validation", "test"):
        r = rows[name]
        assert r["slices"] == r["positive"] + r["negative"] > 0
    assert rows["total"]["positive"] > 0 and rows["total"]["negative"] > 0


def test_unknown_modality_is_an_error(synth_config):
    cache, datalist = synth_config.get_parsed_content("slice_cache"), synth_config.get_parsed_content("datalist")
    with pytest.raises(MedAdvInputError, match=r"unknown \['t1c'\]"):
        cache.dataset(datalist["training"], modalities=["t1c"], build=False)


# ------------------------------------------------------------------------------------------------- bad input
def _damage(kind: str, subject: Path) -> Path:
    """Damage one file of ``subject`` and return it."""
    sid = subject.name
    if kind == "missing_modality":
        victim = subject / f"{sid}_t1ce.nii.gz"
        victim.unlink()
        return victim
    victim = subject / f"{sid}_{'seg' if kind == 'seg_labels' else 't2'}.nii.gz"
    img = nib.load(victim)
    arr = np.asarray(img.dataobj).copy()
    if kind == "truncated":
        raw = victim.read_bytes()
        victim.write_bytes(raw[: len(raw) // 2])
        return victim
    if kind == "not_nifti":
        victim.write_bytes(gzip.compress(b"this is not an image"))
        return victim
    if kind == "shape":
        arr = arr[:-2]
    elif kind == "nan":
        arr = arr.astype(np.float32)
        arr[arr.shape[0] // 2, arr.shape[1] // 2, arr.shape[2] // 2] = np.nan
    elif kind == "inf":
        arr = arr.astype(np.float32)
        arr[arr.shape[0] // 2, arr.shape[1] // 2, arr.shape[2] // 2] = np.inf
    elif kind == "all_zero":
        arr = np.zeros_like(arr)
    elif kind == "seg_labels":
        arr[arr.shape[0] // 2, arr.shape[1] // 2, arr.shape[2] // 2] = 3
    nib.save(nib.Nifti1Image(arr, img.affine), victim)
    return victim


BAD_INPUT = {
    "missing_modality": "no file for 't1ce'",
    "truncated": "cannot read 't2'",
    "not_nifti": "cannot read 't2'",
    "shape": "has shape",
    "nan": "NaN or Inf",
    "inf": "NaN or Inf",
    "all_zero": "all zero",
    "seg_labels": r"labels \[3\] are outside the brats2021 label convention \[0, 1, 2, 4\]",
}


@pytest.mark.parametrize("kind", list(BAD_INPUT))
def test_bad_input_names_the_file_and_writes_nothing(kind, synth_dir, tmp_path):
    data = copy_subjects(synth_dir, tmp_path / "data", n=3)
    bad_subject = sorted(data.iterdir())[1]
    victim = _damage(kind, bad_subject)
    work = tmp_path / "work"
    parser = classifier_config(data, work, split_fractions=[1.0, 0.0, 0.0])
    with pytest.raises(MedAdvInputError, match=BAD_INPUT[kind]) as err:
        build_cache(parser)
    message = str(err.value)
    assert str(victim) in message or bad_subject.name in message
    shards = [p for p in (work / "slice_cache").glob("*/*") if p.is_dir()]
    assert not any(p.name.startswith(bad_subject.name) for p in shards)  # no shard for the bad subject
    assert not _leftovers(work)
    if kind == "missing_modality":
        assert not (work / "datalist.json").exists()  # the datalist is not written half-way either


def test_empty_or_missing_dataset_dir(tmp_path):
    with pytest.raises(MedAdvInputError, match="does not exist"):
        build_datalist(tmp_path / "nope", out=tmp_path / "dl.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedAdvInputError, match="holds no subject folders"):
        build_datalist(tmp_path / "empty", out=tmp_path / "dl.json")
    assert not (tmp_path / "dl.json").exists()


def test_layout_errors(synth_dir, tmp_path):
    with pytest.raises(MedAdvInputError, match="'brats2019' is neither one of"):
        find_subjects(synth_dir, layout="brats2019")
    renamed = {("t1gd" if k == "t1ce" else k): v for k, v in REAL_ALIASES.items()}
    with pytest.raises(MedAdvInputError, match=r"no pattern for \['t1ce'\] \(it names \['t1', 't1gd',"):
        find_subjects(synth_dir, layout=renamed)
    with pytest.raises(MedAdvInputError, match=r"no pattern for \['seg'\]"):
        find_subjects(synth_dir, layout={k: v for k, v in REAL_ALIASES.items() if k != "seg"})
    with pytest.raises(MedAdvInputError, match=r"layout 'brats2021' has no pattern for \['dwi'\]"):
        find_subjects(synth_dir, layout="brats2021", modalities=["flair", "dwi"])
    bad = tmp_path / "aliases.json"
    bad.write_text("{not json")
    with pytest.raises(MedAdvInputError, match="cannot read alias table file"):
        find_subjects(synth_dir, layout=str(bad))


def test_ambiguous_alias_is_an_error(synth_dir, tmp_path):
    data = copy_subjects(synth_dir, tmp_path / "data", n=1)
    with pytest.raises(MedAdvInputError, match="files match 't1'"):
        find_subjects(data, layout={**{k: [f"*_{k}.nii.gz"] for k in (*MODS, "seg")}, "t1": ["*_t1*.nii.gz"]})


def test_datalist_file_errors(tmp_path):
    with pytest.raises(MedAdvInputError, match="does not exist"):
        load_datalist(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text(json.dumps({"foo": 1}))
    with pytest.raises(MedAdvInputError, match="expected a JSON object with keys"):
        load_datalist(tmp_path / "bad.json")

"""Real data as users have it: any modality set, the MSD layout, label conventions and regions, z-scored inputs,
external test sets and new volumes (fast, in-process; the bundle runs are in test_own_data.py)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medadv_monai.data import (
    CONVENTIONS,
    RobustScaleIntensity,
    RobustScaleIntensityd,
    TumourMaskd,
    build_datalist,
    ensure_datalist,
    find_subjects,
    find_volumes,
    resolve_convention,
)
from medadv_monai.errors import MedAdvInputError
from tests.helpers import MSD_CHANNELS, classifier_config, copy_subjects, keep_modalities, make_msd


# ------------------------------------------------------------------------------------------ label conventions
def test_conventions_map_labels_to_the_standard_regions():
    expected = {"brats2021": ((1, 2, 4), (1, 4), (4,)), "brats2023": ((1, 2, 3), (1, 3), (3,)),
                "msd": ((1, 2, 3), (2, 3), (3,)), "brats2015": ((1, 2, 3, 4), (1, 3, 4), (4,))}
    for name, regions in expected.items():
        assert tuple(CONVENTIONS[name].region_labels(r) for r in ("WT", "TC", "ET")) == regions, name
    assert CONVENTIONS["binary"].region_labels("wt") == (1,)  # case-insensitive
    with pytest.raises(MedAdvInputError, match="binary label convention defines only \\['WT'\\]"):
        CONVENTIONS["binary"].region_labels("ET")
    custom = resolve_convention({"labels": [1, 2, 5], "regions": {"WT": [1, 2, 5], "ET": [5]}})
    assert custom.labels == (0, 1, 2, 5) and custom.region_labels("ET") == (5,)
    with pytest.raises(MedAdvInputError, match="did you mean 'brats2021'"):
        resolve_convention("bratz2021")
    with pytest.raises(MedAdvInputError, match="region 'ET' has labels \\[7\\]"):
        resolve_convention({"labels": [1], "regions": {"ET": [7]}})
    with pytest.raises(MedAdvInputError, match="region 'XT': expected one of"):
        TumourMaskd("seg", region="XT")


def test_region_mask_follows_each_subjects_layout():
    seg = torch.tensor([[[[0, 1, 2, 3, 4]]]])
    masker = TumourMaskd("seg", region="TC")  # label_convention auto
    tc = {layout: masker({"seg": seg, "layout": layout})["mask"].flatten().tolist()
          for layout in ("brats2021", "msd", "brats2023")}
    assert tc == {"brats2021": [0, 1, 0, 0, 1], "msd": [0, 0, 1, 1, 0], "brats2023": [0, 1, 0, 1, 0]}
    with pytest.raises(MedAdvInputError, match="seg.nii.gz: segmentation labels \\[3\\] are outside the brats2021"):
        CONVENTIONS["brats2021"].check([0, 3], "seg.nii.gz")


# ------------------------------------------------------------------------------------------ MSD layout
def test_msd_layout_gives_the_slices_of_the_brats_layout_for_every_region(synth_dir, tmp_path):
    brats = copy_subjects(synth_dir, tmp_path / "brats", n=3)
    msd = make_msd(brats, tmp_path / "Task01_BrainTumour")
    entries = find_subjects(msd)  # auto: dataset.json
    assert [e["subject"] for e in entries] == ["BRATS_001", "BRATS_002", "BRATS_003"]
    assert entries[0]["channels"] == {"t1": 1, "t1ce": 2, "t2": 3, "flair": 0} and entries[0]["layout"] == "msd"
    for region in ("WT", "TC", "ET"):
        arrays = []
        for data in (brats, msd):
            parser = classifier_config(data, tmp_path / f"work_{data.name}", region=region,
                                       split_fractions=[1.0, 0.0, 0.0])
            cache = parser.get_parsed_content("slice_cache")
            items = parser.get_parsed_content("datalist")["training"]
            arrays.append([cache.run_chain(item) for item in items])
        for a, b in zip(*arrays):
            np.testing.assert_array_equal(a["images"], b["images"])  # channel i of the 4D file is modality i
            np.testing.assert_array_equal(a["mask"], b["mask"])  # MSD's 1/2/3 give BraTS's regions
            assert a["label"] == b["label"]
        assert any(any(a["label"]) for a in arrays[0]), region


def test_msd_channel_names_come_from_dataset_json_or_a_channels_map(synth_dir, tmp_path):
    unnamed = make_msd(synth_dir, tmp_path / "unnamed", n=2, modality=None)
    with pytest.raises(MedAdvInputError, match="names no channels \\('modality' map\\); give a channels map"):
        find_subjects(unnamed)
    entries = find_subjects(unnamed, modalities=["flair", "t2"], channels={"flair": 0, "t2": 3})
    assert entries[0]["channels"] == {"flair": 0, "t2": 3} and "t1" not in entries[0]
    with pytest.raises(MedAdvInputError, match="names no channel for \\['dwi'\\]"):
        find_subjects(make_msd(synth_dir, tmp_path / "named", n=2), modalities=["flair", "dwi"])
    parser = classifier_config(unnamed, tmp_path / "work", all_modalities=["flair", "t2"], modalities=["flair"],
                               channels={"flair": 0, "t2": 7}, split_fractions=[1.0, 0.0, 0.0])
    cache = parser.get_parsed_content("slice_cache")
    with pytest.raises(MedAdvInputError, match="'t2' is channel 7, but the file has 4 channel"):
        cache.run_chain(parser.get_parsed_content("datalist")["training"][0])


def test_cache_shard_is_keyed_by_the_entrys_layout_and_channels(synth_config):
    cache = synth_config.get_parsed_content("slice_cache")
    item = synth_config.get_parsed_content("datalist")["training"][0]
    assert item["layout"] == "brats2021"
    assert cache.shard_dir({**item, "layout": "brats2023"}) != cache.shard_dir(item)
    assert cache.shard_dir(dict(item)) == cache.shard_dir(item)


# ------------------------------------------------------------------------------------------ modality sets
def test_a_flair_and_t1_dataset_is_found_and_cached_by_config(synth_dir, tmp_path):
    data = keep_modalities(synth_dir, tmp_path / "data", ("flair", "t1"), n=3)
    with pytest.raises(MedAdvInputError, match="no file for 't1ce'"):  # the default set asks for all four
        find_subjects(data)
    (entry, *_) = find_subjects(data, modalities=["flair", "t1"])
    assert set(entry) == {"subject", "layout", "flair", "t1", "seg"}
    table = {"flair": ["*_flair.nii.gz"], "t1": ["*_t1.nii.gz"], "seg": ["*_seg.nii.gz"]}  # names what exists
    assert find_subjects(data, layout=table, modalities=["flair", "t1"])[0]["layout"] == "aliases"
    parser = classifier_config(data, tmp_path / "work", all_modalities=["flair", "t1"], modalities=["t1"],
                               split_fractions=[1.0, 0.0, 0.0])
    cache = parser.get_parsed_content("slice_cache")
    items = parser.get_parsed_content("datalist")["training"]
    ds = cache.dataset(items, modalities=["t1"])
    assert ds[0]["image"].shape == (1, 32, 32)
    meta = json.loads((cache.shard_dir(items[0]) / "slices.json").read_text())
    assert meta["modalities"] == ["flair", "t1"]  # the cache stores the set it was built with
    with pytest.raises(MedAdvInputError, match="unknown \\['t2'\\]"):
        cache.dataset(items, modalities=["t2"], build=False)


def test_the_modality_set_is_part_of_the_datalist_stamp(synth_dir, tmp_path):
    path = tmp_path / "work" / "datalist.json"
    first = ensure_datalist(synth_dir, path)
    second = ensure_datalist(synth_dir, path, modalities=["flair"])
    assert "t1" in first["training"][0] and "t1" not in second["training"][0]


def test_switching_dataset_dir_in_one_bundle_folder_uses_the_second_dataset(synth_dir, tmp_path):
    a = copy_subjects(synth_dir, tmp_path / "a", n=4)
    b = tmp_path / "b"
    from medadv_monai.data import make_synthetic_brats

    make_synthetic_brats(b, subjects=4, shape=(40, 40, 20), seed=7)  # the same subject names, other content

    def slices(data, work):
        parser = classifier_config(data, work)
        return parser.get_parsed_content("slice_cache").slices(parser.get_parsed_content("datalist")["training"])

    shared = tmp_path / "bundle_work"
    on_a = slices(a, shared)
    on_b = slices(b, shared)
    shards = lambda rows: [(r["subject"], r["row"], Path(r["shard"]).name) for r in rows]  # noqa: E731
    assert shards(on_b) == shards(slices(b, tmp_path / "fresh_work")) != shards(on_a)
    assert {s["subject"] for s in on_a} == {s["subject"] for s in on_b}  # only the content tells them apart


# ------------------------------------------------------------------------------------------ intensity scaling
def _zscored(background: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A brain of raw intensities z-scored as pre-processed releases do: inside the brain only (the background
    stays 0), or the whole volume by the brain's statistics (the background becomes a constant, the minimum)."""
    gen = torch.Generator().manual_seed(0)
    brain = torch.zeros(24, 24, 8, dtype=torch.bool)
    brain[4:20, 4:20, 1:7] = True
    raw = torch.zeros(1, 24, 24, 8)
    raw[0][brain] = (300 + 80 * torch.randn(int(brain.sum()), generator=gen)).clamp(min=1)
    mean, std = raw[0][brain].mean(), raw[0][brain].std()
    z = (raw - mean) / std
    if background == "zero":
        z[0][~brain] = 0
    return z, brain


@pytest.mark.parametrize("background,foreground", [("zero", "nonzero"), ("min", "nonzero"), ("min", "above_min")])
def test_zscored_volume_scales_to_unit_range_with_background_zero(background, foreground):
    x, brain = _zscored(background)
    assert float(x[0][brain].min()) < 0 and (background == "zero" or float(x[0][~brain].min()) < 0)
    y = RobustScaleIntensity(foreground=foreground)(x)
    assert float(y.min()) == 0.0 and float(y.max()) == 1.0
    assert bool((y[0][~brain] == 0).all())  # the background is exactly 0
    order = torch.argsort(x[0][brain])
    assert bool((y[0][brain][order].diff() >= 0).all())  # monotonic: negative z-scores are brain, not background
    assert float((y[0][brain] > 0).float().mean()) > 0.95


def test_brain_mask_file_is_the_foreground_when_named():
    x, brain = _zscored("zero")
    x[0][~brain] = 0.5  # a background that is neither 0 nor the minimum
    d = RobustScaleIntensityd("t1", foreground="brain_mask")({"t1": x, "brain_mask": brain[None].float()})
    assert bool((d["t1"][0][~brain] == 0).all()) and float(d["t1"].max()) == 1.0
    with pytest.raises(MedAdvInputError, match="subject 's1' has no 'brain_mask' volume"):
        RobustScaleIntensityd("t1", foreground="brain_mask")({"t1": x, "subject": "s1"})


# ------------------------------------------------------------------------------------------ external sets, new volumes
def test_split_fractions_0_0_1_make_every_subject_a_test_subject(synth_dir):
    dl = build_datalist(synth_dir, fractions=[0, 0, 1])
    assert not dl["training"] and not dl["validation"] and len(dl["test"]) == 8


def test_new_volumes_are_found_in_any_form(synth_dir, tmp_path):
    subjects = sorted(synth_dir.iterdir())[:2]
    by_folder = find_volumes(synth_dir, ["flair"])
    assert len(by_folder) == 8 and "seg" not in by_folder[0]
    files = [d / f"{d.name}_flair.nii.gz" for d in subjects]
    listed = find_volumes([str(f) for f in files], ["flair"])
    assert [e["subject"] for e in listed] == [f"{d.name}_flair" for d in subjects]
    with pytest.raises(MedAdvInputError, match="only as a 4D file with a channels map"):
        find_volumes([str(f) for f in files], ["flair", "t1"])
    msd = make_msd(synth_dir, tmp_path / "msd", n=2)
    (test,) = find_volumes(msd, ["t2", "flair"])  # the 'test' list of dataset.json
    assert test["subject"] == "BRATS_900" and test["channels"] == {"t2": 3, "flair": 0}
    four_d = find_volumes(msd / "imagesTs", ["flair", "t2"], channels={"flair": 0, "t2": 3})
    assert four_d[0]["channels"] == {"flair": 0, "t2": 3}
    assert nib.load(four_d[0]["flair"]).shape[-1] == len(MSD_CHANNELS)
    with pytest.raises(MedAdvInputError, match="does not exist"):
        find_volumes(tmp_path / "nope", ["flair"])

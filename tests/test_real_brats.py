"""The classifier and segmentation bundles on real BraTS 2018 cases (``../shared/data/real_brats18``; skipped
where it is absent).

Trained on 9 subjects (7 training, 2 validation for the model choice and the decision threshold) and scored on the
other 4, with small slices and few epochs to keep the suite fast: the figures in the bundle's docs come from the
default settings (see ``bundles/brats_slice_classifier/docs/README.md``); this test checks that the pipeline reads
real data and learns from it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers import CLASSIFIER_BUNDLE, REPO, bundle_copy, workflow

REAL_BRATS = Path(os.environ.get("MEDADV_REAL_BRATS", REPO.parent / "shared" / "data" / "real_brats18"))

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not REAL_BRATS.is_dir(), reason=f"real BraTS cases not found at {REAL_BRATS}")]

#: 7 / 2 / 4 of the 13 subjects
SPLIT = [7 / 13, 2 / 13, 4 / 13]


def _finish_and_evaluate(bundle: Path, train_wf, settings: dict) -> dict:
    """Run an initialized training workflow, then the bundle's evaluate.yaml; return eval/metrics.json."""
    train_wf.run()
    train_wf.finalize()
    ev = workflow(bundle, ["train.yaml", "evaluate.yaml"], "infer", **settings)
    ev.initialize()
    ev.run()
    ev.finalize()
    return json.loads((bundle / "eval" / "metrics.json").read_text())


def test_trained_on_9_real_subjects_it_separates_tumour_slices_of_4_others(tmp_path):
    bundle = bundle_copy(CLASSIFIER_BUNDLE, tmp_path / "brats_slice_classifier")
    settings = {"dataset_dir": str(REAL_BRATS), "work_dir": str(tmp_path / "work"), "split_fractions": SPLIT,
                "modalities": ["flair"], "image_size": [32, 32]}
    wf = workflow(bundle, ["train.yaml"], "train", **settings, **{"train#trainer#max_epochs": 4})
    wf.initialize()
    datalist = wf.parser.get_parsed_content("datalist")
    assert [len(datalist[s]) for s in ("training", "validation", "test")] == [7, 2, 4]
    assert {e["layout"] for e in datalist["test"]} == {"brats2021"}  # BraTS 2018 names: the 2017-2021 layout
    metrics = _finish_and_evaluate(bundle, wf, settings)
    assert metrics["test_auc"] > 0.8, metrics  # the docs give the default settings' 0.9x
    assert (metrics["test_sensitivity"] + metrics["test_specificity"]) / 2 > 0.7, metrics  # the stored threshold


def test_segmentation_learns_the_tumour_regions_of_real_cases(tmp_path):
    """The segmentation bundle on the same split (T2 and FLAIR): the cached region masks of real labels are nested
    (ET in TC in WT) and a short training segments the whole tumour of the 4 test subjects."""
    from tests.helpers import BUNDLES, CLASSIFIER_TRAIN

    bundle = bundle_copy(BUNDLES / "brats_tumour_segmentation", tmp_path / "brats_tumour_segmentation")
    settings = {"dataset_dir": str(REAL_BRATS), "work_dir": str(tmp_path / "work"), "split_fractions": SPLIT,
                "modalities": ["t2", "flair"], "image_size": [32, 32], "data_config": str(CLASSIFIER_TRAIN)}
    wf = workflow(bundle, ["train.yaml"], "train", **settings, **{"train#trainer#max_epochs": 6})
    wf.initialize()
    cache, datalist = wf.parser.get_parsed_content("slice_cache"), wf.parser.get_parsed_content("datalist")
    for entry in cache.slices(datalist["test"])[::10]:
        wt, tc, et = wf.parser.get_parsed_content("load_slices")(entry)["label"]
        assert bool((tc <= wt).all() and (et <= tc).all()), entry["subject"]
    metrics = _finish_and_evaluate(bundle, wf, settings)
    # 6 epochs at 32x32 measured 0.56 (an untrained model: about 0); the docs give the default settings' figures
    assert metrics["test_subject_dice_WT"] > 0.45, metrics

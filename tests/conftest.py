"""Shared fixtures: one tiny synthetic BraTS dataset and its slice cache per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.helpers import CLASSIFIER_TRAIN, bundle_copy, classifier_config

torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY_SHAPE = (40, 40, 20)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster and immune to a busy machine; restored afterwards. A module
    uses it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
TINY_SUBJECTS = 8


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """Eight tiny synthetic BraTS 2021 subjects (read-only: copy before damaging)."""
    from medadv_monai.data import make_synthetic_brats

    root = tmp_path_factory.mktemp("synth") / "brats"
    make_synthetic_brats(root, subjects=TINY_SUBJECTS, shape=TINY_SHAPE, seed=0)
    return root


@pytest.fixture(scope="session")
def synth_config(synth_dir, tmp_path_factory):
    """Parser of the classifier config on ``synth_dir`` with its cache built."""
    parser = classifier_config(synth_dir, tmp_path_factory.mktemp("work"))
    cache, datalist = parser.get_parsed_content("slice_cache"), parser.get_parsed_content("datalist")
    cache.build([i for items in datalist.values() for i in items])
    return parser


@pytest.fixture(scope="session")
def trained_classifier(synth_dir, tmp_path_factory):
    """A copy of the classifier bundle trained for 8 epochs on ``synth_dir`` (32x32 slices) via ConfigWorkflow.

    Returns the bundle folder: ``models/model.pt`` is the trained model, ``work/`` its datalist and slice cache.
    """
    from monai.bundle import ConfigWorkflow

    bundle = tmp_path_factory.mktemp("trained") / "brats_slice_classifier"
    bundle_copy(CLASSIFIER_TRAIN.parents[1], bundle)
    wf = ConfigWorkflow(
        config_file=str(bundle / "configs" / "train.yaml"),
        meta_file=str(bundle / "configs" / "metadata.json"),
        workflow_type="train",
        bundle_root=str(bundle),
        dataset_dir=str(synth_dir),
        work_dir=str(bundle / "work"),
        image_size=[32, 32],
        batch_size=16,
        **{"train#trainer#max_epochs": 8},  # fewer epochs leave the batch-norm threshold drifted
    )
    wf.initialize()
    assert not wf.check_properties()
    wf.run()
    wf.finalize()
    return bundle

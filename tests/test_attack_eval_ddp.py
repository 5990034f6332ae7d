"""The brats_attack_eval bundle under torchrun (multi_gpu_evaluate.yaml, 2 gloo processes on CPU) writes what a
single process writes: the same summaries, per-sample rows and cell files, and it resumes from either's cells."""

from __future__ import annotations

import shutil

import pytest
import torch

from tests.helpers import ATTACK_EVAL_BUNDLE as BUNDLE
from tests.helpers import run_cli

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")]

# one deterministic attack and one with a random start (PGD), without a mask and with a patch at a random anchor
MASKS = {"none": {"_target_": "medadv_monai.masks.AttackMaskd", "keys": "mask", "output_key": "attack_mask",
                  "kind": "none"},
         "patch": {"_target_": "medadv_monai.masks.AttackMaskd", "keys": "mask", "output_key": "attack_mask",
                   "kind": "patch", "patch": {"shape": "rect", "size": [0.3, 0.3], "anchor": "random"}}}
OUTPUTS = ("summary.json", "summary.csv", "per_sample.csv", "coverage.csv")
TIMEOUT = 900  # a loaded 2-core machine starts two processes that each import MONAI


@pytest.fixture(scope="module")
def runs(trained_classifier, synth_dir, tmp_path_factory):
    """A single-process run (``single/``), a torchrun run (``ddp/``), then a torchrun rerun in ``single/``."""
    root = tmp_path_factory.mktemp("attack_eval_ddp")
    bundle = root / "brats_attack_eval"
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("eval"))
    configs = bundle / "configs"

    def args(out: str) -> list[str]:
        return ["--bundle_root", str(bundle), "--classifier_bundle", str(trained_classifier),
                "--dataset_dir", str(synth_dir), "--classifier_overrides", "{'image_size': [32, 32]}",
                "--attacks", "{'fgsm': {}, 'pgd': {'steps': 3}}", "--eps", "[0.03137254901960784]",
                "--masks", repr(MASKS), "--split", "training", "--max_slices", "36",
                "--runner#batch_size", "8",  # 5 batches, the last one short: rank 0 gets 0, 2, 4, rank 1 gets 1, 3
                "--gradcam_layer", "$None", "--output_dir", str(root / out)]

    single = ["monai.bundle", "run", "--config_file", str(configs / "evaluate.yaml")]
    ddp = ["torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2", "-m", "monai.bundle", "run",
           "--config_file", f"['{configs / 'evaluate.yaml'}','{configs / 'multi_gpu_evaluate.yaml'}']"]
    # one thread per process in both runs: the float results must not depend on how a reduction was split up
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        procs = {"single": run_cli([*single, *args("single")], cwd=root, timeout=TIMEOUT),
                 "ddp": run_cli([*ddp, *args("ddp")], cwd=root, timeout=TIMEOUT),
                 "resumed": run_cli([*ddp, *args("single")], cwd=root, timeout=TIMEOUT)}
    return root, procs


def test_ddp_outputs_equal_single_process_outputs(runs):
    root, procs = runs
    for name in OUTPUTS:
        assert (root / "ddp" / name).read_text() == (root / "single" / name).read_text(), name
    cells = sorted(p.name for p in (root / "single" / "cells").glob("*.json"))
    assert cells == sorted(p.name for p in (root / "ddp" / "cells").glob("*.json"))
    assert len(cells) == 2 + 2 * 2  # clean per mask + (fgsm, pgd) x masks
    for name in cells:  # rows, summary and stamp alike: a cell made by either run is the other's
        assert (root / "ddp" / "cells" / name).read_text() == (root / "single" / "cells" / name).read_text(), name
    assert (root / "ddp" / "report.md").is_file() and (root / "ddp" / "figures" / "grid_pgd_eps8_patch.png").is_file()
    # rank 0 alone prints and writes TensorBoard
    assert procs["ddp"].stdout.count("[attack grid] 6/6") == 1
    assert len(list((root / "ddp" / "runs").glob("*/events.out.tfevents.*"))) == 1


def test_ddp_rerun_reuses_single_process_cells(runs):
    root, procs = runs
    assert "[attack grid]" not in procs["resumed"].stdout  # every cell reused, none recomputed
    assert "reused 6 finished cells" in procs["resumed"].stdout
    assert (root / "single" / "per_sample.csv").read_text() == (root / "ddp" / "per_sample.csv").read_text()


def test_per_sample_rows_cover_every_slice_once_in_order(runs):
    root, _ = runs
    import csv

    with open(root / "ddp" / "per_sample.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["cell"] == "pgd_eps8_patch"]
    assert len(rows) == 36
    keys = [(r["subject"], int(r["slice_index"])) for r in rows]
    assert len(set(keys)) == 36 and keys == sorted(keys)

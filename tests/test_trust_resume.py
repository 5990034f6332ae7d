"""Trust the numbers on resume: a checkpoint or a finished grid cell is reused only when what made it is unchanged;
a run that cannot continue ends in one line that names the change and how to start afresh; one TensorBoard run
per run, and a stage-1 TensorBoard image that shows a tumour slice with its real mask."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medadv_monai.errors import MedAdvInputError
from medadv_monai.networks import SliceClassifier
from tests.helpers import (
    ADVGAN_BUNDLE,
    ATTACK_EVAL_BUNDLE,
    CLASSIFIER_BUNDLE,
    bundle_cmd,
    bundle_copy,
    run,
    start_until,
)

pytestmark = pytest.mark.slow

EPS = "[0.03137254901960784]"  # 8/255
MASK_NONE = "{'none': {'_target_': 'medadv_monai.masks.AttackMaskd', 'keys': 'mask', 'kind': 'none'}}"


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _refused(proc: subprocess.CompletedProcess, *parts: str) -> str:
    """The run failed with one ``error:`` line holding every part, and no traceback."""
    line = _last_line(proc)
    assert proc.returncode != 0, proc.stdout[-1500:]
    assert line.startswith("error: ") and all(p in line for p in parts), (parts, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return line


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-3000:]
    return proc


# ------------------------------------------------------------------------------------------ settings
def test_check_bool_parses_command_line_booleans():
    from medadv_monai.utils.checks import check_bool

    for value, expected in [(True, True), (False, False), (0, False), (1, True), ("false", False), ("False", False),
                            ("NO", False), ("0", False), ("true", True), ("Yes", True), ("1", True)]:
        assert check_bool(value, "resume") is expected, value
    for bad in ("maybe", "", 2, 0.5, None):
        with pytest.raises(MedAdvInputError, match=r"^resume must be true or false"):
            check_bool(bad, "resume")
    from medadv_monai.engines import expand_grid

    labels = [c.label for c in expand_grid({"fgsm": {}}, [8 / 255], ["none"], "false", clean=False)]
    assert labels == ["fgsm_eps8_none"]  # `--targeted false` is untargeted, not targeted


def test_run_lock_refuses_a_live_holder_and_takes_over_a_stale_one(tmp_path):
    from medadv_monai.handlers.checkpoint import RunLock

    path = tmp_path / "train.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path.write_text(f"{holder.pid} {socket.gethostname()}\n")
        with pytest.raises(MedAdvInputError, match=rf"is in use by another training \(pid {holder.pid}"):
            RunLock(path, what="training").acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = RunLock(path, what="training").acquire()  # its pid is gone: stale, taken over
    assert path.read_text().split()[0] == str(os.getpid())
    lock.release()
    assert not path.exists()


# ------------------------------------------------------------------------------------------ stage 1
def _stage1_settings(synth_dir: Path, work: Path, out: Path, epochs: int = 1, **extra) -> dict:
    return {"dataset_dir": str(synth_dir), "work_dir": str(work), "output_dir": str(out), "image_size": [32, 32],
            "batch_size": 16, "train#trainer#max_epochs": epochs, **extra}


def _stage1(bundle: Path, synth_dir: Path, work: Path, out: Path, epochs: int = 1, **extra) -> list[str]:
    return bundle_cmd(bundle, ["train.yaml"], **_stage1_settings(synth_dir, work, out, epochs, **extra))


def _images(events: Path) -> dict[str, list[np.ndarray]]:
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events), size_guidance={"images": 0})
    acc.Reload()
    return {tag: [np.asarray(Image.open(io.BytesIO(e.encoded_image_string))) for e in acc.Images(tag)]
            for tag in acc.Tags()["images"]}


def test_stage1_resume_refuses_changed_settings_and_unreadable_checkpoints(synth_dir, tmp_path):
    bundle = bundle_copy(CLASSIFIER_BUNDLE, tmp_path / "b")
    work, out = tmp_path / "work", tmp_path / "out"
    ckpts = out / "checkpoints"
    _ok(run(_stage1(bundle, synth_dir, work, out), tmp_path))
    ckpt = ckpts / "checkpoint_epoch=1.pt"
    before = ckpt.read_bytes()
    assert json.loads((ckpts / "settings.json").read_text())["description"]["image_size"] == [32, 32]

    # another image size: refused, naming the old and the new value (it used to continue on the new data)
    proc = run(_stage1(bundle, synth_dir, work, out, epochs=2, image_size=[64, 64]), tmp_path)
    line = _refused(proc, f"error: {ckpts} holds a run with image_size=[32, 32]", "this run has", "image_size=[64, 64]",
                    "pass --resume false to start afresh or choose another output_dir")
    # other modalities: refused in one line, not a 70-line traceback
    proc = run(_stage1(bundle, synth_dir, work, out, epochs=2, modalities="['t1ce','flair']"), tmp_path)
    _refused(proc, f"{ckpts} holds a run with", "modalities=['t2']", "modalities=['t1ce', 'flair']", "--resume false")
    assert ckpt.read_bytes() == before and sorted(p.name for p in ckpts.glob("*.pt")) == [ckpt.name]
    assert "image_size" in line and not (ckpts / "train.lock").exists()  # a refused run leaves the folder free

    # a truncated checkpoint: one line naming it
    ckpt.write_bytes(before[: len(before) // 3])
    _refused(run(_stage1(bundle, synth_dir, work, out, epochs=2), tmp_path), str(ckpt), "--resume false")
    ckpt.write_bytes(before)


def test_stage1_resume_false_starts_afresh_and_sets_old_checkpoints_aside(synth_dir, tmp_path):
    bundle = bundle_copy(CLASSIFIER_BUNDLE, tmp_path / "b")
    work, out = tmp_path / "work", tmp_path / "out"
    ckpts = out / "checkpoints"
    _ok(run(_stage1(bundle, synth_dir, work, out, epochs=2), tmp_path))
    # `--resume false` as the README writes it arrives as the string 'false': it must not resume
    fresh = _ok(run(_stage1(bundle, synth_dir, work, out, epochs=1, resume="false"), tmp_path))
    assert f"resuming from {ckpts}" not in fresh.stdout + fresh.stderr
    assert [p.name for p in ckpts.glob("*.pt")] == ["checkpoint_epoch=1.pt"]  # the old epoch 2 is not left beside it
    assert (ckpts / "previous" / "checkpoint_epoch=2.pt").is_file()
    # a later resume continues the fresh run, not the old one
    resumed = _ok(run(_stage1(bundle, synth_dir, work, out, epochs=2), tmp_path))
    assert f"resuming from {ckpts / 'checkpoint_epoch=1.pt'}" in resumed.stdout + resumed.stderr

    # one TensorBoard run per run; each shows a tumour slice and its real (non-empty) mask
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 3 and all(len(list(r.glob("events.out.tfevents.*"))) == 1 for r in runs)
    images = _images(next(runs[0].glob("events.out.tfevents.*")))
    masks = [v for k, v in images.items() if "tumour_mask" in k]
    assert masks and all(m.max() > 0 for m in masks[0]) and len(masks[0]) == 2  # one per epoch, never all zeros
    pictures = [v for k, v in images.items() if "image" in k and "tumour_mask" not in k]
    assert pictures and pictures[0][0].max() > 0


PAUSE_CONFIG = """\
# test only: after the first iteration, say so and wait for the test to kill this process
marker: {marker}
initialize:
  - $medadv_monai.errors.install_excepthook()
  - $monai.utils.set_determinism(seed=@seed)
  - $[handler.attach(@train#trainer) for handler in @train#checkpointing]
  - $import ignite
  - $import time
  - "$@train#trainer.add_event_handler(ignite.engine.Events.ITERATION_COMPLETED(once=1), \
lambda engine: (open(@marker, 'w').close(), time.sleep(120)))"
"""


def test_second_training_into_one_folder_is_refused_and_a_stale_lock_taken_over(synth_dir, tmp_path):
    bundle = bundle_copy(CLASSIFIER_BUNDLE, tmp_path / "b")
    work, out = tmp_path / "work", tmp_path / "out"
    marker = tmp_path / "paused"
    (bundle / "configs" / "pause.yaml").write_text(PAUSE_CONFIG.format(marker=marker))
    args = _stage1(bundle, synth_dir, work, out)
    paused = bundle_cmd(bundle, ["train.yaml", "pause.yaml"], **_stage1_settings(synth_dir, work, out))
    first = start_until(paused, tmp_path, marker)
    try:
        second = run(args, tmp_path)
        _refused(second, f"{out / 'checkpoints'} is in use by another training (pid {first.pid}",
                 str(out / "checkpoints" / "train.lock"))
    finally:
        first.kill()
        first.wait(timeout=60)
    assert (out / "checkpoints" / "train.lock").is_file()  # killed: its lock stays, stale
    third = _ok(run(args, tmp_path))
    assert "took over the stale lock" in third.stdout + third.stderr
    assert not (out / "checkpoints" / "train.lock").exists()


# ------------------------------------------------------------------------------------------ stage 2
def test_stage2_mask_kind_seg_after_an_unmasked_run_is_refused(trained_classifier, synth_dir, tmp_path):
    bundle = bundle_copy(ADVGAN_BUNDLE, tmp_path / "gan")
    out = tmp_path / "models"
    common = {"classifier_bundle": str(trained_classifier), "dataset_dir": str(synth_dir),
              "classifier_overrides": "{'image_size': [32, 32]}", "output_dir": str(out), "batch_size": 16,
              "d_warmup_iterations": 2, "train#trainer#max_epochs": 1}
    _ok(run(bundle_cmd(bundle, ["train.yaml"], **common), tmp_path))
    ckpt = out / "checkpoints" / "checkpoint_epoch=1.pt"
    before = ckpt.read_bytes()
    # the README's `--mask_kind seg` used to resume the finished unmasked run and exit 0 without training
    proc = run(bundle_cmd(bundle, ["train.yaml"], **common, mask_kind="seg"), tmp_path)
    _refused(proc, f"{out / 'checkpoints'} holds a run with mask_kind='none'; this run has 'seg'", "--resume false")
    assert ckpt.read_bytes() == before
    _ok(run(bundle_cmd(bundle, ["train.yaml"], **common, mask_kind="seg", resume="false"), tmp_path))
    stamp = json.loads((out / "checkpoints" / "settings.json").read_text())["description"]
    assert stamp["mask_kind"] == "seg" and ckpt.read_bytes() != before
    assert torch.load(out / "generator.pt", weights_only=True)["advgan_config"]["mask_kind"] == "seg"


# ------------------------------------------------------------------------------------------ stage 3
def _grid(bundle: Path, trained: Path, synth_dir: Path, out: Path, **extra) -> list[str]:
    settings = {"classifier_bundle": str(trained), "dataset_dir": str(synth_dir),
                "classifier_overrides": "{'image_size': [32, 32]}", "split": "training", "max_slices": 16,
                "masks": MASK_NONE, "attacks": "{'pgd': {'steps': 1}}", "eps": EPS, "gradcam_layer": "$None",
                "output_dir": str(out), **extra}
    return bundle_cmd(bundle, ["evaluate.yaml"], **settings)


@pytest.fixture(scope="module")
def grid_run(trained_classifier, synth_dir, tmp_path_factory):
    """A finished stage-3 run (PGD with 1 step, 16 training slices, no mask): its bundle, output and command."""
    root = tmp_path_factory.mktemp("grid")
    bundle = bundle_copy(ATTACK_EVAL_BUNDLE, root / "brats_attack_eval")
    out = root / "eval"
    first = _ok(run(_grid(bundle, trained_classifier, synth_dir, out), root))
    assert "[attack grid] 2/2 pgd_eps8_none" in first.stdout
    return bundle, out


def _summary(out: Path) -> list[dict]:
    return json.loads((out / "summary.json").read_text())


def test_stage3_recomputes_cells_made_with_other_attack_settings(grid_run, trained_classifier, synth_dir, tmp_path):
    bundle, base = grid_run
    out = tmp_path / "eval"
    shutil.copytree(base, out)
    again = _ok(run(_grid(bundle, trained_classifier, synth_dir, out), tmp_path))
    assert "[attack grid]" not in again.stdout and _summary(out) == _summary(base)  # unchanged: reused
    # PGD at 20 steps into the same folder: the PGD cell is recomputed, the clean one reused
    more = _ok(run(_grid(bundle, trained_classifier, synth_dir, out, attacks="{'pgd': {'steps': 20}}"), tmp_path))
    assert "pgd_eps8_none (recomputing: pgd_eps8_none.json was made with other cell.params.steps)" in more.stdout
    assert "clean_none" not in more.stdout
    fresh = tmp_path / "fresh"
    _ok(run(_grid(bundle, trained_classifier, synth_dir, fresh, attacks="{'pgd': {'steps': 20}}"), tmp_path))
    assert _summary(out) == _summary(fresh)  # exactly what a fresh run reports: nothing stale
    # one TensorBoard run per run, each with one value per eps
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 3
    for r in runs:
        acc = EventAccumulator(str(r))
        acc.Reload()
        assert [e.step for e in acc.Scalars("robust_acc/none/pgd")] == [8]


def test_stage3_recomputes_for_other_slices_or_classifier(grid_run, trained_classifier, synth_dir, tmp_path):
    bundle, base = grid_run
    out = tmp_path / "eval"
    shutil.copytree(base, out)
    fewer = _ok(run(_grid(bundle, trained_classifier, synth_dir, out, max_slices=8), tmp_path))
    assert "recomputing" in fewer.stdout and "slices.count" in fewer.stdout
    assert {row["n"] for row in _summary(out)} == {8}  # never a mix of n=16 and n=8 rows
    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    torch.save(SliceClassifier(in_channels=1).state_dict(), other)
    swapped = _ok(run(_grid(bundle, trained_classifier, synth_dir, out, max_slices=8, classifier_ckpt=str(other)),
                      tmp_path))
    assert swapped.stdout.count("made with other classifier.checkpoint, classifier.weights") == 2


def test_stage3_truncated_cell_is_recomputed_and_resume_false_recomputes_all(grid_run, trained_classifier, synth_dir,
                                                                            tmp_path):
    bundle, base = grid_run
    out = tmp_path / "eval"
    shutil.copytree(base, out)
    cell = out / "cells" / "pgd_eps8_none.json"
    cell.write_text(cell.read_text()[:100])
    proc = _ok(run(_grid(bundle, trained_classifier, synth_dir, out), tmp_path))
    assert "pgd_eps8_none (recomputing: pgd_eps8_none.json is unreadable" in proc.stdout
    assert "Traceback" not in proc.stderr and _summary(out) == _summary(base)
    proc = _ok(run(_grid(bundle, trained_classifier, synth_dir, out, resume="false"), tmp_path))
    assert "[attack grid] 1/2 clean_none" in proc.stdout and "[attack grid] 2/2 pgd_eps8_none" in proc.stdout


def test_stage3_empty_split_is_refused_up_front(grid_run, trained_classifier, synth_dir, tmp_path):
    bundle, _ = grid_run
    out = tmp_path / "eval"
    proc = run(_grid(bundle, trained_classifier, synth_dir, out, slices="[]"), tmp_path)
    _refused(proc, "error: split 'training' has 0 slices")
    assert not (out / "summary.json").exists() and not (out / "cells").exists()

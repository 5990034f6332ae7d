"""Reliability: interruption and resume, determinism, safe checkpoint loading, bad input through the bundle CLI."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from medadv_monai.errors import MedAdvInputError
from medadv_monai.networks import SliceClassifier, load_weights
from tests.helpers import ATTACK_EVAL_BUNDLE as ATTACK_EVAL
from tests.helpers import CLASSIFIER_BUNDLE as CLASSIFIER
from tests.helpers import bundle_cmd, run, start_until, workflow
from tests.helpers import bundle_copy as copy_bundle

pytestmark = pytest.mark.slow


def train_overrides(synth_dir: Path, work: Path, out: Path, epochs: int = 3) -> dict:
    return {"dataset_dir": str(synth_dir), "work_dir": str(work), "output_dir": str(out), "image_size": [32, 32],
            "batch_size": 16, "train#trainer#max_epochs": epochs}


# ------------------------------------------------------------------------------------------ interruption
KILL_CONFIG = """\
# test only: at iteration {at}, mid-epoch 2, say so and wait for the test to kill this process
pause_at: {at}
marker: {marker}
initialize:
  - $medadv_monai.errors.install_excepthook()
  - $monai.utils.set_determinism(seed=@seed)
  - $[handler.attach(@train#trainer) for handler in @train#checkpointing]
  - $import ignite
  - $import time
  - "$@train#trainer.add_event_handler(ignite.engine.Events.ITERATION_COMPLETED(once=@pause_at), \
lambda engine: (open(@marker, 'w').close(), time.sleep(120)))"
"""


def test_killed_training_resumes_to_the_same_final_metrics(synth_dir, tmp_path):
    bundle = copy_bundle(CLASSIFIER, tmp_path / "brats_slice_classifier")
    work = tmp_path / "work"
    ref = run(bundle_cmd(bundle, ["train.yaml"], **train_overrides(synth_dir, work, tmp_path / "ref")), tmp_path)
    assert ref.returncode == 0, ref.stderr[-2000:]
    reference = (tmp_path / "ref" / "val_metrics.json").read_text()

    ckpt = torch.load(next((tmp_path / "ref" / "checkpoints").glob("*.pt")), weights_only=True)
    epoch_length = ckpt["trainer"]["epoch_length"]
    marker = tmp_path / "paused"
    (bundle / "configs" / "kill.yaml").write_text(KILL_CONFIG.format(at=epoch_length + 2, marker=marker))
    out = tmp_path / "interrupted"
    args = bundle_cmd(bundle, ["train.yaml", "kill.yaml"], **train_overrides(synth_dir, work, out))
    proc = start_until(args, tmp_path, marker)
    try:
        os.kill(proc.pid, signal.SIGKILL)  # mid-epoch 2: epoch 1 is checkpointed, epoch 2 is half done
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert [p.name for p in (out / "checkpoints").glob("*.pt")] == ["checkpoint_epoch=1.pt"]
    assert not list(out.rglob("*.tmp"))  # nothing half-written under a real name or a temporary one

    resumed = run(bundle_cmd(bundle, ["train.yaml"], **train_overrides(synth_dir, work, out)), tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    assert (out / "val_metrics.json").read_text() == reference


# ------------------------------------------------------------------------------------------ determinism
def test_same_seed_same_metrics_stage1(synth_dir, tmp_path):

    bundle = copy_bundle(CLASSIFIER, tmp_path / "b")
    texts = []
    for name in ("a", "b"):
        wf = workflow(bundle, ["train.yaml"], "train",
                      **train_overrides(synth_dir, tmp_path / "work", tmp_path / name, epochs=2))
        wf.initialize()
        wf.run()
        wf.finalize()
        texts.append((tmp_path / name / "val_metrics.json").read_text())
    assert texts[0] == texts[1]


def test_same_seed_same_metrics_stage3(trained_classifier, synth_dir, tmp_path):
    bundle = copy_bundle(ATTACK_EVAL, tmp_path / "brats_attack_eval")
    summaries = []
    for name in ("a", "b"):
        args = bundle_cmd(bundle, ["evaluate.yaml"], classifier_bundle=str(trained_classifier),
                          dataset_dir=str(synth_dir), classifier_overrides="{'image_size': [32, 32]}",
                          split="training", attacks="{'pgd': {'steps': 3}}", eps="[0.03137]",
                          output_dir=str(tmp_path / name), gradcam_layer="$None")
        proc = run(args, tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        summaries.append((tmp_path / name / "summary.json").read_text())
    assert summaries[0] == summaries[1]


# ------------------------------------------------------------------------------------------ safe loading
class Payload:
    """An arbitrary object: unpickling it would run code of the checkpoint's choosing."""


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    net = SliceClassifier(in_channels=1)
    path = tmp_path / "evil.pt"
    torch.save({"model": net.state_dict(), "extra": Payload()}, path)
    with pytest.raises(MedAdvInputError, match="refused: it holds pickled Python objects"):
        load_weights(SliceClassifier(in_channels=1), path)
    good = tmp_path / "good.pt"
    torch.save(net.state_dict(), good)
    load_weights(SliceClassifier(in_channels=1), good)
    with pytest.raises(MedAdvInputError, match="does not fit SliceClassifier"):
        load_weights(SliceClassifier(in_channels=2), good)


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    from ignite.engine import Engine

    from medadv_monai.handlers import AtomicCheckpointSaver

    net = SliceClassifier(in_channels=1)
    engine = Engine(lambda e, b: None)
    AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net}, save_interval=1, n_saved=1).attach(engine)
    engine.run([0], max_epochs=2)
    assert [p.name for p in tmp_path.iterdir()] == ["model_epoch=2.pt"]
    assert (tmp_path / "model_epoch=2.pt").stat().st_mode & 0o044  # readable by group/others (umask 022)

    def crash(obj, f, *args, **kwargs):  # the process dies half-way through writing
        open(f, "wb").write(b"trunc")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        engine.run([0], max_epochs=3)
    assert [p.name for p in tmp_path.iterdir()] == ["model_epoch=2.pt"]  # no truncated file, no leftover
    load_weights(SliceClassifier(in_channels=1), tmp_path / "model_epoch=2.pt")


# ------------------------------------------------------------------------------------------ bad input via the CLI
def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pytest.mark.parametrize("override,message", [
    ({"dataset_dir": "/nonexistent/brats"}, "error: dataset_dir '/nonexistent/brats' does not exist"),
    ({"modalities": "['t1c']"}, "error: modalities ['t1c']: unknown ['t1c']"),
])
def test_stage1_bad_input_ends_in_one_clear_line(override, message, synth_dir, tmp_path):
    bundle = copy_bundle(CLASSIFIER, tmp_path / "b")
    settings = {**train_overrides(synth_dir, tmp_path / "work", tmp_path / "out", epochs=1), **override}
    proc = run(bundle_cmd(bundle, ["train.yaml"], **settings), tmp_path)
    assert proc.returncode != 0
    assert _last_line(proc).startswith(message), proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr


def test_stage3_bad_input_ends_in_one_clear_line(trained_classifier, synth_dir, tmp_path):
    bundle = copy_bundle(ATTACK_EVAL, tmp_path / "e")
    other = SliceClassifier(in_channels=2)
    wrong = tmp_path / "two_channel.pt"
    torch.save(other.state_dict(), wrong)
    base = {"classifier_bundle": str(trained_classifier), "dataset_dir": str(synth_dir),
            "classifier_overrides": "{'image_size': [32, 32]}", "output_dir": str(tmp_path / "out")}
    cases = [
        ({"classifier_ckpt": str(wrong)}, f"error: checkpoint '{wrong}' does not fit SliceClassifier"),
        ({"eps": "[1.5]"}, "error: eps in the grid must be a number in [0, 1]"),
        ({"attacks": "{'pgd': {'alpha': 0}}"}, "error: alpha must be a finite step size > 0, got 0"),
        ({"masks": "{'big': {'_target_': 'medadv_monai.masks.AttackMaskd', 'keys': 'mask', 'kind': 'patch', "
                   "'patch': {'size': [40, 8], 'units': 'px'}}}"}, "error: "),
    ]
    for override, message in cases:
        proc = run(bundle_cmd(bundle, ["evaluate.yaml"], **{**base, **override}), tmp_path)
        assert proc.returncode != 0, override
        assert _last_line(proc).startswith(message), (override, proc.stderr[-1500:])
        assert "Traceback" not in proc.stderr, override
    assert not (tmp_path / "out" / "summary.json").exists()

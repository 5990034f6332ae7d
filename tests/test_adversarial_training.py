"""Adversarial training as a stage-1 option: the iteration step, the eps warm-up, the overlay end to end and resumed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from torch import nn

from medadv_monai.engines import AdversarialTrainingStep, EpsWarmup, check_adversarial_settings, warmup_eps
from medadv_monai.errors import MedAdvInputError, find_input_error
from medadv_monai.losses import AdversarialTrainingLoss
from medadv_monai.networks import recorded_training
from tests.helpers import CLASSIFIER_BUNDLE, bundle_cmd, bundle_copy, run, run_cli, workflow

CONFIGS = ["train.yaml", "train_adversarial.yaml"]


# ------------------------------------------------------------------------------------------ toy trainer
def _toy_data(n: int = 32) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(n):
        y = i % 2
        x = 0.2 * torch.rand(1, 6, 6, generator=g) + (0.5 if y else 0.2)  # class 1: brighter
        items.append({"image": x, "label": torch.tensor([float(y)])})
    return items


def _trainer(loss: AdversarialTrainingLoss, network: nn.Module, epochs: int = 1, lr: float = 0.05, **kw):
    from monai.engines import SupervisedTrainer

    loader = torch.utils.data.DataLoader(_toy_data(), batch_size=8, shuffle=False)
    return SupervisedTrainer(device=torch.device("cpu"), max_epochs=epochs, train_data_loader=loader,
                             network=network, optimizer=torch.optim.SGD(network.parameters(), lr=lr),
                             loss_function=nn.BCEWithLogitsLoss(), iteration_update=AdversarialTrainingStep(loss),
                             decollate=False, **kw)


def _linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 1))


@pytest.mark.parametrize("method", ["pgd_at", "trades", "mart"])
def test_step_output_events_and_pred(method):
    """The output dict has MONAI's keys; pred is the method's first training-mode forward: f(x') for PGD-AT, f(x)
    for TRADES and MART (lr 0 keeps the weights, so the test recomputes them); the four events fire in order."""
    from monai.engines.utils import IterationEvents

    loss = AdversarialTrainingLoss(method, eps=8 / 255, steps=2)
    seen = []
    craft = loss.forward

    def recording(model, x, y):
        out = craft(model, x, y)
        seen.append((x, out[1]))
        return out

    loss.forward = recording
    net = _linear()
    trainer = _trainer(loss, net, lr=0.0)
    events = []
    for ev in (IterationEvents.FORWARD_COMPLETED, IterationEvents.LOSS_COMPLETED,
               IterationEvents.BACKWARD_COMPLETED, IterationEvents.MODEL_COMPLETED):
        trainer.add_event_handler(ev, lambda e, ev=ev: events.append(ev))
    last = {}
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: last.update(e.state.output))
    trainer.run()
    assert {"image", "label", "pred", "loss"} <= set(last) and last["pred"].shape == (8, 1)
    assert last["loss"].ndim == 0 and torch.isfinite(last["loss"])
    x, x_adv = seen[-1]
    assert 0 < (x_adv - x).abs().max() <= 8 / 255 + 1e-6
    with torch.no_grad():
        torch.testing.assert_close(last["pred"], net(x_adv if method == "pgd_at" else x))
    assert events[:4] == [IterationEvents.FORWARD_COMPLETED, IterationEvents.LOSS_COMPLETED,
                          IterationEvents.BACKWARD_COMPLETED, IterationEvents.MODEL_COMPLETED]
    assert len(events) == 4 * trainer.state.iteration


def test_step_trains_and_restores_modes():
    """PGD-AT on separable toy data: the epoch loss goes down; batch norm stays in training mode afterwards."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 1))
    trainer = _trainer(AdversarialTrainingLoss("pgd_at", eps=2 / 255, steps=2), net, epochs=6)
    losses, epoch = [], []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: epoch.append(e.state.output["loss"].item()))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: (losses.append(sum(epoch) / len(epoch)), epoch.clear()))
    trainer.run()
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(m.training for m in net.modules())


def test_step_refuses_amp_and_wrong_loss():
    trainer = _trainer(AdversarialTrainingLoss("trades", eps=1 / 255, steps=1), _linear())
    trainer.amp = True
    with pytest.raises(MedAdvInputError, match=r"^train#trainer#amp: adversarial training runs in float32"):
        trainer.run()
    with pytest.raises(MedAdvInputError, match="needs an AdversarialTrainingLoss"):
        AdversarialTrainingStep(nn.BCEWithLogitsLoss())
    loss = AdversarialTrainingLoss("pgd_at", eps=4 / 255)
    with pytest.raises(MedAdvInputError, match="an EpsWarmup of the step's own loss"):
        AdversarialTrainingStep(loss, warmup=EpsWarmup(AdversarialTrainingLoss("pgd_at", eps=4 / 255), 1))


# ------------------------------------------------------------------------------------------ warm-up
def test_warmup_eps_schedule_follows_the_engine_state():
    eps = 8 / 255
    assert warmup_eps(eps, 1, 10, 0) == eps  # off
    # 2 epochs of 4 iterations: eps/8, 2 eps/8, ..., eps at iteration 8, then eps
    got = [warmup_eps(eps, i, 4, 2) for i in range(1, 11)]
    torch.testing.assert_close(torch.tensor(got), torch.tensor([eps * min(1, i / 8) for i in range(1, 11)]))
    assert got[7] == eps and got[9] == eps and got[0] == pytest.approx(eps / 8)

    from ignite.engine import Engine

    loss = AdversarialTrainingLoss("mart", eps=eps)
    warm = EpsWarmup(loss, warmup_epochs=2)
    engine, seen = Engine(lambda e, b: None), []
    warm.attach(engine)
    engine.add_event_handler(Events.ITERATION_STARTED, lambda e: seen.append(loss.eps))
    engine.run(range(4), max_epochs=3)
    assert seen == [warmup_eps(eps, i, 4, 2) for i in range(1, 13)] and seen[-1] == eps
    # a resumed run (the iteration count restored, as the checkpoint does) continues the same schedule
    loss.eps, seen[:] = eps, []
    engine = Engine(lambda e, b: None)
    warm.attach(engine)
    engine.add_event_handler(Events.ITERATION_STARTED, lambda e: seen.append(loss.eps))
    engine.load_state_dict({"iteration": 4, "epoch_length": 4, "max_epochs": 3})
    engine.run(range(4), max_epochs=3)
    assert seen == [warmup_eps(eps, i, 4, 2) for i in range(5, 13)]


# ------------------------------------------------------------------------------------------ settings
@pytest.mark.parametrize(("kw", "msg"), [
    ({"method": "fgsm"}, r"^method \(the adversarial training method\): expected one of \['pgd_at', 'trades', "),
    ({"eps": 8}, r"^eps \(the training budget\) must be a number in \[0, 1\]"),
    ({"alpha": 0.0}, r"^alpha \(the inner step size"),
    ({"steps": 0}, r"^steps \(inner PGD iterations\) must be an integer >= 1"),
    ({"beta": -1}, r"^beta \(the TRADES/MART weight\) must be a finite number >= 0"),
    ({"warmup_epochs": 1.5}, r"^warmup_epochs \(0: no eps warm-up\) must be an integer >= 0"),
])
def test_bad_settings_name_their_id(kw, msg):
    good = {"method": "TRADES", "eps": 4 / 255, "alpha": None, "steps": 10, "beta": 6, "warmup_epochs": 0}
    assert check_adversarial_settings(**good)["method"] == "trades"
    with pytest.raises(MedAdvInputError, match=msg):
        check_adversarial_settings(**{**good, **kw})


def test_overlay_composes_with_the_multi_gpu_config():
    """The overlay leaves initialize and the handler lists alone (so multi_gpu_train.yaml merges with it in either
    order); its check runs through `checks`, which both initializes run before anything is written."""
    import yaml

    configs = CLASSIFIER_BUNDLE / "configs"
    overlay = yaml.safe_load((configs / "train_adversarial.yaml").read_text())
    assert "initialize" not in overlay and not any(k.endswith("handlers") for k in overlay)
    assert overlay["checks"] == ["@adversarial_check"]
    for name in ("train.yaml", "multi_gpu_train.yaml"):
        init = yaml.safe_load((configs / name).read_text())["initialize"]
        opened = next(i for i, item in enumerate(init) if "run_log.open()" in item)
        assert init.index("$@checks") < opened, name


# ------------------------------------------------------------------------------------------ bundle runs
def _settings(synth_dir: Path, work: Path, out: Path, epochs: int, **extra) -> dict:
    return {"dataset_dir": str(synth_dir), "work_dir": str(work), "output_dir": str(out), "image_size": [32, 32],
            "batch_size": 16, "train#trainer#max_epochs": epochs, "steps": 2, **extra}


@pytest.mark.slow
def test_overlay_runs_end_to_end_and_refuses_a_bad_method(synth_dir, tmp_path):
    bundle = bundle_copy(CLASSIFIER_BUNDLE, tmp_path / "b")
    out = tmp_path / "out"
    settings = _settings(synth_dir, tmp_path / "work", out, 2)
    proc = run(bundle_cmd(bundle, CONFIGS, **settings), tmp_path)
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-3000:]
    state = torch.load(out / "model.pt", weights_only=True)
    assert {"model", "settings"} <= set(state) and state["settings"]["modalities"] == ["t2"]
    metrics = json.loads((out / "val_metrics.json").read_text())
    assert metrics["epoch"] == 2 and 0 <= metrics["val_auc"] <= 1
    stamp = json.loads((out / "checkpoints" / "settings.json").read_text())["description"]
    assert stamp["adversarial_training"] == {"method": "pgd_at", "eps": 4 / 255, "alpha": None, "step_size": 1 / 255,
                                             "steps": 2, "beta": 6.0, "warmup_epochs": 0}
    assert recorded_training(out / "model.pt") == stamp["adversarial_training"]  # stage 3's comparison reads it
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = list((out / "runs").glob("*/events.out.tfevents.*"))
    acc = EventAccumulator(str(events))
    acc.Reload()
    losses = [e.value for e in acc.Scalars("train_loss")]
    assert losses and all(torch.isfinite(torch.tensor(losses)))

    bad = run(bundle_cmd(bundle, CONFIGS, **{**settings, "output_dir": str(tmp_path / "bad"), "method": "fgsm"}),
              tmp_path)
    line = [ln for ln in bad.stderr.splitlines() if ln.strip()][-1]
    assert bad.returncode != 0 and line.startswith("error: method (the adversarial training method)"), line
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad" / "runs").exists()  # refused before writing


def _train(bundle: Path, settings: dict, stop_after_epoch: int | None = None):
    wf = workflow(bundle, CONFIGS, "train", **settings)
    wf.initialize()
    if stop_after_epoch is not None:  # an interruption after that epoch's checkpoint (attached before this)
        trainer = wf.parser.get_parsed_content("train#trainer")
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_after_epoch), lambda e: e.terminate())
    wf.run()
    wf.finalize()
    return wf


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_model(synth_dir, tmp_path):
    """MART with a 2-epoch warm-up, stopped after epoch 1 and resumed, ends with the weights and validation metrics
    of an uninterrupted run; resuming with another method is refused, naming the setting. (In process: the
    overlay's ids as ``ConfigWorkflow`` sees them.)"""
    bundle = bundle_copy(CLASSIFIER_BUNDLE, tmp_path / "b")
    work = tmp_path / "work"
    settings = {d: _settings(synth_dir, work, tmp_path / d, 2, method="mart", warmup_epochs=2)
                for d in ("full", "split")}
    assert _train(bundle, settings["full"]).check_properties() == []  # MONAI's train workflow ids are all there
    _train(bundle, settings["split"], stop_after_epoch=1)
    assert [p.name for p in (tmp_path / "split" / "checkpoints").glob("*.pt")] == ["checkpoint_epoch=1.pt"]

    wf = workflow(bundle, CONFIGS, "train", **{**settings["split"], "method": "trades"})
    with pytest.raises(Exception) as info:
        wf.initialize()
    err = find_input_error(info.value) or info.value
    assert "adversarial_training" in str(err) and "mart" in str(err) and "trades" in str(err), err

    wf = _train(bundle, settings["split"])
    assert wf.parser.get_parsed_content("train#checkpointing")[0].loaded.name == "checkpoint_epoch=1.pt"
    full, split = (torch.load(tmp_path / d / "model.pt", weights_only=True) for d in ("full", "split"))
    for k, v in full["model"].items():
        torch.testing.assert_close(split["model"][k], v, rtol=1e-5, atol=1e-6)
    m_full, m_split = (json.loads((tmp_path / d / "val_metrics.json").read_text()) for d in ("full", "split"))
    assert m_split == pytest.approx(m_full, abs=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_adversarial_training_runs_on_two_gloo_processes(synth_dir, tmp_path):
    """train.yaml + train_adversarial.yaml + multi_gpu_train.yaml under torchrun (2 CPU processes): TRADES with a
    warm-up trains, rank 0 alone writes the model with its training record."""
    bundle = bundle_copy(CLASSIFIER_BUNDLE, tmp_path / "b")
    out = tmp_path / "out"
    settings = _settings(synth_dir, tmp_path / "work", out, 1, method="trades", warmup_epochs=1)
    files = "[" + ",".join(f"'{bundle / 'configs' / c}'" for c in [*CONFIGS, "multi_gpu_train.yaml"]) + "]"
    args = [f"--{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in settings.items()]
    run_cli(["torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2", "-m", "monai.bundle", "run",
             "--config_file", files, "--bundle_root", str(bundle), *args], cwd=tmp_path, timeout=900)
    assert recorded_training(out / "model.pt")["method"] == "trades"
    assert len(list((out / "runs").glob("*/events.out.tfevents.*"))) == 1  # rank 0 only

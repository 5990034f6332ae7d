"""The decision threshold: Youden's J on the validation split, stored with the model, used in eval mode."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events

from medadv_monai.handlers import CalibrateThreshold
from medadv_monai.metrics import youden_threshold
from medadv_monai.networks import SliceClassifier


def test_youden_threshold_separates_and_prefers_zero_on_ties():
    z = torch.tensor([-3.0, -1.0, 0.5, 2.0, 4.0])
    y = torch.tensor([0, 0, 0, 1, 1])
    assert youden_threshold(z, y) == pytest.approx(1.25)  # between 0.5 (negative) and 2 (positive): J = 1
    # every threshold in (-1, 2) is perfect here; the one closest to 0 is taken among the midpoints
    assert youden_threshold(torch.tensor([-1.0, 2.0]), torch.tensor([0, 1])) == pytest.approx(0.5)
    assert youden_threshold(z, torch.ones(5)) == 0.0  # one class: nothing to balance
    # an imbalanced overlap: J picks the point that trades sensitivity against specificity, not accuracy
    z2 = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0, 1.2, 0.5, 0.7])
    y2 = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 1, 1])
    t = youden_threshold(z2, y2)
    pred = z2 > t
    assert bool(pred[y2 == 1].all())  # both positives caught


def test_classifier_threshold_shifts_eval_logits_and_round_trips():
    torch.manual_seed(0)
    net = SliceClassifier(in_channels=1, channels=(4, 8)).eval()
    x = torch.rand(3, 1, 16, 16)
    raw = net(x)
    net.decision_threshold.fill_(0.7)
    torch.testing.assert_close(net(x), raw - 0.7)
    net.train()
    assert not torch.equal(net(x), raw - 0.7)  # train mode: raw logits (batch norm aside)
    fresh = SliceClassifier(in_channels=1, channels=(4, 8))
    fresh.load_state_dict(net.state_dict())
    assert float(fresh.decision_threshold) == pytest.approx(0.7)
    old = {k: v for k, v in net.state_dict().items() if k != "decision_threshold"}
    SliceClassifier(in_channels=1, channels=(4, 8)).load_state_dict(old)  # an older checkpoint loads, t = 0


def test_calibrate_threshold_handler_sets_the_buffer_from_shifted_outputs():
    net = SliceClassifier(in_channels=1, channels=(4, 8)).eval()
    net.decision_threshold.fill_(1.0)  # outputs are already shifted by the previous threshold
    raw = torch.tensor([-2.0, 0.0, 1.5, 3.0])
    labels = torch.tensor([0.0, 0.0, 1.0, 1.0])
    probs = torch.sigmoid(raw - 1.0)
    engine = Engine(lambda e, b: b)
    handler = CalibrateThreshold(net)
    handler.attach(engine)
    engine.run([{"pred": probs[:2, None], "label": labels[:2, None]}, {"pred": probs[2:, None],
                                                                         "label": labels[2:, None]}], max_epochs=1)
    expected = youden_threshold(raw, labels)
    assert float(net.decision_threshold) == pytest.approx(expected, abs=1e-4)
    assert engine.state.metrics["val_threshold"] == pytest.approx(expected, abs=1e-4)


def test_calibrate_threshold_recomputes_the_rates_at_the_new_threshold():
    net = SliceClassifier(in_channels=1, channels=(4, 8)).eval()
    net.decision_threshold.fill_(5.0)  # a stale threshold: every slice was predicted negative during the run
    raw = torch.tensor([-2.0, -1.0, 0.5, 1.0, 2.5, 3.0])
    labels = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    engine = Engine(lambda e, b: b)
    stale = {"val_acc": 0.5, "val_sensitivity": 0.0, "val_specificity": 1.0}
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(stale))  # as metrics do
    CalibrateThreshold(net, recompute={"val_acc": "accuracy", "val_sensitivity": "sensitivity",
                                       "val_specificity": "specificity"}).attach(engine)
    engine.run([{"pred": torch.sigmoid(raw - 5.0)[:, None], "label": labels[:, None]}], max_epochs=1)
    t = float(net.decision_threshold)
    assert 0.5 < t <= 1.0  # separates the classes
    assert engine.state.metrics["val_acc"] == 1.0 and engine.state.metrics["val_sensitivity"] == 1.0
    assert engine.state.metrics["val_specificity"] == 1.0
    with pytest.raises(ValueError, match="recompute \\['f1'\\]"):
        CalibrateThreshold(net, recompute={"val_f1": "f1"})

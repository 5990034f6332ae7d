"""Tests of the MONAI wrappers (transforms, inferer + prepare_batch in a real SupervisedEvaluator)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.transforms import Compose
from torch import nn

from medadv_monai.attacks import (
    AdversarialInferer,
    AdversarialPerturb,
    AdversarialPerturbd,
    PrepareAttackBatch,
    fgsm,
    pgd,
    run_attack,
)
from medadv_monai.errors import MedAdvInputError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread (conftest)


def tiny_net(k: int = 1, channels: int = 1, dims: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    pool = nn.AdaptiveAvgPool2d if dims == 2 else nn.AdaptiveAvgPool3d
    return nn.Sequential(
        conv(channels, 4, 3, padding=1), nn.Tanh(), pool(2), nn.Flatten(), nn.Linear(4 * 2**dims, k)
    ).eval()


def sample(seed: int, shape=(1, 8, 8)) -> dict:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(shape, generator=g)
    mask = torch.zeros((1, *shape[1:]))
    mask[:, 2:6, 1:5] = 1.0
    return {"image": image, "label": torch.tensor(seed % 2), "mask": mask}


# ----------------------------------------------------------------------------------------------------------------
# transforms
# ----------------------------------------------------------------------------------------------------------------
def test_perturbd_equals_core_on_batched_sample() -> None:
    net = tiny_net()
    d = sample(3)
    t = AdversarialPerturbd(keys="image", label_key="label", model=net, attack="pgd", eps=0.05, alpha=0.02, steps=4,
                            generator=torch.Generator().manual_seed(7))
    out = t(d)
    ref = pgd(net, d["image"][None], d["label"].reshape(1), eps=0.05, alpha=0.02, steps=4,
              generator=torch.Generator().manual_seed(7))[0]
    assert torch.equal(out["image"], ref)
    assert not torch.equal(out["image"], d["image"])
    assert out["label"] is d["label"] and "image" in d  # other entries untouched, input dict not replaced


def test_perturbd_mask_key_and_output_key() -> None:
    net = tiny_net(k=2)
    d = sample(4)
    clean = d["image"].clone()
    t = AdversarialPerturbd(keys="image", label_key="label", mask_key="mask", model=net, attack="fgsm", eps=0.1,
                            output_key="image_adv")
    out = t(d)
    assert torch.equal(out["image"], clean)  # clean image kept
    adv = out["image_adv"]
    ref = fgsm(net, clean[None], d["label"].reshape(1), eps=0.1, mask=d["mask"][None])[0]
    assert torch.equal(adv, ref)
    m = d["mask"].expand_as(adv)
    assert torch.equal(adv[m == 0], clean[m == 0])
    assert float((adv - clean)[m == 1].abs().max()) > 0.05


def test_perturb_array_keeps_type_and_meta() -> None:
    net = tiny_net(dims=3)
    img = MetaTensor(torch.rand(1, 4, 6, 6), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    t = AdversarialPerturb(net, attack="bim", eps=0.05, alpha=0.02, steps=3)
    out = t(img, 1)
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, img.affine)
    assert float((out - img).abs().max()) <= 0.05 + 1e-6
    out_np = t(img.numpy(), np.array([1]))
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float32
    np.testing.assert_allclose(out_np, out.numpy(), atol=0)


def test_perturbd_in_compose_and_errors() -> None:
    net = tiny_net()
    t = Compose([AdversarialPerturbd(keys="image", model=net, attack="fgsm", eps=0.02)])
    out = t(sample(1))
    assert float((out["image"] - sample(1)["image"]).abs().max()) <= 0.02 + 1e-6
    with pytest.raises(MedAdvInputError, match="label key 'lbl' is missing"):
        AdversarialPerturbd(keys="image", label_key="lbl", model=net)(sample(1))
    with pytest.raises(MedAdvInputError, match="unknown attack 'foo'"):
        AdversarialPerturbd(keys="image", model=net, attack="foo")
    with pytest.raises(MedAdvInputError, match="model"):
        AdversarialPerturbd(keys="image")
    both = AdversarialPerturbd(keys=["image", "other"], model=net, attack="fgsm", eps=0.02, allow_missing_keys=True)
    assert "other" not in both(sample(1))


# ----------------------------------------------------------------------------------------------------------------
# inferer in a real SupervisedEvaluator
# ----------------------------------------------------------------------------------------------------------------
def _loader(n: int = 6, batch_size: int = 3) -> DataLoader:
    return DataLoader(Dataset([sample(i) for i in range(n)]), batch_size=batch_size, shuffle=False, num_workers=0)


@pytest.mark.parametrize("k", [1, 3])
def test_inferer_in_supervised_evaluator(k: int) -> None:
    net = tiny_net(k=k)
    grad_enabled: list[bool] = []
    net.register_forward_pre_hook(lambda m, a: grad_enabled.append(torch.is_grad_enabled()))
    inferer = AdversarialInferer("pgd", eps=0.1, alpha=0.03, steps=3, generator=torch.Generator().manual_seed(0))
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=_loader(),
        network=net,
        inferer=inferer,
        prepare_batch=PrepareAttackBatch(label_key="label", mask_key="mask"),
        decollate=False,
    )
    preds: list[torch.Tensor] = []
    evaluator.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: preds.append(e.state.output["pred"].detach().clone()),
    )
    evaluator.run()
    assert len(preds) == 2 and preds[0].shape == (3, k)
    assert grad_enabled.count(False) == 2  # the final predictions ran under the evaluator's no_grad
    assert grad_enabled.count(True) == 2 * 3  # the attack steps had gradients
    assert not any(p.grad is not None for p in net.parameters())
    assert not net.training

    batch = next(iter(_loader()))
    x, y, m = batch["image"], batch["label"], batch["mask"]
    with torch.no_grad():
        clean = net(x)
        x_adv = AdversarialInferer("pgd", eps=0.1, alpha=0.03, steps=3,
                                   generator=torch.Generator().manual_seed(0)).perturb(x, net, labels=y, mask=m)
        adv_pred = net(x_adv)
    assert not torch.allclose(clean, preds[0])
    torch.testing.assert_close(preds[0], adv_pred, atol=1e-6, rtol=0)
    mm = m.expand_as(x)
    assert torch.equal(torch.as_tensor(x_adv)[mm == 0], torch.as_tensor(x)[mm == 0])
    assert float((torch.as_tensor(x_adv) - torch.as_tensor(x))[mm == 1].abs().max()) > 0.05
    assert float((torch.as_tensor(x_adv) - torch.as_tensor(x)).abs().max()) <= 0.1 + 1e-6


def test_inferer_targeted_default_and_explicit_targets() -> None:
    batch = next(iter(_loader(4, 4)))
    x, y = batch["image"], batch["label"]
    net1 = tiny_net(k=1)
    inf = AdversarialInferer("bim", targeted=True, eps=0.1, alpha=0.03, steps=3)
    with torch.no_grad():
        x_adv = inf.perturb(x, net1, labels=y)
    ref = run_attack("bim", net1, x, 1 - y, eps=0.1, alpha=0.03, steps=3, targeted=True)
    torch.testing.assert_close(torch.as_tensor(x_adv), ref, atol=0, rtol=0)

    net3 = tiny_net(k=3)
    with pytest.raises(MedAdvInputError, match="3-class model needs explicit targets"):
        inf.perturb(x, net3, labels=y)
    t = torch.tensor([2, 2, 0, 1])
    out = inf(x, net3, labels=y, targets=t)
    assert out.shape == (4, 3)
    with pytest.raises(MedAdvInputError, match="needs labels"):
        AdversarialInferer("fgsm")(x, net3)


def test_prepare_attack_batch() -> None:
    batch = next(iter(_loader(2, 2)))
    batch["t"] = torch.tensor([1, 0])
    image, label, args, kwargs = PrepareAttackBatch("label", "mask", "t")(batch, torch.device("cpu"))
    assert image is not None and args == ()
    assert set(kwargs) == {"labels", "mask", "targets"} and torch.equal(kwargs["targets"], batch["t"])
    assert torch.equal(label, kwargs["labels"])
    with pytest.raises(MedAdvInputError, match="mask key 'nope' is missing"):
        PrepareAttackBatch(mask_key="nope")(batch)

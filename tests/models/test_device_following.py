"""Everything in the masking core follows the model's device. The meta device stands in for a GPU:
a tensor pinned to the CPU anywhere on these paths either fails to mix with the meta tensors or
comes out on the CPU, and both are caught here."""

import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from models.masking import MaskConfig, MaskedModel, make_optimizer, training_step
from models.masking.sampling import _keyed_forward, _keyed_logit_gradient, _keyed_weight_gradient, draw_keys

META = torch.device("meta")
ROOT = Path(__file__).resolve().parents[2]


def _meta_model() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).to(META)


def test_a_masked_model_on_another_device_keeps_every_tensor_there():
    masked = MaskedModel(_meta_model(), MaskConfig(num_samples=4))
    optimizer = make_optimizer(masked)
    x = torch.randn(8, 6, device=META)
    loss = training_step(masked, optimizer, lambda: masked(x).square().mean())
    assert loss.device == META
    tensors = [*masked.logits, *(l.grad for l in masked.logits), *masked.sample_uniforms(),
               *(s for state in optimizer.state.values() for name, s in state.items() if name != "step")]
    # Adam keeps its step counter on the CPU on purpose (a host scalar, unless capturable=True)
    assert {t.device for t in tensors} == {META}


def test_masks_training_in_a_pack_keep_every_tensor_on_the_model_device():
    import copy
    import threading

    from models.masking.packing import MaskPack

    pack, network = MaskPack(), _meta_model()
    members = [MaskedModel(copy.deepcopy(network), MaskConfig(num_samples=2)) for _ in range(2)]
    x = torch.randn(8, 6, device=META)
    for masked in members:  # the first step checks that vmap batches the model (alone)
        masked(x).sum().backward()
        masked.pack = pack
    started, losses = threading.Barrier(2), []

    def step(masked):
        with pack.member():
            started.wait()
            losses.append(training_step(masked, make_optimizer(masked), lambda: masked(x).square().mean()))

    threads = [threading.Thread(target=step, args=(m,)) for m in members]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert pack.packed_forwards == 2
    assert {loss.device for loss in losses} == {META}
    assert {l.grad.device for m in members for l in m.logits} == {META}


def test_joint_training_with_frozen_entries_stays_on_the_model_device():
    model = _meta_model()
    frozen = {"0.weight": torch.zeros(8, 6, dtype=torch.bool, device=META)}
    masked = MaskedModel(model, MaskConfig(num_samples=2), train_weights=True, frozen_weights=frozen)
    masked(torch.randn(4, 6, device=META)).sum().backward()
    assert {p.grad.device for p in model.parameters()} == {META}


def test_the_fused_kernels_draw_their_noise_on_the_weights_device():
    """The functions the fused path compiles, run eagerly on the meta device (a compiler for meta
    does not exist; these are the same graphs)."""
    weight, logits = torch.randn(8, 6, device=META), torch.zeros(8, 6, device=META)
    (key,) = draw_keys(1, META)
    grad = torch.randn(4, 8, 6, device=META)
    outputs = [_keyed_forward(weight, logits, key, 4), _keyed_logit_gradient(weight, logits, key, grad, 1.0),
               _keyed_weight_gradient(logits, key, grad)]
    assert [o.device for o in outputs] == [META] * 3
    assert [tuple(o.shape) for o in outputs] == [(4, 8, 6), (8, 6), (8, 6)]


def test_models_and_the_mask_step_benchmarks_import_with_torch_alone():
    """No Ray, no MLflow: they must run on a machine that has only torch."""
    code = ("import sys; sys.modules.update(ray=None, mlflow=None); "
            "import models, models.masking.packing, benchmarks.mask_step, benchmarks.packed_masks")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr

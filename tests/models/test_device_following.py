"""Everything in the masking core follows the model's device. The meta device stands in for a GPU:
a tensor pinned to the CPU anywhere on these paths either fails to mix with the meta tensors or
comes out on the CPU, and both are caught here."""

import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from models.masking import MaskConfig, MaskedModel, make_optimizer, training_step
from models.masking.counter_noise import draw_keys
from models.masking.fused_sampling import _keyed_forward, _keyed_logit_gradient, _keyed_weight_gradient

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


def test_eager_noise_from_a_generator_on_another_device_is_drawn_there_and_moved():
    """After a fallback from the fused path on a GPU, the mask's (CPU) generator still decides its
    noise: the same uniforms as a CPU model drawing from an equal generator, on the model's device."""
    on_meta = MaskedModel(_meta_model(), MaskConfig(num_samples=2))
    on_cpu = MaskedModel(nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)),
                         MaskConfig(num_samples=2))
    on_meta.noise_generator, on_cpu.noise_generator = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    meta_uniforms, cpu_uniforms = on_meta.sample_uniforms(), on_cpu.sample_uniforms()
    assert {u.device for u in meta_uniforms} == {META}
    assert [(u.shape, u.stride()) for u in meta_uniforms] == [(u.shape, u.stride()) for u in cpu_uniforms]
    assert on_meta.noise_generator.get_state().equal(on_cpu.noise_generator.get_state())


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
            "import models, models.masking.packing, benchmarks.mask_step, benchmarks.packed_masks, "
            "benchmarks.families, benchmarks.gpu_check")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_the_gpu_check_says_so_and_exits_cleanly_without_a_gpu():
    if torch.cuda.is_available():
        import pytest
        pytest.skip("a GPU is here: the check would run")
    result = subprocess.run([sys.executable, "benchmarks/gpu_check.py"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "No CUDA device" in result.stdout


# -- nothing in models/ pins a device ---------------------------------------------------------------
# The meta-device tests above run the masking core; this reads every file of models/, so a model
# file or a path those tests do not reach is covered too.
_FACTORIES = {"zeros", "ones", "full", "empty", "arange", "rand", "randn", "randint", "randperm", "tensor",
              "eye", "linspace", "logspace", "as_tensor", "from_numpy"}
_PINNING_METHODS = {"cpu", "cuda"}

# (file, enclosing function) -> why a tensor made there without `device=` (or moved to the host) is right
_ALLOWED = {
    ("models/transformer.py", "_sinusoidal_positions"): "built once into a buffer, which moves with the model",
    ("models/masking/sampling.py", "_cpu_uniforms"): "the CPU branch of sample_uniforms",
    ("models/masking/fused_sampling.py", "<module>"): "the cached element indices of the CPU kernels",
    ("models/masking/fused_sampling.py", "_element_indices"): "used by the CPU kernels only",
    ("models/masking/counter_noise.py", "draw_keys"): "keys drawn from a CPU generator, then moved to the device",
    ("models/masking/masks.py", "from_logits"): "Masks are host objects (saved, compared, counted)",
    ("models/masking/masks.py", "save"): "Masks are host objects",
    ("models/masking/masks.py", "load"): "Masks are host objects",
    ("models/masking/masks.py", "keep_probability_histogram"): "a NumPy histogram",
    ("models/masking/masked_model.py", "frozen_identity"): "hashes the weights' bytes on the host",
    ("models/masking/batching.py", "whole_batch_output_shapes"): "a model without tensors has no device",
    ("models/masking/training.py", "_freshly_initialised"): "a seed, a host scalar",
}


def _device_pinning(path: Path) -> list[tuple[str, int, str]]:
    """(enclosing function, line, what) for each tensor made without `device=` or pinned to a named device."""
    import ast

    tree = ast.parse(path.read_text())
    found = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, child.name)
                continue
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute):
                name, owner = child.func.attr, child.func.value
                keywords = {k.arg: k.value for k in child.keywords}
                literal_device = [a for a in [*child.args, *keywords.values()]
                                  if isinstance(a, ast.Constant) and a.value in ("cpu", "cuda")
                                  or isinstance(a, ast.Constant) and str(a.value).startswith("cuda:")]
                if isinstance(owner, ast.Name) and owner.id == "torch" and name in _FACTORIES \
                        and "device" not in keywords:
                    found.append((function, child.lineno, f"torch.{name}(...) without device="))
                elif name in _PINNING_METHODS and not child.args:
                    found.append((function, child.lineno, f".{name}()"))
                elif literal_device and (name in ("to", "device") or "device" in keywords):
                    found.append((function, child.lineno, f"{name}(...) with a literal device"))
            visit(child, function)

    visit(tree, "<module>")
    return found


def test_nothing_in_models_makes_a_tensor_on_a_fixed_device():
    offenders = []
    for path in sorted((ROOT / "models").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        offenders += [f"{relative}:{line} in {function}: {what}" for function, line, what in _device_pinning(path)
                      if (relative, function) not in _ALLOWED]
    assert not offenders, "tensors that do not follow the input's device:\n" + "\n".join(offenders)


def test_the_device_check_finds_what_it_looks_for(tmp_path):
    """The check must be able to fail: each form it looks for, in a file of its own."""
    source = tmp_path / "model.py"
    source.write_text(
        "import torch\n"
        "def forward(x):\n"
        "    a = torch.zeros(3)\n"
        "    b = torch.arange(4, device=x.device)\n"  # follows the input: not reported
        "    c = x.cuda()\n"
        "    d = x.to('cpu')\n"
        "    e = torch.ones(2, device='cuda')\n"
        "    return a, b, c, d, e\n")
    assert [(f, line) for f, line, _ in _device_pinning(source)] == [("forward", 3), ("forward", 5),
                                                                     ("forward", 6), ("forward", 7)]

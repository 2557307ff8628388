"""The CIFAR-10 recipes: fixed output layer, IoU rows, and a class-removal mask that removes a class."""

import pytest
import torch

from models.simple_cnn import build_simple_cnn
from models.masking import MaskConfig, MaskedModel, Masks, make_optimizer, training_step
from pipeline.config import override
from pipeline.experiments import get_experiment
from pipeline.stages import TrialContext, load_network, mask_files, pretrained_network, train_mask
from pipeline.storage import Storage
from pipeline.evaluate import iou_rows
from pipeline.studies.cifar10 import FIXED_LOGIT, fix_output_layer, output_layer_parameters
from tasks.cifar10 import Cifar10Options, Cifar10Task
from tests.tasks.cifar_data import EASY_CLASS, accept_generated_checksums, write_cifar10
from pipeline.trial import resolve


def _masks(**bits):
    return Masks({name: torch.tensor(values, dtype=torch.bool) for name, values in bits.items()})


def test_iou_of_a_mask_with_itself_is_one_and_of_disjoint_masks_zero():
    same = _masks(**{"a.weight": [1, 1, 0, 0], "b.weight": [1, 0]})
    disjoint_a = _masks(**{"a.weight": [1, 1, 0, 0], "b.weight": [0, 0]})
    disjoint_b = _masks(**{"a.weight": [0, 0, 1, 1], "b.weight": [0, 1]})
    half_a = _masks(**{"a.weight": [1, 1, 1, 0], "b.weight": [0, 0]})
    half_b = _masks(**{"a.weight": [0, 1, 1, 1], "b.weight": [0, 0]})
    pairs = {"pair-x-y": (same, same), "pair-x-z": (disjoint_a, disjoint_b), "pair-y-z": (half_a, half_b)}
    rows = {(r["pair"], r["layer"]): r for r in iou_rows(pairs)}
    assert rows["pair-x-y", "all"]["iou"] == 1.0
    assert rows["pair-x-z", "all"]["iou"] == 0.0
    assert rows["pair-y-z", "all"]["iou"] == pytest.approx(2 / 4)  # {1, 2} of {0, 1, 2, 3}
    assert rows["pair-y-z", "b"]["iou"] is None  # neither mask keeps a weight of layer b
    assert (rows["pair-x-z", "a"]["kept_a"], rows["pair-x-z", "a"]["kept_b"], rows["pair-x-z", "a"]["total"]) == (2, 2, 4)


def test_fixed_output_layer_equals_the_control_mask_and_never_trains(tmp_path):
    model = build_simple_cnn(3, (4, 8), 10).eval()
    masked = MaskedModel(model, MaskConfig.from_beta(1e-1, 8, num_samples=2))
    assert output_layer_parameters(model) == ["classifier.weight", "classifier.bias"]
    control = {name: torch.randn_like(logit) for name, logit in masked.logits_by_name().items()}
    torch.save(control, tmp_path / "control.logits.pt")
    fix_output_layer(tmp_path / "control.logits.pt")(masked)
    optimizer = make_optimizer(masked, mask_lr=0.5)
    images, labels = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    for _ in range(3):
        training_step(masked, optimizer, lambda: torch.nn.functional.cross_entropy(masked(images), labels))
    logits = masked.logits_by_name()
    for name in ("classifier.weight", "classifier.bias"):
        assert torch.equal(masked.deterministic_masks().tensors[name], control[name] > 0)
        assert torch.equal(logits[name].abs(), torch.full_like(logits[name], FIXED_LOGIT))
    assert not torch.equal(logits["features.0.weight"], torch.full_like(logits["features.0.weight"], 2.1972))


@pytest.mark.slow
def test_removing_an_easy_class_drops_that_class_and_keeps_the_control_output_layer(tmp_path):
    """Class 0 of the generated data is one constant colour; a mask trained without it, output layer
    fixed to the control mask's, loses that class while the control mask keeps it."""
    data = tmp_path / "data"
    write_cifar10(data, train_per_class=30, test_per_class=20)
    settings = {"pretrain.steps": 150, "pretrain.batch_size": 32, "mask.steps": 150, "mask.batch_size": 32,
                "mask.lr": 0.05, "mask.beta": 1e-2, "model.channels": "8,8,16,16", "data_dir": str(data)}
    config = override(get_experiment("cifar10-cnn-nodropout", smoke=True), settings)
    with accept_generated_checksums(data):
        task = Cifar10Task(Cifar10Options(), data)
    ctx = TrialContext(resolve(config), task, tmp_path / "results", Storage(tmp_path / "results", None))
    network = pretrained_network(ctx)
    control_logits = train_mask(ctx, "all", "all", network)
    train_mask(ctx, "without-airplane", "without-airplane", network, prepare=fix_output_layer(control_logits))
    model = load_network(ctx, network)
    control, removal = (Masks.load(mask_files(ctx, name)[0], model) for name in ("all", "without-airplane"))
    assert torch.equal(removal.tensors["classifier.weight"], control.tensors["classifier.weight"])
    batches = task.eval_batches("test", 1000)
    from models.masking import applied

    with applied(model, control):
        control_accuracy = task.confusion_matrix(model, batches).diagonal()[EASY_CLASS].item() / 20
    with applied(model, removal):
        removal_accuracy = task.confusion_matrix(model, batches).diagonal()[EASY_CLASS].item() / 20
    assert control_accuracy >= 0.9
    assert removal_accuracy <= control_accuracy - 0.5

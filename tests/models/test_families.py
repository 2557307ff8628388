"""Every registered model family: named as its file, and an example that builds and takes its batch."""

import pytest
import torch

from models.registry import ExampleInput, ModelExample, model_families, register_model
from tests.models.architectures import example_batch, example_model

# The project's own families (a plug-in package names its files as it likes and may register no example).
FAMILIES = {name: f for name, f in model_families().items() if f.builder.__module__.startswith("models.")}


@pytest.mark.parametrize("name", FAMILIES)
def test_a_family_lives_in_the_file_named_after_it(name):
    module = FAMILIES[name].builder.__module__
    assert module == f"models.{name.replace('-', '_')}", f"family {name!r} is registered in {module}"


@pytest.mark.parametrize("name", FAMILIES)
def test_a_family_registers_an_example_that_builds_and_takes_its_batch(name):
    """The example is what the masking tests run every family on (tests/models/architectures.py)."""
    family = FAMILIES[name]
    assert family.example is not None, f"register {name!r} with an example: register_model(name, Settings, example)"
    model = example_model(family)
    output = model(*example_batch(family, 4))
    leaves = [output] if torch.is_tensor(output) else [x for x in output if torch.is_tensor(x)]
    assert leaves and all(x.shape[0] == 4 and torch.isfinite(x).all() for x in leaves)


def test_an_example_that_does_not_fit_its_family_is_refused_at_registration():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Settings:
        builder: str = "throw-away"
        width: int = 8

    def build(input_size: int, width: int = 8):
        return torch.nn.Linear(input_size, width)

    wrong_dims = ModelExample(dims={"input_sizes": 3}, inputs=(ExampleInput(("batch", "input_sizes")),))
    with pytest.raises(TypeError, match="gives the dims input_sizes; its builder takes input_size"):
        register_model("throw-away", Settings, wrong_dims)(build)
    wrong_setting = ModelExample(dims={"input_size": 3}, settings={"widht": 4}, inputs=(ExampleInput(("batch", 3)),))
    with pytest.raises(TypeError, match="sets widht"):
        register_model("throw-away", Settings, wrong_setting)(build)
    assert "throw-away" not in model_families()


import pytest
import torch

from models.registry import build_model
from pipeline.config import ExperimentConfig, flatten, override, parse_assignments
from pipeline.experiments import get_experiment, validate
from tasks.registry import get_task
from tasks.arithmetic import PRESENTATIONS


def test_override_sets_nested_keys_with_types():
    config = override(ExperimentConfig(), {"mask.beta": "4e-4", "pretrain.steps": "10", "mask.fused": "false"})
    assert config.mask.beta == 4e-4 and config.pretrain.steps == 10 and config.mask.fused is False
    assert ExperimentConfig().mask.beta == 1e-4  # the original is untouched


@pytest.mark.parametrize(
    "assignment, error, message",
    [
        ({"mask.bta": "1"}, KeyError, "did you mean 'mask.beta'"),
        ({"pretrain.steps": "ten"}, TypeError, "pretrain.steps must be int"),
        ({"mask.fused": "maybe"}, TypeError, "mask.fused must be bool"),
        ({"pretrain.steps": "-5"}, ValueError, "must not be negative"),
        ({"mask.beta": "-1e-4"}, ValueError, "must not be negative"),
        ({"checkpoint_every": "0"}, ValueError, "checkpoint_every must be >= 1"),
        ({"mask.num_samples": "0"}, ValueError, "mask.num_samples must be >= 1"),
    ],
)
def test_bad_overrides_are_clear_errors(assignment, error, message):
    with pytest.raises(error, match=message):
        override(ExperimentConfig(), assignment)


def test_parse_assignments_rejects_missing_equals():
    assert parse_assignments(("a.b=1",)) == {"a.b": "1"}
    with pytest.raises(ValueError, match="key=value"):
        parse_assignments(("a.b",))


def test_unknown_experiment_suggests_nearest():
    with pytest.raises(KeyError, match="did you mean 'addmul-fnn'"):
        get_experiment("addmul-fn")


def test_switching_model_family_resets_its_settings_and_rejects_the_old_keys():
    config = override(get_experiment("addmul-fnn"), {"model.builder": "lstm", "model.hidden": "32"})
    assert config.model.builder == "lstm" and config.model.hidden == 32
    assert "model.size" not in flatten(config)
    with pytest.raises(KeyError, match="unknown config key 'model.size'"):
        override(get_experiment("addmul-fnn"), {"model.builder": "lstm", "model.size": "small"})
    with pytest.raises(KeyError, match="did you mean 'lstm'"):
        override(get_experiment("addmul-fnn"), {"model.builder": "lstn"})


def test_switching_task_resets_task_options():
    config = override(get_experiment("addmul-lstm"), {"task": "double_add"})
    assert config.task == "double_add" and config.task_options.presentation == "direct"
    with pytest.raises(ValueError, match="unknown presentation 'diret'.*did you mean 'direct'"):
        validate(override(config, {"task_options.presentation": "diret"}))


def test_tuple_settings_parse_from_comma_separated_text():
    config = override(ExperimentConfig(), {"pretrain.lr_decay_steps": "32000, 48000"})
    assert config.pretrain.lr_decay_steps == (32000, 48000)
    assert override(config, {"pretrain.lr_decay_steps": ""}).pretrain.lr_decay_steps == ()
    with pytest.raises(TypeError, match="comma-separated int"):
        override(config, {"pretrain.lr_decay_steps": "1,x"})


def _outputs_with_pair2_changed(experiment: str, presentation: str):
    """(model, inputs, outputs, outputs after pair 2 of every example is replaced)."""
    task = get_task("double_add")
    torch.manual_seed(0)
    model = build_model(get_experiment(experiment, smoke=True).model, task.dims)
    inputs = task.sample("full", 4, torch.Generator().manual_seed(0)).inputs
    changed = inputs.clone()
    changed[:, 40:] = torch.roll(changed[:, 40:], 1, 0)
    return model, inputs, PRESENTATIONS[presentation](model, inputs), PRESENTATIONS[presentation](model, changed)


def test_sequential_presentation_reads_pair1_before_pair2_is_shown():
    """Pair-1 outputs come from step 3, before pair 2 is presented: changing pair 2 leaves them."""
    _, _, a, b = _outputs_with_pair2_changed("double-add-lstm", "sequential_pairs")
    assert torch.equal(a[:, :20], b[:, :20]) and not torch.equal(a[:, 20:], b[:, 20:])


def test_two_passes_zero_the_other_pair():
    """FNN double addition: pair-1 outputs depend only on pair 1, pair-2 outputs only on pair 2."""
    model, inputs, a, b = _outputs_with_pair2_changed("double-add-fnn", "two_passes")
    assert torch.equal(a[:, :20], b[:, :20]) and not torch.equal(a[:, 20:], b[:, 20:])
    first_only = inputs.clone()
    first_only[:, 40:] = 0
    torch.testing.assert_close(a[:, :20], model(first_only)[:, :20])


def test_indivisible_mask_batch_and_missing_gpu_fail_before_any_work():
    with pytest.raises(ValueError, match="not divisible by mask.num_samples=3"):
        validate(override(get_experiment("addmul-fnn"), {"mask.num_samples": "3"}))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            validate(override(get_experiment("addmul-fnn"), {"device": "cuda"}))
    with pytest.raises(ValueError, match="no task"):
        validate(ExperimentConfig())

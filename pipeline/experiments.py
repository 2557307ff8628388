"""The paper's arithmetic studies as presets, and how each presents task examples to its model."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from models.fnn import FNN_SIZES, build_fnn
from models.lstm import build_lstm
from pipeline.config import ExperimentConfig, MaskStageConfig, ModelConfig, PretrainConfig
from tasks.registry import suggest


def _direct(model: nn.Module, inputs: Tensor) -> Tensor:
    """[B, in] -> [B, out]."""
    return model(inputs)


def _repeated(steps: int):
    def present(model: nn.Module, inputs: Tensor) -> Tensor:
        """The same input for `steps` steps, output read at the last: [B, in] -> [B, out]."""
        return model(inputs.unsqueeze(1).expand(-1, steps, -1))[:, -1]

    return present


def _pair_inputs(inputs: Tensor) -> tuple[Tensor, Tensor]:
    """[B, 80] -> ([B, 80] with pair 2 zeroed, [B, 80] with pair 1 zeroed)."""
    half = inputs.shape[1] // 2
    first, second = inputs.clone(), inputs.clone()
    first[:, half:] = 0
    second[:, :half] = 0
    return first, second


def _two_passes(model: nn.Module, inputs: Tensor) -> Tensor:
    """FNN double addition: one pass per pair, the other zeroed; [B, 80] -> [B, 40].

    Both passes go through one call as [B, 2, 80], so an example sees the same mask sample twice.
    """
    outputs = model(torch.stack(_pair_inputs(inputs), 1))  # [B, 2, 40]
    half = outputs.shape[-1] // 2
    return torch.cat([outputs[:, 0, :half], outputs[:, 1, half:]], 1)


def _sequential_pairs(model: nn.Module, inputs: Tensor) -> Tensor:
    """LSTM: pair 1 for steps 1-3 (read at 3), then pair 2 for steps 4-6 (read at 6)."""
    first, second = _pair_inputs(inputs)
    sequence = torch.cat([first.unsqueeze(1).expand(-1, 3, -1), second.unsqueeze(1).expand(-1, 3, -1)], 1)
    outputs = model(sequence)  # [B, 6, 40]
    half = outputs.shape[-1] // 2
    return torch.cat([outputs[:, 2, :half], outputs[:, 5, half:]], 1)


PRESENTATIONS = {
    "direct": _direct,
    "repeat3": _repeated(3),
    "repeat6": _repeated(6),
    "two_passes": _two_passes,
    "sequential_pairs": _sequential_pairs,
}

_BIG_FNN = ModelConfig(kind="fnn", size="big")
_LSTM = ModelConfig(kind="lstm", lstm_hidden=256)

EXPERIMENTS: dict[str, ExperimentConfig] = {
    "addmul-fnn": ExperimentConfig("addmul-fnn", "addmul", "direct", model=_BIG_FNN),
    "addmul-lstm": ExperimentConfig("addmul-lstm", "addmul", "repeat3", model=_LSTM),
    "double-add-fnn": ExperimentConfig(
        "double-add-fnn", "double_add", "two_passes", model=_BIG_FNN, mask=MaskStageConfig(beta=4e-4)
    ),
    "double-add-lstm": ExperimentConfig("double-add-lstm", "double_add", "repeat6", model=_LSTM),
    "double-add-lstm-sequential": ExperimentConfig(
        "double-add-lstm-sequential", "double_add", "sequential_pairs", model=_LSTM
    ),
}


def get_experiment(name: str, smoke: bool = False) -> ExperimentConfig:
    """The preset `name`; smoke=True shrinks steps and sizes for a look in a few minutes on CPU."""
    if name not in EXPERIMENTS:
        raise KeyError(f"unknown experiment {name!r}{suggest(name, EXPERIMENTS)}; known: {', '.join(EXPERIMENTS)}")
    config = EXPERIMENTS[name]
    if smoke:
        config = dataclasses.replace(
            config,
            eval_size=1024,
            checkpoint_every=500,
            model=dataclasses.replace(config.model, size="small", lstm_hidden=64),
            pretrain=PretrainConfig(steps=5000),
            mask=dataclasses.replace(config.mask, steps=1500),
        )
    return config


def hidden_sizes(model: ModelConfig) -> tuple[int, ...]:
    """"medium" -> (800, 800, 800, 800); "300,200" -> (300, 200)."""
    if model.size in FNN_SIZES:
        return FNN_SIZES[model.size]
    try:
        sizes = tuple(int(s) for s in model.size.split(","))
    except ValueError:
        raise ValueError(
            f"model.size must be one of {', '.join(FNN_SIZES)} or comma-separated integers, got {model.size!r}"
        ) from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"model.size needs positive hidden sizes, got {model.size!r}")
    return sizes


def build_model(model: ModelConfig, input_size: int, output_size: int) -> nn.Module:
    if model.kind == "fnn":
        return build_fnn(input_size, hidden_sizes(model), output_size)
    if model.kind == "lstm":
        return build_lstm(input_size, model.lstm_hidden, output_size)
    raise ValueError(f"model.kind must be 'fnn' or 'lstm', got {model.kind!r}")


def validate(config: ExperimentConfig) -> None:
    """Fail before any work on settings that would only fail later."""
    from tasks import get_task

    get_task(config.task)
    if config.presentation not in PRESENTATIONS:
        raise ValueError(f"unknown presentation {config.presentation!r}{suggest(config.presentation, PRESENTATIONS)}")
    build_model(config.model, 1, 1) if config.model.kind == "lstm" else hidden_sizes(config.model)
    if config.model.kind not in ("fnn", "lstm"):
        raise ValueError(f"model.kind must be 'fnn' or 'lstm', got {config.model.kind!r}")
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={config.device!r} but this machine has no CUDA GPU; use device=cpu")
    if config.mask.batch_size % config.mask.num_samples:
        raise ValueError(
            f"mask.batch_size={config.mask.batch_size} is not divisible by mask.num_samples={config.mask.num_samples}"
        )

"""Beyond the paper: modules in Hugging Face transformers, on text from local files.

Presets: a tiny GPT-2 and a tiny BERT (built from configs, random weights) trained on the shipped
toy dataset (tests/fixtures/text-demo: sentences labelled with their noun's topic), then one mask per
subtask ("living" = animal and food sentences, "machines" = vehicle and weather ones) and the control
mask on all of them: the `layers` table says which weights each subtask uses and how many both use.
`text-gpt2-lm` does the same for next-token prediction with a file per subtask.

Recipe "given-network": masks over the network exactly as its builder makes it (e.g. with the
weights of `model.pretrained`), without training it first; the "masks" recipe instead trains
(fine-tunes) it on the task's "all" split for pretrain.steps steps before the masks.
"""

from __future__ import annotations

from pathlib import Path

import torch

from models.masking.masks import atomic_torch_save
from models.registry import build_model, model_settings
from pipeline.config import ExperimentConfig, MaskStageConfig, PretrainConfig
from pipeline.evaluate import evaluate_masks
from pipeline.experiments import SweepSpec, register_experiment, register_sweep
from pipeline.stages import TrialContext, train_masks
from pipeline.experiments import register_study
from tasks.registry import options_for


@register_study("given-network")
def masks_of_the_given_network(ctx: TrialContext) -> dict[str, list[dict]]:
    network = network_as_built(ctx)
    train_masks(ctx, ctx.task.mask_splits, network)
    return evaluate_masks(ctx, network, list(ctx.task.mask_splits))


def network_as_built(ctx: TrialContext) -> Path:
    """Stage "network": the model as its builder makes it (seeded by the trial seed), saved in the
    trial folder without any training. -> network/model.pt"""
    final = ctx.trial_dir / "network" / "model.pt"

    def produce() -> None:
        torch.manual_seed(ctx.config.seed)
        final.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(build_model(ctx.config.model, ctx.task.dims).state_dict(), final)

    ctx.stage("network", [final], produce)
    return final


# -- presets ---------------------------------------------------------------------------------------
# Paths are relative to --data-dir: `--data-dir tests/fixtures` for the shipped toy data.
_TOPICS = options_for("text", data="text-demo/sentences.csv", tokenizer="text-demo/tokenizer",
                      subtask_labels="living=animal|food;machines=vehicle|weather", max_length=16)
_NEXT_TOKEN = options_for("text", label_column="", tokenizer="text-demo/tokenizer", max_length=16,
                          subtask_files="living=text-demo/living.txt;machines=text-demo/machines.txt")
_GPT2 = model_settings("huggingface", config="gpt2", settings="n_layer=2,n_embd=64,n_head=4,n_positions=16")
_BERT = model_settings("huggingface", config="bert", settings="num_hidden_layers=2,hidden_size=64,"
                       "num_attention_heads=4,intermediate_size=128,max_position_embeddings=16")
_PRETRAIN = PretrainConfig(steps=300, lr=1e-3, batch_size=32)
_MASKS = MaskStageConfig(steps=300, lr=5e-2, beta=1e-3, batch_size=32, mask_embeddings=False)
_SMOKE = {"pretrain.steps": 100, "mask.steps": 150, "checkpoint_every": 50, "log_every": 20}
_TINY_GPT2 = {"model.settings": "n_layer=1,n_embd=8,n_head=2,n_positions=16"}
_TINY_BERT = {"model.settings": "num_hidden_layers=1,hidden_size=8,num_attention_heads=2,intermediate_size=8,"
                                "max_position_embeddings=16"}


def _text(task_options, model) -> ExperimentConfig:
    return ExperimentConfig(task="text", task_options=task_options, model=model, pretrain=_PRETRAIN, mask=_MASKS,
                            checkpoint_every=100, log_every=20)


register_experiment("text-gpt2", _text(_TOPICS, _GPT2), _SMOKE,
                    "Your own transformer: a tiny GPT-2 (from a config) on topic classification, a mask per "
                    "subtask (label subset)", _TINY_GPT2)
register_experiment("text-bert", _text(_TOPICS, _BERT), _SMOKE,
                    "Your own transformer: a tiny BERT (from a config) on topic classification, a mask per "
                    "subtask (label subset)", _TINY_BERT)
register_experiment("text-gpt2-lm", _text(_NEXT_TOKEN, _GPT2), _SMOKE,
                    "Your own transformer: a tiny GPT-2 on next-token prediction, a mask per subtask file",
                    _TINY_GPT2)

register_sweep("text-modules", SweepSpec(
    ("text-gpt2", "text-bert"), {"mask.beta": [3e-4, 1e-3, 3e-3]}, seeds=3, smoke_grid={"mask.beta": [1e-3]},
    description="Beyond the paper: subtask modules of a tiny GPT-2 and BERT against β"))

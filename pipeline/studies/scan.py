"""Section 4 and Appendix C.6.1: SCAN with the LSTM encoder-decoder and the Transformer.

Recipe "scan": the paper's masks procedure (pretrain on simple, one mask per split's train set,
every mask and its inverse evaluated on every split's test set), plus the baselines of Fig. 16: the
same architecture trained directly on each split's train set and tested on that split's test set,
as rows of the same metrics table with mask="baseline".
"""

from __future__ import annotations

from models.registry import model_settings
from pipeline.config import ExperimentConfig, MaskStageConfig, PretrainConfig
from pipeline.evaluate import accuracy, evaluate_masks
from pipeline.experiments import SweepSpec, register_experiment, register_sweep
from pipeline.stages import TrialContext, load_network, pretrained_network, train_masks
from pipeline.experiments import register_study
from tasks.registry import options_for

BASELINE = "baseline"


@register_study("scan")
def pretrain_masks_baselines(ctx: TrialContext) -> dict[str, list[dict]]:
    network = pretrained_network(ctx)
    train_masks(ctx, ctx.task.mask_splits, network)
    tables = evaluate_masks(ctx, network, list(ctx.task.mask_splits))
    tables["metrics"] += baseline_rows(ctx)
    return tables


def baseline_rows(ctx: TrialContext) -> list[dict]:
    """Fig. 16: per split, a network trained on its train set only, accuracy on its test set.
    (For the pretraining split this is the pretrained network itself.)"""
    rows = []
    for split in ctx.task.eval_splits:
        model = load_network(ctx, pretrained_network(ctx, split))
        batches = list(ctx.task.eval_batches(split, ctx.config.eval_size, ctx.device))
        rows.append({"mask": BASELINE, "inverted": False, "subtask": split,
                     "accuracy": accuracy(ctx.task, model, batches)})
    return rows


# -- presets: Appendix C.6.1 -------------------------------------------------------------------------
def _scan(model, teacher_forcing: float, beta: float) -> ExperimentConfig:
    return ExperimentConfig(
        study="scan", task="scan", task_options=options_for("scan", teacher_forcing=teacher_forcing), model=model,
        eval_size=10_000,  # above every test set's size (the largest, addprim_jump, has 7706): all of them
        pretrain=PretrainConfig(steps=25_000, lr=1e-3, batch_size=256, clip=5.0),
        mask=MaskStageConfig(steps=25_000, lr=1e-2, beta=beta, batch_size=256, clip=5.0, mask_embeddings=False),
    )


_LSTM = model_settings("lstm-seq2seq", embedding_size=16, hidden=200, num_layers=2, dropout=0.5)
# Dropout 0.1: the paper names none; its Transformer "is based on PyTorch's internal implementation"
# (C.6.1), whose default is 0.1, and the authors' published code builds it without passing a dropout,
# so their layers' default 0.1 applies (github.com/RobertCsordas/modules, layers/transformer/transformer.py).
_TRANSFORMER = model_settings("transformer", d_model=100, num_heads=4, num_layers=3, feedforward=200, dropout=0.1,
                                   max_length=64)
# --smoke: a look at the whole procedure in minutes on 2 CPU cores; far too short to learn SCAN.
_SMOKE = {"pretrain.steps": 150, "mask.steps": 60, "pretrain.batch_size": 32, "mask.batch_size": 32,
          "eval_size": 128, "checkpoint_every": 50}

register_experiment("scan-lstm", _scan(_LSTM, teacher_forcing=0.5, beta=3e-5), _SMOKE | {"model.hidden": 32},
                    "Section 4: SCAN, LSTM encoder-decoder pretrained on simple, a mask per split, baselines",
                    {"model.hidden": 8, "model.embedding_size": 4})
register_experiment("scan-transformer", _scan(_TRANSFORMER, teacher_forcing=1.0, beta=1e-3),
                    _SMOKE | {"model.d_model": 32, "model.feedforward": 64, "model.num_layers": 2},
                    "Section 4: SCAN, Transformer pretrained on simple, a mask per split, baselines",
                    {"model.d_model": 8, "model.feedforward": 8, "model.num_layers": 1, "model.num_heads": 2})

# 10 seeds: Appendix C.1, "All figures in this paper, unless noted otherwise, show mean and standard
# deviation calculated over 10 runs"; Figs. 4 and 16 note nothing else.
register_sweep("scan", SweepSpec(("scan-lstm", "scan-transformer"), seeds=10,
                                 description="Figs. 4a, 4b and 16: both models, 10 seeds"))

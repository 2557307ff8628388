"""Section 4, Appendix C.6.2: the Mathematics Dataset. A Transformer is pretrained on all
difficulties of one module; masks are trained on the IID train set and on "easy" only; Fig. 5
compares the hard validation accuracy without a mask, with the IID mask and with the easy mask.

The procedure is the generic one (pipeline/studies/masks.py): pretrain -> one mask per
task.mask_splits ("iid", "easy") -> evaluate every mask on every validation split.
"""

from __future__ import annotations

from models.transformer import TransformerSettings
from pipeline.config import ExperimentConfig, MaskStageConfig, PretrainConfig
from pipeline.experiments import SweepSpec, register_experiment, register_sweep
from tasks.mathematics import MODULES, MathematicsOptions

# Saxton et al.'s Transformer: one character embedding for encoder and decoder, tied to the output layer.
_TRANSFORMER = TransformerSettings(d_model=256, num_heads=4, num_layers=3, feedforward=512, tied=True)

# Table 1, per module: (batch net, batch mask, β, iterations net, iterations masks, mask lr, warmup net).
TABLE_1 = {
    "arithmetic__add_or_sub": (256, 256, 2e-5, 30_000, 30_000, 0.03, 0),
    "algebra__linear_1d": (512, 400, 1e-6, 200_000, 50_000, 0.02, 5_000),
    "calculus__differentiate": (128, 128, 1e-5, 40_000, 40_000, 0.03, 0),
    "comparison__sort": (256, 256, 3e-6, 30_000, 30_000, 0.03, 0),
    "polynomials__collect": (128, 256, 1e-6, 200_000, 50_000, 0.02, 5_000),
}

# --smoke: minutes on 2 CPU cores on the 1,000-example sample (validation 100 per difficulty).
_SMOKE = {"task_options.validation_size": 100, "eval_size": 100, "checkpoint_every": 500,
          "model.d_model": 64, "model.feedforward": 128, "model.num_layers": 2,
          "pretrain.steps": 1500, "pretrain.batch_size": 64, "pretrain.warmup_steps": 100,
          "mask.steps": 300, "mask.batch_size": 64}
# The contract test: seconds, on the sample under ../shared/data.
_TINY = {"task_options.subfolder": "mathematics_dataset_sample", "task_options.validation_size": 20,
         "model.d_model": 16, "model.feedforward": 32, "model.num_layers": 1, "model.num_heads": 2}


def _preset(module: str) -> ExperimentConfig:
    net_batch, mask_batch, beta, net_steps, mask_steps, mask_lr, warmup = TABLE_1[module]
    return ExperimentConfig(
        task="mathematics", task_options=MathematicsOptions(module=module), model=_TRANSFORMER, eval_size=10_000,
        pretrain=PretrainConfig(steps=net_steps, lr=1e-4, batch_size=net_batch, clip=1.0, adam_eps=1e-9,
                                adam_beta2=0.995, warmup_steps=warmup),
        mask=MaskStageConfig(steps=mask_steps, lr=mask_lr, beta=beta, batch_size=mask_batch, num_samples=8, clip=1.0),
    )


for _module in MODULES:
    register_experiment(f"mathematics-{_module}", _preset(_module), _SMOKE,
                        f"Section 4, Fig. 5: {_module}, masks on IID and on easy, tested on hard (Table 1)", _TINY)

register_sweep("mathematics", SweepSpec(
    tuple(f"mathematics-{m}" for m in MODULES), seeds=5,
    description="Fig. 5: hard accuracy without mask, with the IID mask and with the easy mask, 5 modules",
))

"""Every preset at the paper's scale holds the values the paper states.

The expected values are typed in from the paper (../shared/paper/are-neural-nets-modular.md), each
with the section, table or figure it comes from; where the paper is silent, from the authors'
published configuration (github.com/RobertCsordas/modules, main.py profiles and sweeps/*.yaml),
marked "authors". Nothing here is read from the presets.
"""

import math

import pytest

from pipeline.config import flatten
from pipeline.experiments import get_experiment, get_sweep

# C.1: "Adam ... a batch size of 128, a learning rate of 10^-3, and gradient clipping of 1 ... divide a
# batch into four parts"; Section 2: logits "initialized to keep the weights with high probability (0.9)".
COMMON = {"pretrain.optimizer": ("adam", "C.1"), "pretrain.batch_size": (128, "C.1"), "pretrain.lr": (1e-3, "C.1"),
          "pretrain.clip": (1.0, "C.1"), "mask.batch_size": (128, "C.1"), "mask.num_samples": (4, "C.1"),
          "mask.clip": (1.0, "C.1")}
ARITHMETIC = COMMON | {"pretrain.steps": (20_000, "C.3"), "mask.steps": (20_000, "C.3"), "mask.lr": (1e-2, "C.3"),
                       "mask.beta": (1e-4, "C.3")}
BIG_FNN = {"model.builder": ("fnn", "C.3"), "model.size": ("big", "C.3: 5 layers of 2000; Fig. 9: big")}
LSTM = {"model.builder": ("lstm", "C.3"), "model.hidden": (256, "C.3"),
        "model.layers": (2, "authors: profile add_mul, n_layers 2")}
PERMUTED = {"task_options.permutations": (11, "C.5"), "mask.num_samples": (8, "C.5"), "mask.steps": (30_000, "C.5"),
            "mask.lr": (1e-2, "C.5"), "pretrain.lr": (1e-2, "C.5: one learning rate"),
            "model.size": ("800,800,64", "C.5"), "mask.beta": (1e-5 * 128, "C.5: alpha 1e-5, beta = b*alpha")}
SCAN = {"pretrain.batch_size": (256, "C.6.1"), "mask.batch_size": (256, "C.6.1"), "pretrain.clip": (5.0, "C.6.1"),
        "mask.clip": (5.0, "C.6.1"), "mask.lr": (1e-2, "C.6.1"), "pretrain.steps": (25_000, "C.6.1"),
        "mask.steps": (25_000, "C.6.1"), "mask.mask_embeddings": (False, "C.6.1: embeddings excluded")}
SIMPLE_CNN = COMMON | {"pretrain.steps": (20_000, "C.7.1"), "mask.steps": (20_000, "C.7.1"),
                       "mask.lr": (1e-3, "C.7.1; authors: profile cifar10_class_removal mask_lr 1e-3"),
                       "mask.beta": (1e-4, "C.7.1"), "model.channels": ((32, 64, 128, 256), "Table 2")}
MATHEMATICS = {"model.d_model": (256, "C.6.2"), "model.feedforward": (512, "C.6.2"), "model.num_heads": (4, "C.6.2"),
               "model.num_layers": (3, "C.6.2"), "pretrain.lr": (1e-4, "C.6.2"), "pretrain.adam_eps": (1e-9, "C.6.2"),
               "pretrain.adam_beta2": (0.995, "C.6.2"), "pretrain.clip": (1.0, "C.6.2"),
               "mask.num_samples": (8, "C.6.2"), "mask.warmup_steps": (0, "C.6.2: no warmup for masks")}
# Table 1: batch (net), batch (mask), beta, iterations (net), iterations (masks), mask lr, warm-up.
TABLE_1 = {"arithmetic__add_or_sub": (256, 256, 2e-5, 30_000, 30_000, 0.03, 0),
           "algebra__linear_1d": (512, 400, 1e-6, 200_000, 50_000, 0.02, 5000),
           "calculus__differentiate": (128, 128, 1e-5, 40_000, 40_000, 0.03, 0),
           "comparison__sort": (256, 256, 3e-6, 30_000, 30_000, 0.03, 0),
           "polynomials__collect": (128, 256, 1e-6, 200_000, 50_000, 0.02, 5000)}


def _table_1(module: str) -> dict:
    keys = ("pretrain.batch_size", "mask.batch_size", "mask.beta", "pretrain.steps", "mask.steps", "mask.lr",
            "pretrain.warmup_steps")
    return MATHEMATICS | {k: (v, "Table 1") for k, v in zip(keys, TABLE_1[module])}


PAPER = {
    "addmul-fnn": ARITHMETIC | BIG_FNN | {"task": ("addmul", "3.1")},
    "addmul-lstm": ARITHMETIC | LSTM | {"task_options.presentation": ("repeat3", "C.3: 3 time steps")},
    "double-add-fnn": ARITHMETIC | BIG_FNN | {"mask.beta": (4e-4, "C.4"),
                                              "task_options.presentation": ("two_passes", "3.2")},
    "double-add-lstm": ARITHMETIC | LSTM | {"task_options.presentation": ("repeat6", "C.4: 6 steps")},
    "double-add-lstm-sequential": ARITHMETIC | LSTM | {
        "task_options.presentation": ("sequential_pairs", "C.4: 3 steps per tuple")},
    "permuted-mnist": PERMUTED | {"task_options.logit_init": ("default", "authors: transfer.mask_*_init 2.0")},
    "permuted-mnist-prefer-old": PERMUTED | {"task_options.logit_init": ("prefer-old", "C.5: 2 and 0, Fig. 15a")},
    "permuted-mnist-prefer-old-more": PERMUTED | {
        "task_options.logit_init": ("prefer-old-more", "C.5: 2 and -1, Fig. 15b")},
    "scan-lstm": SCAN | {"mask.beta": (3e-5, "C.6.1"), "model.embedding_size": (16, "C.6.1"),
                         "task_options.teacher_forcing": (0.5, "C.6.1"),
                         "model.hidden": (200, "authors: profile scan, state_size 200"),
                         "model.num_layers": (2, "authors: profile scan, n_layers 2"),
                         "model.dropout": (0.5, "authors: profile scan, dropout 0.5")},
    "scan-transformer": SCAN | {"mask.beta": (1e-3, "C.6.1"), "model.d_model": (100, "C.6.1"),
                                "model.feedforward": (200, "C.6.1"), "model.num_heads": (4, "C.6.1"),
                                "model.num_layers": (3, "C.6.1"), "task_options.teacher_forcing": (1.0, "C.6.1"),
                                "model.dropout": (0.1, "authors: layers/transformer default")},
    "cifar10-cnn": SIMPLE_CNN | {"model.dropout": (True, "Table 2")},
    "cifar10-cnn-nodropout": SIMPLE_CNN | {"model.dropout": (False, "C.7.2")},
    "mask-stability": SIMPLE_CNN | {"model.dropout": (False, "B.1: without dropout"),
                                    "task_options.pairs": (10, "B.1: 10 random pairs")},
    "cifar10-resnet110": {"pretrain.optimizer": ("sgd", "C.7.3"), "pretrain.weight_decay": (1e-4, "C.7.3"),
                          "pretrain.batch_size": (128, "C.7.3"), "pretrain.lr": (0.1, "C.7.3"),
                          "pretrain.lr_decay_steps": ((32_000, 48_000), "C.7.3"), "pretrain.steps": (64_000, "C.7.3"),
                          "pretrain.clip": (math.inf, "C.7.3: no clipping"), "mask.batch_size": (256, "C.7.3"),
                          "mask.lr": (0.03, "C.7.3"), "mask.beta": (2e-5, "C.7.3"), "mask.steps": (30_000, "C.7.3"),
                          "mask.clip": (1.0, "C.7.3"), "model.blocks_per_stage": (18, "C.7.3: ResNet-110 = 6*18+2"),
                          "task_options.augment": (True, "C.7.3: crop and flip")},
    **{f"mathematics-{module}": _table_1(module) for module in TABLE_1},
}

# Seeds of each sweep: C.1 "mean and standard deviation calculated over 10 runs", Fig. 5 "5 seeds/task",
# B.1 "We trained 10 CNNs".
SWEEP_SEEDS = {"addmul": 10, "double-add": 10, "sharing-vs-capacity": 10, "alpha-sensitivity": 10,
               "permuted-mnist": 10, "scan": 10, "cifar10": 10, "mask-stability": 10, "mathematics": 5}
# Fig. 9: small 400,400,200, medium 5 layers of 800, big 2000, huge 4000; Fig. 8: medium and big.
SWEEP_GRIDS = {"sharing-vs-capacity": {"model.size": ["small", "medium", "big", "huge"]}}
FNN_SIZES = {"small": (400, 400, 200), "medium": (800,) * 4, "big": (2000,) * 4, "huge": (4000,) * 4}


@pytest.mark.parametrize("name, key, expected, source",
                         [(n, k, v, s) for n, rows in PAPER.items() for k, (v, s) in rows.items()])
def test_paper_scale_preset_holds_the_papers_value(name, key, expected, source):
    config = flatten(get_experiment(name))
    assert key in config, f"{name} has no key {key} ({source})"
    actual = config[key]
    if isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-9), f"{name} {key} = {actual}, the paper ({source}): {expected}"
    else:
        assert actual == expected, f"{name} {key} = {actual!r}, the paper ({source}): {expected!r}"


def test_every_initial_keep_probability_is_the_papers_0_9():
    from models.masking import MaskConfig

    assert MaskConfig().initial_keep_probability == 0.9  # Section 2: "initialized to keep ... (0.9)"


@pytest.mark.parametrize("sweep, seeds", SWEEP_SEEDS.items())
def test_sweep_seeds_at_the_papers_scale(sweep, seeds):
    assert get_sweep(sweep).at("paper").seeds == seeds


def test_fig_9_sizes_and_fig_8_networks():
    from models.fnn import hidden_sizes

    grid = get_sweep("sharing-vs-capacity").at("paper").grid
    assert grid == SWEEP_GRIDS["sharing-vs-capacity"]
    assert {size: hidden_sizes(size) for size in grid["model.size"]} == FNN_SIZES
    alpha = get_sweep("alpha-sensitivity").at("paper").grid
    assert alpha["model.size"] == ["medium", "big"]  # Fig. 8 (a) big, (b) medium
    assert min(alpha["mask.beta"]) == pytest.approx(1e-5) and max(alpha["mask.beta"]) == pytest.approx(1e-3)
    assert 1e-4 in alpha["mask.beta"]  # Fig. 8: "The red line and the star indicate the value chosen" (1e-4)
    assert len(alpha["mask.beta"]) == 25  # authors' addmul_ff_alpha_analysis: 26 entries, 1e-4 listed twice


def test_every_preset_of_the_paper_is_pinned():
    from pipeline.experiments import experiment_names

    beyond_the_paper = {"custom", "addmul-fnn-stability", "text-gpt2", "text-bert", "text-gpt2-lm"}
    unpinned = {n for n in experiment_names() if n not in PAPER} - beyond_the_paper
    assert not unpinned, f"presets without the paper's values in this test: {sorted(unpinned)}"

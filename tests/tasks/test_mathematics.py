"""Mathematics Dataset task: re-split with dedup, encoding, whole-answer scoring, Table 1 presets, the
tied embedding as one masked parameter."""

from pathlib import Path

import pytest
import torch

from models.masking import MaskConfig, MaskedModel, Masks, ParameterFilter, applied
from models.registry import build_model
from pipeline.experiments import get_experiment
from tasks.mathematics import (END, PAD, START, MathematicsOptions, MathematicsTask, decode, resplit)

SAMPLE = "mathematics_dataset_sample"
MODULES = ["arithmetic__add_or_sub", "algebra__linear_1d", "calculus__differentiate", "comparison__sort",
           "polynomials__collect"]


def _task(shared_data: Path, module="algebra__linear_1d", validation_size=100) -> MathematicsTask:
    return MathematicsTask(MathematicsOptions(module=module, validation_size=validation_size), shared_data / SAMPLE)


def test_resplit_keeps_each_question_once_at_its_first_difficulty():
    examples = {"easy": [("q1", "1"), ("q2", "2"), ("q1", "1"), ("q3", "3")],
                "medium": [("q2", "2"), ("q4", "4"), ("q5", "5")],
                "hard": [("q1", "1"), ("q6", "6"), ("q7", "7"), ("q8", "8")]}
    splits = resplit(examples, validation_size=1, seed=0)
    # distinct new questions: easy {q1, q2, q3}, medium {q4, q5}, hard {q6, q7, q8}
    assert {name: len(rows) for name, rows in splits.items()} == {
        "valid-easy": 1, "train-easy": 2, "valid-medium": 1, "train-medium": 1, "valid-hard": 1, "train-hard": 2}
    assert {q for q, _ in splits["valid-easy"] + splits["train-easy"]} == {"q1", "q2", "q3"}
    assert {q for q, _ in splits["valid-medium"] + splits["train-medium"]} == {"q4", "q5"}
    assert {q for q, _ in splits["valid-hard"] + splits["train-hard"]} == {"q6", "q7", "q8"}
    assert resplit(examples, 1, seed=0) == splits


def test_resplit_refuses_a_validation_set_that_leaves_no_training_data():
    with pytest.raises(ValueError, match="validation_size=2"):
        resplit({"easy": [("a", "1"), ("b", "2")], "medium": [("c", "3")] * 3, "hard": [("d", "4")] * 3}, 2, 0)


def _distinct_new_questions(folder: Path, module: str) -> dict[str, set[str]]:
    """Independently of the task: question lines per difficulty, minus those of easier difficulties."""
    seen, out = set(), {}
    for difficulty in ("easy", "medium", "hard"):
        questions = (folder / f"train-{difficulty}" / f"{module}.txt").read_text().splitlines()[0::2]
        out[difficulty] = set(questions) - seen
        seen |= out[difficulty]
    return out


@pytest.mark.parametrize("module", MODULES)
def test_sample_splits_have_the_right_sizes_and_no_example_twice(shared_data, module):
    task = _task(shared_data, module)
    splits = {name: [decode(q) for q in data.questions] for name, data in task.splits().items()}
    expected = _distinct_new_questions(shared_data / SAMPLE, module)
    for difficulty, questions in expected.items():
        assert len(splits[f"valid-{difficulty}"]) == 100
        assert len(splits[f"train-{difficulty}"]) == len(questions) - 100
        assert set(splits[f"valid-{difficulty}"]) | set(splits[f"train-{difficulty}"]) == questions
    every = [q for name, questions in splits.items() if name != "train-all" for q in questions]
    assert len(every) == len(set(every)), "a question appears in two splits"
    assert sorted(splits["train-all"]) == sorted(q for d in ("easy", "medium", "hard") for q in splits[f"train-{d}"])


def test_repeated_questions_in_files_are_kept_once(shared_data, tmp_path):
    """The sample repeats no question, so repeats are added: 50 easy examples again in hard, 30 medium
    examples twice in medium."""
    module = "arithmetic__add_or_sub"
    for difficulty in ("easy", "medium", "hard"):
        (tmp_path / f"train-{difficulty}").mkdir()
    lines = {d: (shared_data / SAMPLE / f"train-{d}" / f"{module}.txt").read_text().splitlines()
             for d in ("easy", "medium", "hard")}
    lines["hard"] = lines["hard"] + lines["easy"][:100]
    lines["medium"] = lines["medium"] + lines["medium"][200:260]
    for difficulty, text in lines.items():
        (tmp_path / f"train-{difficulty}" / f"{module}.txt").write_text("\n".join(text) + "\n")
    task = MathematicsTask(MathematicsOptions(module=module, validation_size=100), tmp_path)
    sizes = {name: len(data.questions) for name, data in task.splits().items()}
    assert sizes == {"valid-easy": 100, "train-easy": 900, "valid-medium": 100, "train-medium": 900,
                     "valid-hard": 100, "train-hard": 900, "train-all": 2700}


def test_batch_encodes_questions_and_answers_character_by_character(shared_data):
    task = _task(shared_data, "comparison__sort")
    first_lines = (shared_data / SAMPLE / "train-easy" / "comparison__sort.txt").read_text().splitlines()
    answers = dict(zip(first_lines[0::2], first_lines[1::2]))
    batch = task.sample("train-easy", 6, torch.Generator().manual_seed(1))
    for i in range(6):
        question, answer = decode(batch.source[i]), decode(batch.target_output[i])
        assert answers[question] == answer
        assert batch.target_output[i, len(answer)] == END
        assert batch.target_input[i, 0] == START and torch.equal(batch.target_input[i, 1:len(answer) + 1],
                                                                  batch.target_output[i, :len(answer)])
        assert torch.equal(batch.source_padding[i], torch.arange(batch.source.shape[1]) >= len(question))
    assert (batch.target_output[batch.target_output != PAD] >= END).all()


class Oracle(torch.nn.Module):
    """Logits that spell `answers` [B, T] (with END), whatever the prefix: a decoder that knows the answer."""

    def __init__(self, answers: torch.Tensor):
        super().__init__()
        self.answers = answers

    def forward(self, source, prefix, source_padding):
        assert source_padding.shape == source.shape
        steps = prefix.shape[1]
        padded = torch.nn.functional.pad(self.answers, (0, steps))[:, :steps]
        return torch.nn.functional.one_hot(padded, 98).float()


def test_correct_needs_the_whole_answer_and_its_end(shared_data):
    task = _task(shared_data)
    batch = task.eval_batches("valid-hard", 4, "cpu")[0]
    right = batch.target_output.clone()
    assert task.correct(Oracle(right), batch).tolist() == [True] * 4
    wrong_digit = right.clone()
    wrong_digit[1, 0] = 3 if wrong_digit[1, 0] != 3 else 4
    no_end = right.clone()
    length = int((no_end[2] != PAD).sum())
    no_end[2, length - 1] = 3  # a space where END belongs: the answer goes on
    assert task.correct(Oracle(wrong_digit), batch).tolist() == [True, False, True, True]
    assert task.correct(Oracle(no_end), batch).tolist() == [True, True, False, True]


def test_unknown_module_and_missing_data_are_clear_errors(shared_data, tmp_path):
    with pytest.raises(ValueError, match="did you mean 'algebra__linear_1d'"):
        MathematicsTask(MathematicsOptions(module="algebra_linear_1d"), shared_data / SAMPLE)
    with pytest.raises(FileNotFoundError, match="pipeline data mathematics"):
        MathematicsTask(MathematicsOptions(), tmp_path)
    with pytest.raises(ValueError, match="validation_size"):
        _task(shared_data, validation_size=5000).splits()


def test_the_subfolder_option_finds_the_data_below_the_data_folder(shared_data):
    task = MathematicsTask(MathematicsOptions(subfolder=SAMPLE, validation_size=100), shared_data)
    assert task.folder == shared_data / SAMPLE


# Table 1 of the paper, typed in from the paper: (net batch, mask batch, β, net iterations, mask iterations,
# mask lr, warmup).
TABLE_1 = {
    "arithmetic__add_or_sub": (256, 256, 2e-5, 30_000, 30_000, 0.03, 0),
    "algebra__linear_1d": (512, 400, 1e-6, 200_000, 50_000, 0.02, 5000),
    "calculus__differentiate": (128, 128, 1e-5, 40_000, 40_000, 0.03, 0),
    "comparison__sort": (256, 256, 3e-6, 30_000, 30_000, 0.03, 0),
    "polynomials__collect": (128, 256, 1e-6, 200_000, 50_000, 0.02, 5000),
}


@pytest.mark.parametrize("module", MODULES)
def test_presets_follow_table_1_and_appendix_c62(module):
    config = get_experiment(f"mathematics-{module}")
    p, m = config.pretrain, config.mask
    assert (p.batch_size, m.batch_size, m.beta, p.steps, m.steps, m.lr, p.warmup_steps) == TABLE_1[module]
    assert (p.lr, p.adam_eps, p.adam_beta2, p.clip, p.optimizer) == (1e-4, 1e-9, 0.995, 1.0, "adam")
    assert (m.num_samples, m.clip, m.warmup_steps) == (8, 1.0, 0)
    model = config.model
    assert (model.d_model, model.feedforward, model.num_heads, model.num_layers, model.tied) == (256, 512, 4, 3, True)
    assert config.task_options.module == module and config.task_options.validation_size == 10_000


def test_tied_embedding_is_one_parameter_with_one_mask():
    config = get_experiment("mathematics-algebra__linear_1d")
    torch.manual_seed(0)
    model = build_model(config.model, MathematicsTask.dims).eval()
    masked = MaskedModel(model, MaskConfig(num_samples=2), ParameterFilter(biases=False, embeddings=True))
    embedding_names = [n for n in masked.names if "embedding" in n or n.startswith("output_layer")]
    assert embedding_names == ["source_embedding.weight"]
    assert model.output_layer.weight is model.source_embedding.weight
    # 98 characters x 256: counted once among all masked weights
    distinct = {id(p): p.numel() for n, p in model.named_parameters() if n in masked.names}
    assert masked.deterministic_masks().total() == sum(distinct.values())
    assert dict(zip(masked.names, masked.logits))["source_embedding.weight"].shape == (98, 256)

    source, target = torch.randint(3, 98, (4, 9)), torch.randint(3, 98, (4, 5))
    padding = torch.zeros(4, 9, dtype=torch.bool)
    masked(source, target, padding).sum().backward()  # the masked forward leaves the plain model usable
    assert isinstance(model.source_embedding.weight, torch.nn.Parameter)
    keep = {n: torch.ones_like(l, dtype=torch.bool) for n, l in zip(masked.names, masked.logits)}
    keep["source_embedding.weight"][7] = False  # drop character 7's embedding: also its output-layer row
    with torch.no_grad(), applied(model, Masks(keep)):
        logits = model(source, target, padding)
    assert (logits[..., 7] == 0).all() and (logits[..., 8] != 0).any()

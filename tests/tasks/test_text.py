"""The text task on the shipped toy data (tests/fixtures/text-demo) and on small files written here."""

import csv
import filecmp
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from tasks.registry import get_task, options_for  # noqa: E402
from tests.tasks.text_data import sentences, write_text_demo  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TOKENIZER = "text-demo/tokenizer"
TOPICS = dict(data="text-demo/sentences.csv", tokenizer=TOKENIZER,
              subtask_labels="living=animal|food;machines=vehicle|weather")


def text_task(data_dir=FIXTURES, **options):
    return get_task("text", options_for("text", **options), data_dir)


def test_shipped_fixture_is_what_the_generator_writes(tmp_path):
    write_text_demo(tmp_path)
    for name in ("sentences.csv", "living.txt", "machines.txt"):
        assert filecmp.cmp(tmp_path / name, FIXTURES / "text-demo" / name, shallow=False), name
    ours = json.loads((tmp_path / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    assert ours == json.loads((FIXTURES / TOKENIZER / "tokenizer.json").read_text())["model"]["vocab"]


def test_label_subsets_split_the_data_and_keep_evaluation_examples_out_of_training():
    task = text_task(**TOPICS)
    assert task.labels == ["animal", "food", "vehicle", "weather"]
    assert task.mask_splits == {"living": "living", "machines": "machines", "all": "all"}
    assert task.eval_splits == ("all", "living", "machines")
    assert task.dims == {"vocab_size": 38, "num_labels": 4, "pad_token_id": 0, "max_length": 64}
    rows = sentences()
    held = round(len(rows) * 0.2)
    train_all, eval_all = task._train["all"][0], task._eval["all"][0]
    assert (len(train_all), len(eval_all)) == (len(rows) - held, held)
    eval_texts = {tuple(x) for x in eval_all}
    for split in ("living", "machines"):
        classes = {0, 1} if split == "living" else {2, 3}
        assert set(task._train[split][1].tolist()) == classes == set(task._eval[split][1].tolist())
        # the subtask's evaluation examples are the "all" evaluation examples of its labels, and no others
        assert {tuple(x) for x in task._eval[split][0]} <= eval_texts
    assert len(task._eval["living"][0]) + len(task._eval["machines"][0]) == held


def test_a_classification_batch_by_hand():
    task = text_task(**TOPICS)
    text, topic = sentences()[0]  # the first sentence of the file
    vocabulary = json.loads((FIXTURES / TOKENIZER / "tokenizer.json").read_text())["model"]["vocab"]
    expected = [vocabulary["[CLS]"], *(vocabulary[w] for w in text.split()), vocabulary["[SEP]"]]
    assert task.tokenizer(text)["input_ids"] == expected
    batch = task._batch([expected, expected[:3]], torch.tensor([2, 1]), "cpu")
    assert batch.input_ids.tolist() == [expected, expected[:3] + [0] * (len(expected) - 3)]
    assert batch.attention_mask.tolist() == [[1] * len(expected), [1] * 3 + [0] * (len(expected) - 3)]
    logits = torch.zeros(2, 4)
    logits[0, 2] = logits[1, 3] = 1.0
    assert task.correct(lambda ids, mask: logits, batch).tolist() == [True, False]


def test_next_token_targets_by_hand():
    task = text_task(label_column="", tokenizer=TOKENIZER,
                     subtask_files="living=text-demo/living.txt;machines=text-demo/machines.txt")
    assert task.dims["num_labels"] == 0 and task.mask_splits == {"living": "living", "machines": "machines",
                                                                 "all": "all"}
    batch = task._batch([[2, 5, 9, 3], [2, 7, 3]], None, "cpu")
    assert batch.labels.tolist() == [[5, 9, 3, -100], [7, 3, -100, -100]]
    # a model that predicts token t+1 = the input at t+1 for every position scores every target right
    perfect = torch.nn.functional.one_hot(torch.cat([batch.input_ids[:, 1:], batch.input_ids[:, :1]], 1), 38).float()
    assert task.correct(lambda ids, mask: perfect, batch).tolist() == [True] * 5  # one entry per target token
    assert len(task._train["all"][0]) == len(task._train["living"][0]) + len(task._train["machines"][0])


def test_sampling_is_deterministic_and_stays_in_the_split():
    task = text_task(**TOPICS)
    a = task.sample("machines", 16, torch.Generator().manual_seed(1))
    b = task.sample("machines", 16, torch.Generator().manual_seed(1))
    assert torch.equal(a.input_ids, b.input_ids) and set(a.labels.tolist()) <= {2, 3}
    assert sum(len(b.labels) for b in task.eval_batches("all", 50)) == 50


def test_jsonl_parquet_and_saved_dataset_folders_are_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"sentence": text, "topic": topic} for text, topic in sentences()[:40]]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    folder = tmp_path / "saved"  # the layout of datasets' save_to_disk
    folder.mkdir()
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink:
        table = pa.Table.from_pylist(rows)
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    tokenizer = str(FIXTURES / TOKENIZER)
    encoded = [text_task(tmp_path, data=name, text_column="sentence", label_column="topic", tokenizer=tokenizer)
               for name in ("rows.jsonl", "rows.parquet", "saved")]
    for task in encoded[1:]:
        assert task._train["all"][0] == encoded[0]._train["all"][0]
        assert torch.equal(task._eval["all"][1], encoded[0]._eval["all"][1])


def test_a_missing_column_is_one_clear_error(tmp_path):
    with open(tmp_path / "reviews.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["text", "sentiment"], ["good film", "pos"], ["bad film", "neg"]])
    with pytest.raises(ValueError, match=r"has no column 'label'.*columns are text, sentiment: set "
                                         r"task_options.label_column"):
        text_task(tmp_path, data="reviews.csv", tokenizer=str(FIXTURES / TOKENIZER))


@pytest.mark.parametrize("options, message", [
    ({"subtask_labels": "living=animal|fish"}, r"labels \['fish'\] that the data does not have"),
    ({"data": "text-demo/missing.csv"}, "no data at"),
    ({"tokenizer": "text-demo/no-tokenizer"}, "no tokenizer folder at"),
    ({"data": "text-demo/living.txt"}, "is plain text .* set label_column= "),
])
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        text_task(**(TOPICS | options))

"""SCAN task: files and md5s, download from a local server, encoding, loss, scoring, Fig. 4b rows."""

import functools
import hashlib
import http.server
import shutil
import threading

import pytest
import torch
from torch import nn

from models.masking import Masks
from tasks.registry import get_task
from tasks.scan import FILES, PAD, Batch, ScanDataError, ensure_files


@pytest.fixture(scope="module")
def scan():
    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip("no shared data")
    return get_task("scan", data_dir=SHARED_DATA)


@pytest.fixture
def server(shared_data, tmp_path):
    """A local HTTP server over a copy of the shared SCAN folder -> (base URL, served folder)."""
    from tests.conftest import SHARED_DATA

    served = tmp_path / "served"
    shutil.copytree(SHARED_DATA / "SCAN", served)
    handler = functools.partial(_QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", served
    httpd.shutdown()
    thread.join()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_download_writes_every_file_byte_for_byte(server, tmp_path, shared_data):
    url, _ = server
    ensure_files(tmp_path / "data", url)
    for relative, expected in FILES.values():
        written = (tmp_path / "data" / "SCAN" / relative).read_bytes()
        assert written == (shared_data / "SCAN" / relative).read_bytes()
        assert hashlib.md5(written).hexdigest() == expected
    assert not list((tmp_path / "data").rglob(".*.tmp"))


def test_truncated_download_is_an_error_naming_file_and_md5(server, tmp_path):
    url, served = server
    relative, expected = FILES["length", "test"]
    content = (served / relative).read_bytes()
    (served / relative).write_bytes(content[: len(content) // 2])
    with pytest.raises(ScanDataError, match=f"tasks_test_length.txt.*expected {expected}"):
        ensure_files(tmp_path / "data", url)
    assert not (tmp_path / "data" / "SCAN" / relative).exists()  # nothing half-written left behind
    assert not list((tmp_path / "data").rglob(".*.tmp"))


def test_missing_upstream_file_is_an_error_naming_the_url(server, tmp_path):
    url, served = server
    (served / FILES["addprim_jump", "train"][0]).unlink()
    with pytest.raises(ScanDataError, match="tasks_train_addprim_jump.txt.*download"):
        ensure_files(tmp_path / "data", url)


def test_corrupt_local_file_is_an_error(tmp_path, shared_data):
    data = tmp_path / "data"
    shutil.copytree(shared_data / "SCAN", data / "SCAN")
    relative, expected = FILES["simple", "train"]
    with open(data / "SCAN" / relative, "ab") as stream:
        stream.write(b"IN: jump OUT: I_JUMP\n")
    with pytest.raises(ScanDataError, match=f"tasks_train_simple.txt has md5 .*expected {expected}"):
        get_task("scan", data_dir=data)


def test_first_training_example_encoded_by_hand(scan, shared_data):
    first = (shared_data / "SCAN" / FILES["simple", "train"][0]).read_text().splitlines()[0]
    assert first == ("IN: jump opposite right twice and turn opposite right thrice OUT: I_TURN_RIGHT I_TURN_RIGHT "
                     "I_JUMP I_TURN_RIGHT I_TURN_RIGHT I_JUMP I_TURN_RIGHT I_TURN_RIGHT I_TURN_RIGHT I_TURN_RIGHT "
                     "I_TURN_RIGHT I_TURN_RIGHT")
    examples = scan.examples("simple", "train")
    # input ids: pad 0, end 1, jump 2, walk 3, run 4, look 5, turn 6, left 7, right 8, around 9, opposite 10,
    # twice 11, thrice 12, and 13, after 14; output: pad 0, start 1, end 2, JUMP 3, WALK 4, RUN 5, LOOK 6,
    # TURN_LEFT 7, TURN_RIGHT 8
    assert examples.sources[0].tolist() == [2, 10, 8, 11, 13, 6, 10, 8, 12, 1]
    assert examples.targets[0, :14].tolist() == [8, 8, 3, 8, 8, 3, 8, 8, 8, 8, 8, 8, 2, 0]
    assert len(examples.sources) == 16728 and len(scan.examples("addprim_jump", "test").sources) == 7706


def test_batches_are_padded_to_their_longest_and_shifted_by_the_start_token(scan):
    batch = scan.sample("length", 16, torch.Generator().manual_seed(4))
    lengths = (batch.target_out != PAD).sum(1)
    assert lengths.max() == batch.target_out.shape[1] and (batch.source != PAD).sum(1).max() == batch.source.shape[1]
    assert torch.all(batch.target_in[:, 0] == 1)
    assert torch.equal(batch.target_in[:, 1:], batch.target_out[:, :-1])
    for row, length in zip(batch.target_out, lengths):
        assert row[length - 1] == 2  # the end token closes every target


def test_teacher_forcing_coin_comes_from_the_generator(shared_data):
    SHARED_DATA = shared_data

    def coins(probability, seed):
        from tasks.scan import ScanOptions

        task = get_task("scan", ScanOptions(teacher_forcing=probability), SHARED_DATA)
        generator = torch.Generator().manual_seed(seed)
        return [task.sample("simple", 2, generator).teacher_forcing for _ in range(200)]

    half = coins(0.5, 1)
    assert half == coins(0.5, 1) and half != coins(0.5, 2)
    assert 60 < sum(half) < 140  # Binomial(200, 0.5): outside this range has probability < 1e-4
    assert not any(coins(0.0, 1)) and all(coins(1.0, 1))


def test_eval_batches_cap_at_size_and_otherwise_cover_the_test_set(scan):
    assert sum(len(b.source) for b in scan.eval_batches("length", 16)) == 16
    full = scan.eval_batches("addprim_turn_left", 10_000)
    assert sum(len(b.source) for b in full) == 1208
    assert not any(b.teacher_forcing for b in full)


class _FixedPredictions(nn.Module):
    """Logits that make argmax equal `predicted` [B, T], whatever the input."""

    def __init__(self, predicted):
        super().__init__()
        self.predicted = predicted
        self.calls = []

    def forward(self, source, target_in, source_padding, teacher_forcing=True):
        self.calls.append(teacher_forcing)
        return nn.functional.one_hot(self.predicted, 9).float()


def test_correct_needs_every_action_and_the_end_token(scan):
    target_out = torch.tensor([[3, 3, 2, 0], [4, 2, 0, 0], [5, 5, 5, 2], [6, 2, 0, 0]])
    predicted = torch.tensor([[3, 3, 2, 7],  # right; what follows the end token does not matter
                              [4, 4, 0, 0],  # end token missing
                              [5, 5, 6, 2],  # one action wrong
                              [6, 2, 2, 2]])  # right
    batch = Batch(torch.ones(4, 3, dtype=torch.long), torch.zeros(4, 4, dtype=torch.long), target_out, True)
    model = _FixedPredictions(predicted)
    assert scan.correct(model, batch).tolist() == [True, False, False, True]
    assert model.calls == [False]  # scored greedily, never teacher forced


def test_loss_is_the_mean_over_real_tokens(scan):
    target_out = torch.tensor([[3, 2], [4, 0]])  # three real tokens, one pad
    model = _FixedPredictions(torch.tensor([[3, 3], [4, 4]]))
    batch = Batch(torch.ones(2, 1, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long), target_out, False)
    # logits are one-hot: log-softmax of the hot class is log(e / (e + 8)), of a cold one log(1 / (e + 8))
    e = torch.e
    right, wrong = -torch.log(torch.tensor(e / (e + 8))), -torch.log(torch.tensor(1 / (e + 8)))
    assert scan.loss(model, batch).item() == pytest.approx(((2 * right + wrong) / 3).item(), rel=1e-6)
    assert model.calls == [False]


def test_output_removal_rows_count_each_tokens_row(scan):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = nn.Linear(3, 4)
            self.output_layer = nn.Linear(4, 9)

    keep = torch.ones(9, 4, dtype=torch.bool)
    keep[3, :2] = False  # I_JUMP: 2 of 4 removed
    keep[2, :] = False  # <end>: all removed
    masks = {"addprim_jump": Masks({"hidden.weight": torch.ones(4, 3, dtype=torch.bool), "output_layer.weight": keep})}
    rows = {r["token"]: r for r in scan.mask_rows(Net(), masks)["output_removal"]}
    assert set(rows) == {"<end>", "I_JUMP", "I_WALK", "I_RUN", "I_LOOK", "I_TURN_LEFT", "I_TURN_RIGHT"}
    assert rows["I_JUMP"]["removed_percent"] == 50.0 and rows["<end>"]["removed"] == 4
    assert rows["I_WALK"]["removed_percent"] == 0.0 and rows["I_WALK"]["weights"] == 4
    with pytest.raises(ValueError, match="output_layer"):
        scan.mask_rows(nn.Sequential(nn.Linear(2, 2)), masks)

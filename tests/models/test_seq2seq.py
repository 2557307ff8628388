"""SCAN's sequence models: padding, free-running decoding, and masks on the multi-sample path."""

import pytest
import torch

from models.masking import MaskConfig, MaskedModel, ParameterFilter
from models.lstm_seq2seq import build_lstm_seq2seq
from models.transformer import build_transformer
from tests.models.reference import masked_forward_reference

BUILDERS = {
    "lstm-seq2seq": lambda: build_lstm_seq2seq(15, 9, embedding_size=4, hidden=8, dropout=0.0),
    "transformer": lambda: build_transformer(15, 9, d_model=8, num_heads=2, num_layers=1, feedforward=8,
                                             max_length=32),
}


def _source():
    """[4, 6] right-padded sources of lengths 6, 4, 3, 6."""
    source = torch.randint(1, 15, (4, 6))
    source[1, 4:] = 0
    source[2, 3:] = 0
    return source


@pytest.mark.parametrize("name", BUILDERS)
def test_padding_does_not_change_the_output(name):
    model = BUILDERS[name]().eval()
    source, target = _source(), torch.randint(1, 9, (4, 5))
    with torch.no_grad():
        padded = model(source, target, source == 0)
        for row, length in enumerate([6, 4, 3, 6]):
            alone = model(source[row : row + 1, :length], target[row : row + 1])
            torch.testing.assert_close(padded[row : row + 1], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", BUILDERS)
def test_free_running_equals_teacher_forcing_on_its_own_predictions(name):
    """Without teacher forcing the decoder reads its argmax: teacher forcing on [start, those
    argmaxes] must give the same logits."""
    model = BUILDERS[name]().eval()
    source, start = _source(), torch.ones(4, 7, dtype=torch.long)
    with torch.no_grad():
        free = model(source, start, source == 0, teacher_forcing=False)
        fed = torch.cat([start[:, :1], free.argmax(-1)[:, :-1]], 1)
        torch.testing.assert_close(model(source, fed, source == 0, teacher_forcing=True), free, rtol=1e-5, atol=1e-5)
    assert free.shape == (4, 7, 9)


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("teacher_forcing", [True, False])
def test_masked_seq2seq_runs_batched_and_matches_the_per_sample_loop(name, teacher_forcing):
    if name == "transformer":  # eval-mode attention fast path under vmap: fixed on issue-9-masking-core
        torch.backends.mha.set_fastpath_enabled(False)
    try:
        model = BUILDERS[name]().eval()
        masked = MaskedModel(model, MaskConfig(num_samples=4), ParameterFilter(biases=False, embeddings=False))
        assert not any("embedding" in n for n in masked.names)
        source, target = torch.cat([_source()] * 2), torch.randint(1, 9, (8, 5))
        uniforms = masked.sample_uniforms(torch.Generator().manual_seed(0))
        batched = masked.forward_with_uniforms(uniforms, source, target, source == 0, teacher_forcing=teacher_forcing)
        assert masked.batched, "vmap must batch the mask samples"
        reference = masked_forward_reference(masked, uniforms, source, target, source == 0,
                                             teacher_forcing=teacher_forcing)
        torch.testing.assert_close(batched, reference, rtol=1e-4, atol=1e-5)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)

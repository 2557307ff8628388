"""The huggingface model family: transformers models built from configs, masked on the batched path."""

import json
import logging

import pytest
import torch

pytest.importorskip("transformers")

from models.huggingface import huggingface  # noqa: E402
from models.masking import MaskConfig, MaskedModel, ParameterFilter  # noqa: E402

GPT2 = {"config": "gpt2", "settings": "n_layer=2,n_embd=16,n_head=2,n_positions=16"}
BERT = {"config": "bert", "settings": "num_hidden_layers=2,hidden_size=16,num_attention_heads=2,intermediate_size=32,"
                                      "max_position_embeddings=16"}
LLAMA = {"config": "llama", "settings": "num_hidden_layers=1,hidden_size=16,num_attention_heads=2,"
                                        "num_key_value_heads=2,intermediate_size=32,max_position_embeddings=16"}
VOCAB = 30


def padded_batch(batch=8, length=9):
    """ids [B, T] with padding (id 0) at the end of some rows, attention mask [B, T]."""
    ids = torch.randint(1, VOCAB, (batch, length))
    attention = torch.ones(batch, length, dtype=torch.long)
    attention[0, 5:] = 0
    attention[3, 7:] = 0
    return ids.masked_fill(attention == 0, 0), attention


@pytest.mark.parametrize("settings", [GPT2, BERT, LLAMA], ids=["gpt2", "bert", "llama"])
@pytest.mark.parametrize("num_labels", [0, 3], ids=["lm", "classifier"])
def test_wrapper_gives_the_logits_transformers_gives_for_the_padding_mask(settings, num_labels):
    """The wrapper's own 4D mask (what vmap can batch) against transformers' handling of the 2D mask."""
    model = huggingface(VOCAB, num_labels, 0, 16, **settings).eval()
    ids, attention = padded_batch()
    ours = model(ids, attention)
    theirs = model.model(input_ids=ids, attention_mask=attention).logits
    kept = attention.bool() if num_labels == 0 else torch.ones(len(ids), dtype=torch.bool)  # padded positions aside
    torch.testing.assert_close(ours[kept], theirs[kept], rtol=0, atol=1e-6)
    assert model.causal == (settings is not BERT)


@pytest.mark.parametrize("settings", [GPT2, BERT], ids=["gpt2", "bert"])
@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
def test_masked_transformer_runs_batched_and_equals_the_plain_model_when_every_weight_is_kept(settings, fused,
                                                                                               caplog):
    model = huggingface(VOCAB, 3, 0, 16, **settings).eval()
    ids, attention = padded_batch()
    expected = model(ids, attention)
    masked = MaskedModel(model, MaskConfig(num_samples=2), ParameterFilter(biases=False), fused=fused)
    with torch.no_grad():
        for logit in masked.logits:
            logit.fill_(100.0)  # σ(100) = 1 in float32: every sample keeps every weight
    with caplog.at_level(logging.WARNING):
        output = masked(ids, attention)
        output.pow(2).sum().backward()
    assert masked.batched and "vmap cannot batch" not in caplog.text
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)
    # with all-keep samples the straight-through gradient still reaches every masked weight's logit
    assert all(logit.grad is not None for logit in masked.logits)


def test_settings_change_the_config_and_the_task_sets_vocabulary_and_labels():
    model = huggingface(VOCAB, 5, 0, 16, config="gpt2", settings="n_layer=3,n_embd=24,n_head=3,n_positions=16")
    config = model.model.config
    assert (config.n_layer, config.n_embd, config.vocab_size, config.num_labels) == (3, 24, VOCAB, 5)
    assert type(model.model).__name__ == "GPT2ForSequenceClassification" and config.use_cache is False
    assert type(huggingface(VOCAB, 0, 0, 16, **GPT2).model).__name__ == "GPT2LMHeadModel"


def test_a_json_config_file_and_a_saved_folder_give_the_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_embd": 8, "n_head": 2,
                                                      "n_positions": 16}))
    model = huggingface(VOCAB, 0, 0, 16, config=str(tmp_path / "config.json"))
    assert (model.model.config.n_layer, model.model.config.n_embd) == (1, 8)
    model.model.save_pretrained(tmp_path / "saved")
    again = huggingface(VOCAB, 0, 0, 16, config=str(tmp_path / "saved"))
    assert (again.model.config.n_layer, again.model.config.n_embd) == (1, 8)


def test_pretrained_folder_weights_are_loaded_bit_for_bit(tmp_path):
    torch.manual_seed(3)
    original = huggingface(VOCAB, 0, 0, 16, **GPT2)
    original.model.save_pretrained(tmp_path)
    torch.manual_seed(4)  # a different random init, which the loaded weights must replace
    loaded = huggingface(VOCAB, 0, 0, 16, config="", pretrained=str(tmp_path))
    for (name, a), (_, b) in zip(original.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_unknown_model_type_is_one_clear_error():
    with pytest.raises(ValueError, match=r"model.config='gpx2' is not a model type transformers knows "
                                         r"\(did you mean 'gpt2'\?\)"):
        huggingface(VOCAB, 0, 0, 16, config="gpx2")


def test_pretrained_folder_without_weights_is_one_clear_error(tmp_path):
    huggingface(VOCAB, 0, 0, 16, **GPT2).model.config.save_pretrained(tmp_path)  # config.json only
    with pytest.raises(ValueError, match="holds no weights"):
        huggingface(VOCAB, 0, 0, 16, config="", pretrained=str(tmp_path))


def test_sequences_longer_than_the_model_positions_are_refused():
    with pytest.raises(ValueError, match="max_length=32 .* n_positions is 16"):
        huggingface(VOCAB, 0, 0, 32, **GPT2)

"""Any Hugging Face `transformers` model, built from a config, as a plain nn.Module that returns logits.

`transformers` is an optional extra (`pip install -e ".[hf]"`): it is imported when a model is built,
never when this module is imported, so the family is listed everywhere and fails with a clear message
only where it is used without the extra.

Where the architecture comes from (`model.config`): the name of a model type transformers ships a
config for ("gpt2", "bert", "llama", ...), a JSON config file, or a `save_pretrained` folder (its
config.json); `model.settings` changes values of that config ("n_layer=2,n_embd=64"). The weights are
random (drawn from torch's generator, so the trial seed decides them) unless `model.pretrained`
names a folder written by `save_pretrained` (or, where the machine reaches it, a hub id).

Three things make a transformers model fit the masking core's batched (vmap) path: the cache is off
(`use_cache=False`: a DynamicCache in the output is not a tensor vmap can return), the wrapper
returns the logits alone, and it hands the model a ready 4D attention mask instead of the 2D padding
mask: from a 2D mask, transformers decides in Python whether the mask can be skipped
(`padding_mask.all()`), which vmap cannot trace; a 4D mask is used as it is. Attention runs in
transformers' "eager" implementation by default (its SDPA kernel has no batching rule, vmap runs it
example by example).
"""

from __future__ import annotations

import difflib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from models.registry import ExampleInput, ModelExample, register_model

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
POSITION_LIMITS = ("n_positions", "max_position_embeddings")  # config keys that bound the sequence length


class TextModel(nn.Module):
    """A transformers model that returns its logits only.

    input_ids [B, T] int, attention_mask [B, T] (1 = token, 0 = padding) -> logits: [B, num_labels]
    for a sequence-classification head, [B, T, vocab] for a language-model head.
    causal: whether the model's self-attention is causal (then position q attends to keys <= q only).
    """

    def __init__(self, model: nn.Module, causal: bool):
        super().__init__()
        self.model = model
        self.causal = causal

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        if attention_mask is not None:
            attention_mask = additive_attention_mask(attention_mask, self.causal)
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def additive_attention_mask(attention_mask: Tensor, causal: bool) -> Tensor:
    """[B, T] padding mask (1 = token) -> [B, 1, T, T] float: 0 where query q may attend to key k
    (k is a token, and k <= q if causal), the dtype's lowest value elsewhere (added to the scores)."""
    length = attention_mask.shape[-1]
    keep = attention_mask[:, None, None, :].bool()
    if causal:
        keep = keep & torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()
    else:
        keep = keep.expand(-1, -1, length, -1)
    return torch.zeros(keep.shape, device=attention_mask.device).masked_fill(~keep, torch.finfo(torch.float32).min)


def has_causal_attention(model: nn.Module) -> bool:
    """transformers' attention modules say whether they are causal (`is_causal`); decoder-only models'
    are, encoders' are not."""
    return any(getattr(module, "is_causal", False) is True for module in model.modules())


@dataclass(frozen=True)
class HuggingFaceSettings:
    builder: str = "huggingface"
    config: str = "gpt2"  # a model type ("gpt2", "bert"), a JSON config file or a save_pretrained folder
    settings: str = ""  # config values on top, "n_layer=2,n_embd=64" (JSON values: 2, 0.1, true, "gelu")
    pretrained: str = ""  # a save_pretrained folder whose weights are loaded (or a hub id where reachable)
    head: str = "auto"  # "auto" (classification for a task with labels, causal LM otherwise) or a class name
    attention: str = "eager"  # transformers' attn_implementation; "eager" is the one vmap can batch with padding


EXAMPLE = ModelExample(
    dims={"vocab_size": 30, "num_labels": 0, "pad_token_id": 0, "max_length": 16},
    settings={"settings": "n_layer=1,n_embd=16,n_head=2,n_positions=16,embd_pdrop=0,resid_pdrop=0,attn_pdrop=0"},
    inputs=(ExampleInput(("batch", 9), "vocab_size"), ExampleInput(("batch", 9), fill=1)), needs=("transformers",))


@register_model("huggingface", HuggingFaceSettings, EXAMPLE)
def huggingface(vocab_size: int, num_labels: int, pad_token_id: int, max_length: int, config: str = "gpt2",
                settings: str = "", pretrained: str = "", head: str = "auto", attention: str = "eager") -> TextModel:
    """The model for a text task with a tokenizer of `vocab_size` tokens, `num_labels` classes (0:
    next-token prediction), padding token `pad_token_id` and sequences up to `max_length` tokens."""
    transformers = import_transformers()
    model_config = load_config(config, pretrained)
    model_config.update(parse_settings(settings))
    if pretrained:
        if model_config.vocab_size < vocab_size:
            raise ValueError(f"the tokenizer has {vocab_size} tokens but the pretrained model {pretrained!r} only "
                             f"{model_config.vocab_size} embeddings; use the model's own tokenizer")
    else:
        model_config.vocab_size = vocab_size  # random weights: the embedding fits the task's tokenizer
    if num_labels:
        model_config.num_labels = num_labels
    model_config.pad_token_id = pad_token_id
    model_config.use_cache = False
    check_positions(model_config, max_length)
    model_class = head_class(transformers, head, num_labels)
    if pretrained and torch.get_default_device().type != "meta":  # meta: the config check before a run
        model = model_class.from_pretrained(pretrained, config=model_config, attn_implementation=attention,
                                            dtype=torch.float32)
    else:
        model = model_class.from_config(model_config, attn_implementation=attention)
    return TextModel(model.float(), has_causal_attention(model))


def import_transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError("model.builder=huggingface needs the transformers library: pip install -e \".[hf]\"") from None
    transformers.logging.set_verbosity_error()  # its warnings about random heads are expected here
    return transformers


def load_config(config: str, pretrained: str = ""):
    """The transformers config named by `config` (model type, JSON file or folder), or, when `config`
    is empty, the one of the `pretrained` folder. Unknown names are an error naming the near matches."""
    from transformers import CONFIG_MAPPING, AutoConfig

    if pretrained:
        check_weights(pretrained)
        if not config:
            return AutoConfig.from_pretrained(pretrained)
    path = Path(config).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ValueError(f"model.config={config!r} is a folder without config.json; give a folder written by "
                             "save_pretrained, a JSON config file or a model type such as gpt2")
        return AutoConfig.from_pretrained(path)
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise ValueError(f"model.config={config!r}: no such JSON file")
        values = json.loads(path.read_text())
        model_type = values.pop("model_type", None)
        if model_type not in CONFIG_MAPPING:
            raise ValueError(f"the JSON config {config!r} has model_type={model_type!r}, which transformers does not "
                             f"know{suggest(str(model_type), CONFIG_MAPPING.keys())}")
        return AutoConfig.for_model(model_type, **values)
    if config not in CONFIG_MAPPING:
        raise ValueError(f"model.config={config!r} is not a model type transformers knows"
                         f"{suggest(config, CONFIG_MAPPING.keys())}, nor a JSON config file or a save_pretrained "
                         "folder; give one of those (model types: gpt2, bert, llama, ...)")
    return AutoConfig.for_model(config)


def check_weights(pretrained: str) -> None:
    """A local folder must hold weights; anything that is not a local path is left to the hub."""
    path = Path(pretrained).expanduser()
    looks_local = path.exists() or pretrained.startswith(("/", ".", "~")) or pretrained.count("/") > 1
    if not looks_local:
        return
    if not path.is_dir():
        raise ValueError(f"model.pretrained={pretrained!r}: no such folder; give a folder written by save_pretrained")
    if not any((path / name).exists() for name in WEIGHT_FILES):
        raise ValueError(f"model.pretrained={pretrained!r} holds no weights (none of {', '.join(WEIGHT_FILES)}); "
                         "save them there with model.save_pretrained(folder), or leave model.pretrained empty to "
                         "start from random weights")


def parse_settings(settings: str) -> dict:
    """"n_layer=2,n_embd=64,activation_function=gelu" -> {"n_layer": 2, "n_embd": 64, "activation_function": "gelu"}."""
    values = {}
    for part in filter(None, (p.strip() for p in settings.split(","))):
        key, separator, text = part.partition("=")
        if not separator or not key.strip():
            raise ValueError(f"model.settings expects key=value pairs separated by commas, got {part!r}")
        try:
            values[key.strip()] = json.loads(text.strip())
        except json.JSONDecodeError:
            values[key.strip()] = text.strip()
    return values


def check_positions(model_config, max_length: int) -> None:
    for key in POSITION_LIMITS:
        limit = getattr(model_config, key, None)
        if isinstance(limit, int) and limit < max_length:
            raise ValueError(f"the task's sequences reach max_length={max_length} tokens but the model's {key} is "
                             f"{limit}; lower task_options.max_length or raise it with model.settings={key}=...")


def head_class(transformers, head: str, num_labels: int):
    if head == "auto":
        return transformers.AutoModelForSequenceClassification if num_labels else transformers.AutoModelForCausalLM
    model_class = getattr(transformers, head, None)
    if not (isinstance(model_class, type) and hasattr(model_class, "from_config")):
        names = [n for n in dir(transformers) if n.startswith(("AutoModelFor", head[:4]))]
        raise ValueError(f"model.head={head!r} is not a model class of transformers{suggest(head, names)}; use "
                         "auto or a class name such as GPT2ForSequenceClassification")
    return model_class


def suggest(name: str, choices) -> str:
    """' (did you mean 'x'?)' for the nearest choice, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""

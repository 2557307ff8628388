"""The small text dataset and word-level tokenizer shipped in tests/fixtures/text-demo/ (no download).

`python -m tests.tasks.text_data tests/fixtures/text-demo` writes them; a test checks that the
shipped files are what this writes.

sentences.csv: "<determiner> <0-2 adjectives> <noun> <verb> <adverb>" with the noun's topic as label
(animal, food, vehicle, weather); 480 sentences, 120 per topic. For next-token prediction:
living.txt (animal and food sentences) and machines.txt (vehicle and weather sentences).
"""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

TOPICS = {
    "animal": ("cat", "dog", "horse", "bird"),
    "food": ("bread", "apple", "soup", "rice"),
    "vehicle": ("car", "bus", "train", "bike"),
    "weather": ("rain", "snow", "wind", "fog"),
}
DETERMINERS = ("the", "a", "this", "that")
ADJECTIVES = ("big", "small", "old", "new", "red", "green")
VERBS = ("is", "was", "seems", "looks")
ADVERBS = ("here", "there", "today", "again")
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
PER_TOPIC = 120


def sentences(seed: int = 0) -> list[tuple[str, str]]:
    """[(text, topic)], topics interleaved."""
    rng = random.Random(seed)
    rows = []
    for _ in range(PER_TOPIC):
        for topic, nouns in TOPICS.items():
            adjectives = rng.sample(ADJECTIVES, rng.randint(0, 2))  # lengths differ: batches need padding
            words = (rng.choice(DETERMINERS), *adjectives, rng.choice(nouns), rng.choice(VERBS), rng.choice(ADVERBS))
            rows.append((" ".join(words), topic))
    return rows


def vocabulary() -> list[str]:
    words = [*DETERMINERS, *ADJECTIVES, *(n for nouns in TOPICS.values() for n in nouns), *VERBS, *ADVERBS]
    return [*SPECIALS, *words]


def write_tokenizer(folder: Path) -> None:
    """A word-level tokenizer, "[CLS] words [SEP]", saved with save_pretrained."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(vocabulary())}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                            sep_token="[SEP]").save_pretrained(folder)


def write_text_demo(folder: Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = sentences()
    with open(folder / "sentences.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    living = [text for text, topic in rows if topic in ("animal", "food")]
    machines = [text for text, topic in rows if topic in ("vehicle", "weather")]
    (folder / "living.txt").write_text("\n".join(living) + "\n")
    (folder / "machines.txt").write_text("\n".join(machines) + "\n")
    write_tokenizer(folder / "tokenizer")


if __name__ == "__main__":
    write_text_demo(Path(sys.argv[1]))

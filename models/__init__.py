"""Plain nn.Modules of the paper and the masking core; nothing here knows about tasks or sweeps.

Importing the package registers every model family (models.registry).
"""

from models import cnn, fnn, huggingface, lstm, resnet, seq2seq_lstm, transformer  # noqa: F401  (registration)

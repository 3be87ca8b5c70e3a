"""Prepare datasets as TFRecord pyramids and read them back (docs/architecture.md, "Data flow";
docs/data.md for users).

progan.dataset.sources / synthetic : where images come from
progan.dataset.pyramid             : the reference tool's level chain
progan.dataset.pool                : the worker processes that encode images, and how they stop
progan.dataset.writer              : staging, the atomic swap, dataset.json
progan.dataset.reader              : tf.data batches with exact resume, and their labels
progan.dataset.cli                 : the ``progan-dataset`` command
"""

from progan.dataset.format import DatasetError
from progan.dataset.reader import LabelSet, load, open_dataset, read_images, read_labels
from progan.dataset.synthetic import ensure_synthetic

__all__ = ["DatasetError", "LabelSet", "ensure_synthetic", "load", "open_dataset", "read_images",
           "read_labels"]

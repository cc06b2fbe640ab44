"""Data layer: dataset registry (`sources`), label-scarce splits (`splits`) and tf.data
builders (`pipeline`). Augmentation presets live in `kerassl.data.augment`."""

from kerassl.data.pipeline import labeled_dataset, pretrain_dataset, to_float
from kerassl.data.sources import (
    DATASET_HELP,
    ImageData,
    default_preset,
    load_dataset,
    read_idx,
    resize_images,
    stratified_holdout,
)
from kerassl.data.splits import Split, label_split, parse_labels

__all__ = [
    "DATASET_HELP",
    "ImageData",
    "Split",
    "default_preset",
    "label_split",
    "labeled_dataset",
    "load_dataset",
    "parse_labels",
    "pretrain_dataset",
    "read_idx",
    "resize_images",
    "stratified_holdout",
    "to_float",
]

"""The names a setting accepts, TensorFlow-free: `TrainConfig.validate` checks them before
TensorFlow loads, and each builder takes its tuple from here (one list per kind).
Methods have their own registry (`kerassl.methods`), augmentation presets theirs
(`kerassl.data.presets`)."""

from __future__ import annotations

from kerassl.errors import UserError

ENCODERS = ("cnn", "resnet18", "resnet50", "inceptionv3")
PRETRAINED_ENCODERS = ("resnet50", "inceptionv3")  # keras.applications: --weights imagenet
WEIGHTS = ("imagenet",)
HEADS = ("linear", "mlp", "deep_mlp")
OPTIMIZERS = ("adam", "lars", "sgd")
CLASSIFIERS = ("cnn", "cnn_deep", "mlp", "resnet50", "inceptionv3")  # supervised baselines
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
# SimCLR's NT-Xent similarity: cosine (the paper's) or the raw dot product (its Table 5).
SIMILARITIES = ("cosine", "dot")
# Keras dtype policies of the method's networks (--precision): mixed ones compute in 16 bits
# and keep float32 variables, losses and encoder features (`kerassl.models.base`).
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def known(kind: str, name: str, names: tuple[str, ...]) -> str:
    """`name` if it is one of `names`, else `UserError("unknown {kind} ...; choose one of")`."""
    if name not in names:
        raise UserError(f"unknown {kind} {name!r}; choose one of {', '.join(names)}")
    return name

"""KerasHub vision backbones as frozen kerassl encoders (the DINOv2 / CLIP reference features).

`kerassl evaluate SOURCE` takes, besides a run directory or an encoder `.keras` file, a
KerasHub preset: a directory written by `save_to_preset`, a `kaggle://`, `hf://` or
`modelscope://` handle, or a built-in preset name (`dinov2_small`, `clip_vit_base_patch16`).
`is_hub_source` tells them apart without loading anything; `hub_encoder` wraps the preset
into a kerassl encoder, a functional `keras.Model` mapping [0, 1] float images of the
dataset's shape to [D] features, which `extract_features` runs like any other encoder.

Inside the encoder's graph, in this order:

1. Channels: grayscale images are repeated to the backbone's 3 channels.
2. Pixels: the [0, 1] images are multiplied by 255, since KerasHub image converters take
   raw [0, 255] pixels (their `scale`/`offset` hold the preset's mean and std, e.g.
   `scale = 1 / (255 std)`, `offset = -mean / std`).
3. The preset's own `ImageConverter` (loaded from the same preset, no constants written
   here): resize to the backbone's input size (bilinear, as the converter is configured),
   then scale and offset. The size is the backbone's fixed input size if its graph has
   one (the preset's, or `input_size` when the backbone is rebuilt for that), else the
   converter's `image_size`, else the images keep their size (a CNN accepts any). A
   KerasHub preset saved without an image converter gets an identity one (resize only):
   its backbone sees [0, 255] pixels, which is what KerasHub feeds it then too. A
   checkpoint converted from another format (an `hf://` Transformers repository) whose
   preprocessing keras-hub cannot read is refused rather than fed raw pixels.
4. The backbone, then one vector per image:
   - ViT-like backbones (DINOv2, DINOv3, ViT, DeiT), whose output is a token sequence
     [B, T, D]: the class token, position 0 (DINOv2's is after the final layer norm, the
     "pooled output" of the reference implementation); the mean over tokens for a ViT
     built without a class token.
   - Image-text backbones (CLIP, MetaCLIP 2, SigLIP): their image tower alone, pooled as
     the backbone pools it (CLIP's pooler is the class token, MetaCLIP 2 adds its post
     layer norm, SigLIP's tower ends in its attention-pooling head), before the projection
     into the joint space: the features the CLIP paper's linear probes use (Radford et
     al. 2021, appendix A.3).
   - CNN backbones (ResNet, EfficientNet, ...), whose output is a map [B, h, w, C]:
     global average pooling over h and w.
   - A backbone that already outputs [B, D] vectors: those.

Only channels-last backbones (Keras' default) are supported. keras-hub is an optional
extra (`pip install 'kerassl[hub]'`): this module imports it only inside `hub_encoder`
and, for a bare name that could be a built-in preset, `is_hub_source`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import keras

from kerassl.checks import RULES, check
from kerassl.errors import UserError

HANDLE_SCHEMES = ("kaggle://", "hf://", "modelscope://")

# What `save_to_preset` writes: config.json holds the backbone's Keras serialisation
# ("registered_name": "keras_hub>DINOV2Backbone"), metadata.json the versions.
PRESET_CONFIG = "config.json"
PRESET_METADATA = "metadata.json"
# Beside a kerassl run's own config.json (see `kerassl.run_dir`).
RUN_SPLIT = "split.json"

INSTALL_HINT = "pip install 'kerassl[hub]'"


def is_hub_source(source: str) -> bool:
    """Whether `kerassl evaluate SOURCE` should load SOURCE as a KerasHub preset.

    True for a directory holding a preset (`config.json` of a keras_hub class, or
    `metadata.json` with a keras_hub version, and no kerassl `split.json`), for a
    `kaggle://`, `hf://` or `modelscope://` handle, and for a built-in preset name when
    keras-hub is installed. Nothing is downloaded; keras-hub is imported only for a bare
    name that is no existing path.

    Args:
        source: what the user gave as SOURCE.
    """
    if source.lower().startswith(HANDLE_SCHEMES):
        return True
    path = Path(source)
    if path.suffix == ".keras" or path.is_file():
        return False
    if path.is_dir():
        return _is_preset_dir(path)
    if os.sep in source or (os.altsep and os.altsep in source):
        return False  # a path that does not exist
    keras_hub = _import_keras_hub_or_none()
    return keras_hub is not None and source in keras_hub.models.Backbone.presets


def hub_encoder(
    source: str, image_shape: tuple[int, int, int], input_size: int | None = None
) -> keras.Model:
    """A KerasHub preset's vision backbone as a kerassl encoder (see the module docstring).

    Args:
        source: a preset directory, a `kaggle://`/`hf://`/`modelscope://` handle or a
            built-in preset name.
        image_shape: the dataset's (height, width, channels), channels 1 or 3.
        input_size: the side of the square images to rebuild the backbone for (passed to
            `from_preset` as `image_shape`), e.g. 224 for a DINOv2 preset saved at 518
            px (it interpolates its position embeddings); None keeps the preset's size.

    Returns:
        A functional model: float32 [B, *image_shape] images in [0, 1] → [B, D] features.

    Raises:
        UserError: keras-hub is not installed; the preset is not found, cannot be loaded
            (e.g. it needs a download while offline) or is not a vision backbone.

    Example:
    ```python
    encoder = hub_encoder("dinov2_small", (28, 28, 1))
    features = extract_features(encoder, x_uint8)  # [N, 384]
    ```
    """
    height, width, channels = _checked_image_shape(image_shape)
    if input_size is not None:
        check("input_size", input_size, RULES["image_size"])
    keras_hub = _import_keras_hub_or_none()
    if keras_hub is None:
        raise UserError(f"the KerasHub preset {source!r} needs keras-hub: {INSTALL_HINT}")
    _check_found(keras_hub, source)
    rebuilt = {} if input_size is None else {"image_shape": (input_size, input_size, 3)}
    backbone = _load(source, keras_hub.models.Backbone.from_preset, **rebuilt)
    tower, key, (in_height, in_width, in_channels), poolers = _vision_tower(backbone, source)
    repeat = channels == 1 and in_channels == 3
    if in_channels not in (None, channels) and not repeat:
        raise UserError(
            f"the KerasHub preset {source!r} takes {in_channels}-channel images; "
            f"the dataset's have {channels}"
        )
    converter = _image_converter(keras_hub, source)
    fixed_size = None if in_height is None or in_width is None else (in_height, in_width)
    converter.image_size = fixed_size or converter.image_size

    images = keras.Input((height, width, channels), name="images")  # [B, H, W, C] in [0, 1]
    x = images
    if repeat:
        x = keras.ops.repeat(x, 3, axis=-1)  # [B, H, W, 3]
    x = InGraphImageConverter(converter, name="image_converter")(x * 255.0)
    x = _main_output(tower({key: x} if key is not None else x), source)
    for pooler in poolers:
        x = pooler(x)
    features = _pooled(x, tower, source)  # [B, D]
    return keras.Model(images, features, name=f"hub_{backbone.name}")


@keras.saving.register_keras_serializable(package="kerassl")
class InGraphImageConverter(keras.layers.Layer):
    """A KerasHub `ImageConverter` as a layer of a functional model.

    KerasHub's preprocessing layers cannot be called on symbolic tensors (they convert
    their inputs to `tf.Tensor`s); this layer states the output shape and calls the
    converter on the real batches only.

    Args:
        converter: the preset's `keras_hub.layers.ImageConverter`, fed [0, 255] pixels.
    """

    def __init__(self, converter, **kwargs):
        super().__init__(**kwargs)
        self.converter = converter

    def call(self, images):
        return self.converter(images)

    def compute_output_shape(self, input_shape):
        size = self.converter.image_size or tuple(input_shape[1:3])
        return (input_shape[0], *size, input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config["converter"] = keras.saving.serialize_keras_object(self.converter)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["converter"] = keras.saving.deserialize_keras_object(config["converter"])
        return cls(**config)


def _is_preset_dir(path: Path) -> bool:
    if (path / RUN_SPLIT).exists():
        return False
    metadata = _read_json(path / PRESET_METADATA)
    if isinstance(metadata, dict) and "keras_hub_version" in metadata:
        return True
    config = _read_json(path / PRESET_CONFIG)
    return isinstance(config, dict) and str(config.get("registered_name", "")).startswith(
        "keras_hub>"
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _import_keras_hub_or_none():
    try:
        import keras_hub
    except ImportError as error:
        if error.name == "keras_hub":
            return None
        raise UserError(
            f"keras-hub is installed but cannot be imported: {_first_line(error)}"
        ) from None
    return keras_hub


def _checked_image_shape(image_shape) -> tuple[int, int, int]:
    shape = tuple(image_shape)
    if len(shape) != 3 or shape[-1] not in (1, 3) or min(shape) < 1:
        raise ValueError(
            f"image_shape must be (height, width, channels) with 1 or 3 channels. "
            f"Received: image_shape={image_shape}"
        )
    return int(shape[0]), int(shape[1]), int(shape[2])


def _check_found(keras_hub, source: str) -> None:
    if "://" in source or os.path.exists(source) or source in keras_hub.models.Backbone.presets:
        return
    raise UserError(
        f"KerasHub preset {source!r} not found: no such directory, no kaggle://, hf:// or "
        "modelscope:// handle, and no built-in preset of that name"
    )


def _load(source: str, from_preset, **kwargs):
    """`from_preset(source, **kwargs)`, any failure (missing file, offline download, bad
    config) becoming a one-line UserError."""
    try:
        return from_preset(source, **kwargs)
    except Exception as error:  # keras-hub, kagglehub and huggingface_hub raise many kinds
        raise UserError(f"cannot load KerasHub preset {source!r}: {_first_line(error)}") from None


def _image_converter(keras_hub, source: str):
    """The preset's image converter; an identity one (resize only) for a KerasHub preset
    saved without one.

    A checkpoint keras-hub converts from another format (Hugging Face, timm) whose
    preprocessing keras-hub does not read gives no converter either; feeding it raw
    pixels would silently give poor features, so that is an error.
    """
    try:
        converter = keras_hub.layers.ImageConverter.from_preset(source)
    except FileNotFoundError:
        return keras_hub.layers.ImageConverter()
    except Exception as error:
        raise UserError(
            f"cannot load the image converter of KerasHub preset {source!r}: {_first_line(error)}"
        ) from None
    if converter is None:
        raise UserError(
            f"keras-hub reads no image preprocessing from {source!r}; use a KerasHub preset "
            "(e.g. a built-in name or a kaggle:// handle) or one saved with its image converter"
        )
    return converter


def _vision_tower(backbone, source: str):
    """The model that embeds images alone: `(model, input key or None, (h, w, c) of its
    input, layers pooling its output)` — the backbone itself, or the image tower of an
    image-text backbone with the backbone's own poolers (CLIP's, MetaCLIP 2's)."""
    entry = _image_input(backbone)
    if entry is not None:
        return backbone, *entry, []
    tower = getattr(backbone, "vision_encoder", None)
    entry = _image_input(tower) if isinstance(tower, keras.Model) else None
    if entry is None:
        raise UserError(
            f"KerasHub preset {source!r} is not a vision backbone "
            f"({type(backbone).__name__} takes no batch of images alone)"
        )
    poolers = [
        getattr(backbone, name)
        for name in ("vision_pooler", "vision_post_layer_norm")
        if getattr(backbone, name, None) is not None
    ]
    return tower, *entry, poolers


def _image_input(model):
    """`(key, (h, w, c))` if a functional model's only input is a rank-4 float batch
    (key None for a bare tensor input), else None."""
    try:
        inputs = model.input
    except (AttributeError, ValueError):
        return None
    if isinstance(inputs, dict):
        if len(inputs) != 1:
            return None
        ((key, tensor),) = inputs.items()
    elif isinstance(inputs, (list, tuple)):
        if len(inputs) != 1:
            return None
        key, tensor = None, inputs[0]
    else:
        key, tensor = None, inputs
    if len(tensor.shape) != 4 or "float" not in str(tensor.dtype):
        return None
    return key, tuple(tensor.shape[1:])


def _main_output(outputs, source: str):
    if not isinstance(outputs, dict):
        return outputs
    for key in ("pooled_output", "sequence_output"):
        if key in outputs:
            return outputs[key]
    raise UserError(
        f"KerasHub preset {source!r}: no pooled or sequence output among {sorted(outputs)}"
    )


def _pooled(x, tower, source: str):
    """One vector per image from the backbone's output (see the module docstring)."""
    rank = len(x.shape)
    if rank == 2:  # [B, D] already pooled
        return x
    if rank == 3:  # [B, T, D] tokens
        if getattr(tower, "use_class_token", True):
            return x[:, 0]  # [B, D] class token
        return keras.ops.mean(x, axis=1)  # [B, D]
    if rank == 4:  # [B, h, w, C] feature map
        return keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)  # [B, C]
    raise UserError(f"KerasHub preset {source!r}: cannot pool an output of shape {x.shape}")


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__

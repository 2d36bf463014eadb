"""The classifier: log-mel ``[frames, mels]`` -> ResNet50 -> pooled features -> logits.

The log-mel (dB) of each example is standardised to zero mean and unit variance (so gain does
not matter), optionally pooled and resized to ``model.image_size``, repeated into 3 channels
and fed to ``keras.applications.ResNet50(include_top=False, pooling="avg")``. Dropout and a float32
``Dense`` give one logit per class: the model outputs **logits**; the sigmoid is applied by the
loss (``from_logits=True``) and by the exported model.

Example:
    >>> model = build_classifier(ModelConfig(image_size=(64, 32)), num_classes=3,
    ...                          input_shape=(501, 128))
    >>> model(np.zeros([2, 501, 128], "float32")).shape
    (2, 3)
"""

from __future__ import annotations

from pathlib import Path

import keras

from tfbird.config import ModelConfig

IMAGENET_NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_NOTOP_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
                      + IMAGENET_NOTOP_FILE)


def build_classifier(model_cfg: ModelConfig, num_classes: int,
                     input_shape: tuple[int, int]) -> keras.Model:
    """Builds the ResNet50 classifier.

    Args:
        model_cfg: backbone weights, image size and dropout.
        num_classes: number of output logits.
        input_shape: ``(frames, mels)`` of one log-mel example.

    Returns:
        A functional ``keras.Model`` from log-mel ``[batch, frames, mels]`` to logits
        ``[batch, num_classes]``.
    """
    image_size = tuple(model_cfg.image_size or input_shape)
    # === Layers ===
    inputs = keras.Input(shape=tuple(input_shape), name="logmel")
    x = keras.layers.Reshape((*input_shape, 1), name="add_channel")(inputs)
    x = keras.layers.LayerNormalization(axis=[1, 2, 3], center=False, scale=False,
                                        name="standardize")(x)
    if image_size != tuple(input_shape):
        x = resize_image(x, tuple(input_shape), image_size)
    x = keras.layers.Concatenate(name="to_rgb")([x, x, x])
    backbone = build_backbone(model_cfg.weights, (*image_size, 3))
    if model_cfg.bn_momentum is not None:
        set_batch_norm_momentum(backbone, model_cfg.bn_momentum)
    if model_cfg.zero_init_residual and model_cfg.weights == "none":
        zero_init_residual_branches(backbone)
    x = backbone(x)
    x = keras.layers.Dropout(model_cfg.dropout, name="dropout")(x)
    logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name="tfbird_classifier")


def resize_image(x, input_shape: tuple[int, int], image_size: tuple[int, int]):
    """Average-pools by the integer part of the shrink factor, then resizes bilinearly.

    Bilinear resizing alone samples only a few input pixels when shrinking a lot (501 frames
    to 64 reads about 2 of every 8 frames), so short calls could vanish; pooling first keeps
    every frame's energy. Both are builtin TFLite ops.
    """
    pool = (max(1, input_shape[0] // image_size[0]), max(1, input_shape[1] // image_size[1]))
    if pool != (1, 1):
        x = keras.layers.AveragePooling2D(pool_size=pool, strides=pool, padding="same",
                                          name="pool")(x)
    return keras.layers.Resizing(*image_size, name="resize")(x)


def set_batch_norm_momentum(model: keras.Model, momentum: float) -> None:
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def zero_init_residual_branches(backbone: keras.Model) -> None:
    """Sets gamma of each residual block's last batch norm (``convN_blockM_3_bn``) to 0."""
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization) and layer.name.endswith("_3_bn"):
            layer.gamma.assign(keras.ops.zeros_like(layer.gamma))


def build_backbone(weights: str, image_shape: tuple[int, int, int]) -> keras.Model:
    """``ResNet50(include_top=False, pooling="avg")`` with ``weights`` none|imagenet|PATH."""
    if weights == "none":
        keras_weights = None
    elif weights == "imagenet":
        keras_weights = "imagenet"
    elif Path(weights).is_file():
        keras_weights = str(weights)
    else:
        raise ValueError(
            "model.weights must be 'none', 'imagenet' or the path of a ResNet50 "
            f"include_top=False weights file. Received: weights={weights!r}")
    try:
        return keras.applications.ResNet50(include_top=False, weights=keras_weights,
                                           input_shape=image_shape, pooling="avg")
    except Exception as error:
        if weights != "imagenet":
            raise ValueError(f"Could not load backbone weights from {weights}: {error}. "
                             f"Received: weights={weights!r}") from error
        raise ValueError(
            "Could not download the ImageNet weights for ResNet50 (is this machine offline?). "
            f"Download {IMAGENET_NOTOP_URL} where there is network and pass the file with "
            f"--weights PATH (or model.weights: PATH), or put it in ~/.keras/models/. "
            f"Cause: {error}. Received: weights='imagenet'") from error

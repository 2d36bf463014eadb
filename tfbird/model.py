"""The classifier: log-mel ``[frames, mels]`` -> ResNet50 -> a head -> logits.

The log-mel (dB) of each example is standardised to zero mean and unit variance (so gain does
not matter), optionally pooled and resized to ``model.image_size``, repeated into 3 channels
and fed to ``keras.applications.ResNet50(include_top=False)``. The head (``model.head``) makes
one float32 logit per class: the model outputs **logits**; the sigmoid is applied by the loss
(``from_logits=True``) and by the exported model.

- ``gap``: ResNet50's global average pooling, dropout and a ``Dense`` layer (``logits``).
- ``sed``: the sound-event-detection head of PANNs (Kong et al., 2020) as used by the Cornell
  2020 and BirdCLEF winners. The image is ``[frames, mels]``, so the feature map is
  ``[batch, time, freq, 2048]``; it is averaged over frequency, optionally run
  through a bidirectional GRU (``model.sed_gru_units``), and two 1x1 convolutions give per
  time step class logits ``sed_cla`` and attention ``sed_att`` = softmax over time of
  ``tanh(conv)``. The clip probability is ``p = sum_t att * sigmoid(cla)``; the model outputs
  ``log(p / (1 - p))`` with ``p`` clipped to ``[1e-7, 1 - 1e-7]``. With
  ``model.sed_clip_pooling: logit`` the attention pools the logits instead: the model outputs
  ``sum_t att * cla``. ``framewise_model`` gives the per-frame probabilities ``sigmoid(cla)``
  at the input's frame rate.

Example:
    >>> model = build_classifier(ModelConfig(image_size=(64, 32)), num_classes=3,
    ...                          input_shape=(501, 128))
    >>> model(np.zeros([2, 501, 128], "float32")).shape
    (2, 3)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras

from tfbird.augment import log_mel_augment
from tfbird.config import (DEFAULT_STATISTICS_FEATURES, STATISTICS_FEATURES, AudioConfig,
                           AugmentConfig, FrontendConfig, ModelConfig)
from tfbird.frontend import build_frontend

SED_PROBABILITY_EPSILON = 1e-7
# config.IMAGE_BACKBONES: the keras.applications constructor and its options.
IMAGE_BACKBONES = {
    "resnet50": (keras.applications.ResNet50, {}),
    "mobilenetv3small": (keras.applications.MobileNetV3Small, {"include_preprocessing": False}),
    "mobilenetv3large": (keras.applications.MobileNetV3Large, {"include_preprocessing": False}),
    "efficientnetv2b0": (keras.applications.EfficientNetV2B0, {"include_preprocessing": False}),
}
IMAGENET_NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_NOTOP_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
                      + IMAGENET_NOTOP_FILE)


def build_classifier(model_cfg: ModelConfig, num_classes: int,
                     input_shape: tuple[int, int]) -> keras.Model:
    """Builds the ResNet50 classifier.

    Args:
        model_cfg: backbone weights, image size, dropout and head.
        num_classes: number of output logits.
        input_shape: ``(frames, mels)`` of one log-mel example.

    Returns:
        A functional ``keras.Model`` from log-mel ``[batch, frames, mels]`` to logits
        ``[batch, num_classes]``; its last layer is named ``logits``.
    """
    image_size = tuple(model_cfg.image_size or input_shape)
    # === Layers ===
    inputs = keras.Input(shape=tuple(input_shape), name="logmel")
    x = keras.layers.Reshape((*input_shape, 1), name="add_channel")(inputs)
    x = keras.layers.LayerNormalization(axis=[1, 2, 3], center=False, scale=False,
                                        name="standardize")(x)
    standardized = x
    if image_size != tuple(input_shape):
        x = resize_image(x, tuple(input_shape), image_size)
    x = keras.layers.Concatenate(name="to_rgb")([x, x, x])
    pooling = "avg" if model_cfg.head == "gap" else None
    backbone = build_backbone(model_cfg.weights, (*image_size, 3), pooling=pooling,
                              name=model_cfg.backbone)
    if model_cfg.bn_momentum is not None:
        set_batch_norm_momentum(backbone, model_cfg.bn_momentum)
    if (model_cfg.zero_init_residual and model_cfg.weights == "none"
            and model_cfg.backbone == "resnet50"):
        zero_init_residual_branches(backbone)
    x = backbone(x)
    if model_cfg.head == "sed":
        logits = sed_head(x, num_classes, model_cfg.dropout, model_cfg.sed_gru_units,
                          model_cfg.sed_clip_pooling)
    else:
        if model_cfg.clip_statistics:
            stats = time_statistics(standardized, tuple(input_shape), model_cfg.bn_momentum)
            x = keras.layers.Concatenate(name="with_statistics")([x, stats])
        x = keras.layers.Dropout(model_cfg.dropout, name="dropout")(x)
        logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name="tfbird_classifier")


def time_statistics(standardized, input_shape: tuple[int, int],
                    bn_momentum: float | None = None):
    """Per-mel mean and mean square over time of the standardised log-mel ``[batch, frames,
    mels, 1]`` -> ``[batch, 2 * mels]``, each feature batch-normalised (``model.clip_statistics``).

    What a linear model on log-mel statistics reads: the average spectrum tells stationary
    sounds (rain, engines, waves) apart, which a CNN trained from scratch on few clips learns
    slowly. Builtin layers only, so the model still converts to TFLite builtins.
    """
    frames = keras.layers.Reshape(input_shape, name="statistics_frames")(standardized)
    mean = keras.layers.GlobalAveragePooling1D(name="statistics_mean")(frames)
    square = keras.layers.Multiply(name="statistics_square")([frames, frames])
    mean_square = keras.layers.GlobalAveragePooling1D(name="statistics_mean_square")(square)
    stats = keras.layers.Concatenate(name="statistics")([mean, mean_square])
    momentum = 0.99 if bn_momentum is None else bn_momentum
    return keras.layers.BatchNormalization(momentum=momentum,
                                           name="statistics_standardize")(stats)


def build_embedding_head(model_cfg: ModelConfig, num_classes: int,
                         embedding_dim: int) -> keras.Model:
    """The head trained on a pretrained backbone's embeddings (``model.backbone`` birdnet or
    perch): embedding ``[batch, dim]`` -> logits ``[batch, num_classes]``.

    Layers: ``standardize`` (each embedding to zero mean and unit variance over its
    values, as the log-mel classifier standardises its input), then with
    ``model.head_hidden_units`` a ``hidden`` ReLU layer, ``dropout`` and ``logits``.
    With no hidden layer it is a logistic regression on the standardised embedding.

    Example:
        >>> head = build_embedding_head(ModelConfig(backbone="birdnet"), 3, 1024)
        >>> head(np.zeros([2, 1024], "float32")).shape
        (2, 3)
    """
    inputs = keras.Input(shape=(embedding_dim,), name="embedding")
    x = keras.layers.LayerNormalization(center=False, scale=False, name="standardize")(inputs)
    if model_cfg.head_hidden_units:
        x = keras.layers.Dense(model_cfg.head_hidden_units, activation="relu",
                               name="hidden")(x)
    x = keras.layers.Dropout(model_cfg.dropout, name="dropout")(x)
    logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name="tfbird_embedding_head")


def build_waveform_classifier(classifier: keras.Model, audio: AudioConfig,
                              frontend: FrontendConfig,
                              augment: AugmentConfig | None = None) -> keras.Model:
    """The classifier with the front end as its first layer (``model.frontend_in_model``).

    Layers: ``waveform`` input ``[batch, window_samples]`` -> ``log_mel_spectrogram``
    (``frontend.build_frontend``, the layer ingest and the export use) -> with ``augment``,
    ``log_mel_augmentation`` (training only) -> ``classifier`` (logits).

    Example:
        >>> model = build_waveform_classifier(classifier, AudioConfig(), FrontendConfig())
        >>> model(np.zeros([2, 160000], "float32")).shape
        (2, 10)
    """
    waveform = keras.Input(shape=(audio.window_samples,), name="waveform")
    x = build_frontend(audio, frontend)(waveform)
    if augment is not None and (augment.freq_shift_mels or augment.noise_probability
                                or augment.time_mask_frames or augment.freq_mask_mels):
        x = LogMelAugmentation(augment, name="log_mel_augmentation")(x)
    return keras.Model(waveform, classifier(x), name="tfbird_waveform_classifier")


def logmel_classifier(model: keras.Model) -> keras.Model:
    """The log-mel classifier of a model: ``model`` itself, or the one inside a
    ``build_waveform_classifier`` model (its front end and augmentation left out)."""
    if len(model.input_shape) == 2:  # [batch, samples]: a waveform classifier.
        return model.get_layer("tfbird_classifier")
    return model


@keras.saving.register_keras_serializable(package="tfbird")
class LogMelAugmentation(keras.layers.Layer):
    """Frequency shift, Gaussian noise and SpecAugment (``augment.log_mel_augment``) on
    log-mels ``[batch, frames, mels]`` in training; the identity otherwise.

    Args:
        augment: the ``augment`` settings (a ``AugmentConfig`` or its dict).
        seed: seed of the layer's stream of stateless seeds.
    """

    def __init__(self, augment: AugmentConfig | dict, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if isinstance(augment, dict):
            augment = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v
                                       for k, v in augment.items()})
        self.augment = augment
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, logmel, training=None):
        if not training:
            return logmel
        seed = keras.ops.cast(self.seed_generator.next(), "int32")
        return log_mel_augment(logmel, self.augment, seed)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"augment": dataclasses.asdict(self.augment), "seed": self.seed})
        return config


@keras.saving.register_keras_serializable(package="tfbird")
class LogMelStatistics(keras.layers.Layer):
    """Log-mel ``[batch, frames, mels]`` -> ``[batch, len(features) * mels]``: per mel, over
    time, each of ``features`` in order (``STATISTICS_FEATURES``): ``mean``, ``std``
    (population, as ``numpy.std``), ``delta_std`` (the std of the frame-to-frame
    differences, as ``numpy.diff(x, axis=1).std(1)``: how fast the band changes) and ``max``
    (the loudest frame); the features of the regression ``tfbird.statistics_head`` fuses into
    the classifier."""

    def __init__(self, features=DEFAULT_STATISTICS_FEATURES, **kwargs):
        super().__init__(**kwargs)
        unknown = [name for name in features if name not in STATISTICS_FEATURES]
        if not features or unknown:
            raise ValueError(f"LogMelStatistics features must be some of "
                             f"{STATISTICS_FEATURES}. Received: features={list(features)}")
        self.features = tuple(features)

    def call(self, logmel):
        deltas = logmel[:, 1:, :] - logmel[:, :-1, :]
        compute = {"mean": lambda: keras.ops.mean(logmel, axis=1),
                   "std": lambda: population_std(logmel),
                   "delta_std": lambda: population_std(deltas),
                   "max": lambda: keras.ops.max(logmel, axis=1)}
        return keras.ops.concatenate([compute[name]() for name in self.features], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], len(self.features) * input_shape[2])

    def get_config(self):
        return {**super().get_config(), "features": list(self.features)}


def population_std(frames):
    """``[batch, frames, mels]`` -> ``[batch, mels]``: the std over time, as ``numpy.std``."""
    centred = frames - keras.ops.mean(frames, axis=1, keepdims=True)
    return keras.ops.sqrt(keras.ops.mean(centred * centred, axis=1))


@keras.saving.register_keras_serializable(package="tfbird")
class StatisticsFusion(keras.layers.Layer):
    """``[network logits, statistics logits]`` -> fused logits: the classifier's output with
    ``model.statistics_weight`` (``tfbird.statistics_head``, which fits the statistics'
    regression after training).

    Args:
        weight: the statistics' weight ``w`` in ``[0, 1)``.
        task: ``multiclass`` (log-softmax of each, then the weighted sum) or ``multilabel``
            (the weighted sum of the logits).
    """

    def __init__(self, weight: float, task: str, **kwargs):
        super().__init__(**kwargs)
        self.weight = weight
        self.task = task

    def call(self, inputs):
        network, statistics = inputs
        if self.task == "multiclass":
            network = keras.ops.log_softmax(network, axis=-1)
            statistics = keras.ops.log_softmax(statistics, axis=-1)
        return (1.0 - self.weight) * network + self.weight * statistics

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        config = super().get_config()
        config.update({"weight": self.weight, "task": self.task})
        return config


def sed_head(feature_map, num_classes: int, dropout: float, gru_units: int = 0,
             clip_pooling: str = "probability"):
    """PANNs' attention head on a ``[batch, time, freq, channels]`` map; returns clip logits.

    Layers: ``sed_dropout``, ``sed_gru`` (when ``gru_units``), ``sed_cla`` (1x1 conv:
    per-step logits), ``sed_att`` (1x1 conv + tanh), ``sed_att_softmax`` (softmax over time),
    ``sed_framewise`` (sigmoid of ``sed_cla``), ``sed_weighted`` (attention x framewise) and
    ``logits``. Only builtin TFLite ops without the GRU.

    ``clip_pooling="logit"``: ``sed_weighted`` is attention x ``sed_cla`` and ``logits`` its
    sum over time (no ``sed_framewise`` layer: ``framewise_model`` applies the sigmoid).
    """
    # Pool over frequency by the mean, as PANNs; mean + max, as some BirdCLEF heads pool,
    # scored lower on the demo (README, Heads).
    x = keras.ops.mean(feature_map, axis=2)
    x = keras.layers.Dropout(dropout, name="sed_dropout")(x)
    if gru_units:
        x = keras.layers.Bidirectional(keras.layers.GRU(gru_units, return_sequences=True),
                                       name="sed_gru")(x)
    cla = keras.layers.Conv1D(num_classes, 1, dtype="float32", name="sed_cla")(x)
    # A zero kernel starts the attention uniform over time: with logit pooling the head then
    # starts as gap's average pooling (README, Heads).
    att = keras.layers.Conv1D(num_classes, 1, activation="tanh", kernel_initializer="zeros",
                              dtype="float32", name="sed_att")(x)
    att = keras.layers.Softmax(axis=1, dtype="float32", name="sed_att_softmax")(att)
    if clip_pooling == "logit":
        weighted = keras.layers.Multiply(dtype="float32", name="sed_weighted")([att, cla])
        clip_logit = keras.ops.sum(weighted, axis=1)
    else:
        framewise = keras.layers.Activation("sigmoid", dtype="float32",
                                            name="sed_framewise")(cla)
        weighted = keras.layers.Multiply(dtype="float32", name="sed_weighted")([att, framewise])
        clip_logit = probability_to_logit(keras.ops.sum(weighted, axis=1))
    return keras.layers.Activation("linear", dtype="float32", name="logits")(clip_logit)


def probability_to_logit(probability):
    """``log(p / (1 - p))`` with ``p`` clipped to ``[1e-7, 1 - 1e-7]`` (logits within ±16.1)."""
    p = keras.ops.clip(probability, SED_PROBABILITY_EPSILON, 1.0 - SED_PROBABILITY_EPSILON)
    return keras.ops.log(p) - keras.ops.log1p(-p)


def has_sed_head(classifier: keras.Model) -> bool:
    """Whether ``classifier`` (from ``build_classifier``) has the ``sed`` head."""
    return "sed_cla" in {layer.name for layer in classifier.layers}


def sed_time_steps(classifier: keras.Model) -> int:
    """Time steps of a ``sed`` classifier's framewise scores (one per 32 image rows)."""
    return logmel_classifier(classifier).get_layer("sed_cla").output.shape[1]


def framewise_model(classifier: keras.Model) -> keras.Model:
    """The framewise probabilities of a ``sed`` classifier at the input's frame rate.

    ``sigmoid(sed_cla)`` has one step per 32 image rows; each input frame takes the step
    whose span holds its centre (nearest-neighbour resize).

    Args:
        classifier: a model from ``build_classifier`` with ``model.head: sed``.

    Returns:
        A ``keras.Model`` from the classifier's input ``[batch, frames, mels]`` to
        probabilities ``[batch, frames, num_classes]``.

    Example:
        >>> cfg = ModelConfig(head="sed", image_size=(128, 64), weights="none")
        >>> classifier = build_classifier(cfg, num_classes=10, input_shape=(501, 128))
        >>> tuple(framewise_model(classifier)(keras.ops.zeros((2, 501, 128))).shape)
        (2, 501, 10)
    """
    if not has_sed_head(classifier):
        raise ValueError("framewise_model needs a classifier with the sed head (model.head: "
                         f"sed). Received: classifier={classifier.name!r}")
    framewise = keras.layers.Activation("sigmoid", dtype="float32", name="framewise_sigmoid")(
        classifier.get_layer("sed_cla").output)
    frames = classifier.input_shape[1]
    steps, num_classes = framewise.shape[1], framewise.shape[2]
    x = keras.layers.Reshape((steps, num_classes, 1), name="framewise_image")(framewise)
    x = keras.layers.Resizing(frames, num_classes, interpolation="nearest",
                              name="framewise_resize")(x)
    x = keras.layers.Reshape((frames, num_classes), name="framewise")(x)
    return keras.Model(classifier.input, x, name="tfbird_framewise")


def embedding_features(classifier: keras.Model):
    """The pooled ResNet50 features ``[batch, 2048]`` the head reads, as a symbolic tensor.

    ``gap``: the input of ``dropout``. ``sed``: the frequency-pooled sequence (the input of
    ``sed_dropout``) averaged over time. ``keras.Model(classifier.input,
    embedding_features(classifier))`` is the embedding model.
    """
    if has_sed_head(classifier):
        sequence = classifier.get_layer("sed_dropout").input
        return keras.layers.GlobalAveragePooling1D(name="sed_embedding")(sequence)
    return classifier.get_layer("dropout").input


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


def build_backbone(weights: str, image_shape: tuple[int, int, int],
                   pooling: str | None = "avg", name: str = "resnet50") -> keras.Model:
    """The ``keras.applications`` network ``name`` (``config.IMAGE_BACKBONES``) with
    ``include_top=False``, ``pooling`` and ``weights`` none|imagenet|PATH, under Keras' own
    model name (``resnet50``, ``MobileNetV3Small``, ``efficientnetv2-b0``). The built-in
    input rescaling of MobileNetV3 and EfficientNetV2 is off: the classifier feeds them a
    standardised log-mel, not 0-255 pixels.

    ``pooling=None`` returns the feature map ``[batch, height / 32, width / 32, channels]``.
    """
    if name not in IMAGE_BACKBONES:
        raise ValueError(f"model.backbone must be one of {list(IMAGE_BACKBONES)} for a log-mel "
                         f"classifier. Received: backbone={name!r}")
    if weights == "none":
        keras_weights = None
    elif weights == "imagenet":
        keras_weights = "imagenet"
    elif Path(weights).is_file():
        keras_weights = str(weights)
    else:
        raise ValueError(
            f"model.weights must be 'none', 'imagenet' or the path of a {name} "
            f"include_top=False weights file. Received: weights={weights!r}")
    application, options = IMAGE_BACKBONES[name]
    try:
        return application(include_top=False, weights=keras_weights, input_shape=image_shape,
                           pooling=pooling, **options)
    except Exception as error:
        if weights != "imagenet":
            raise ValueError(f"Could not load backbone weights from {weights}: {error}. "
                             f"Received: weights={weights!r}") from error
        where = (f"Download {IMAGENET_NOTOP_URL}" if name == "resnet50"
                 else f"Download Keras' {name} include_top=False ImageNet weights")
        raise ValueError(
            f"Could not download the ImageNet weights for {name} (is this machine offline?). "
            f"{where} where there is network and pass the file with "
            f"--weights PATH (or model.weights: PATH), or put it in ~/.keras/models/. "
            f"Cause: {error}. Received: weights='imagenet'") from error


def set_backbone_trainable(classifier: keras.Model, trainable: bool) -> None:
    """Freezes (``False``) or unfreezes the backbone inside ``classifier``; the head stays
    trainable. A frozen backbone's batch norms run in inference mode (Keras 3: a
    ``BatchNormalization`` with ``trainable=False`` uses and keeps its moving statistics).
    Recompile the classifier afterwards."""
    backbone_of(classifier).trainable = trainable


def backbone_of(classifier: keras.Model) -> keras.Model:
    """The ``keras.applications`` network inside ``classifier`` (its one nested model)."""
    return next(layer for layer in logmel_classifier(classifier).layers
                if isinstance(layer, keras.Model))

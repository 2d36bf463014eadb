"""A logistic regression on log-mel statistics inside the classifier (``model.statistics_weight``).

After the network is trained, ``add_statistics_head`` fits scikit-learn's ``StandardScaler`` +
``LogisticRegression(C=0.1)`` on each training window's per-mel statistics over time of its
log-mel (dB): by default the mean and standard deviation, the features of ``tfbird cv``'s
baseline; ``model.statistics_features`` can add the spread of the frame-to-frame
differences and the maximum (``model.LogMelStatistics``). The regression goes
into the classifier as fixed layers (``logmel_statistics``, ``statistics_logits``,
``statistics_fusion``: ``model.LogMelStatistics``, ``Dense``, ``model.StatisticsFusion``),
and the classifier's logits become, with ``w = statistics_weight``,

    multiclass:  (1 - w) * log_softmax(network logits) + w * log_softmax(statistics logits)
    multilabel:  (1 - w) * network logits + w * statistics logits

so the softmax of the output is the weighted geometric mean of the two models' probabilities
(for multilabel, the same per class in logit space). Why: a network trained from scratch on
few clips and a linear model on the average spectrum make different errors (the network
confuses stationary sounds: rain, engines, waves). The regression is fitted on its own, after
the network: trained jointly in one model (``model.clip_statistics``), the network's features
dominate the head and the gain is gone (BENCHMARKS.md, "Cross-validation").

Everything after fitting is graph code with builtin TFLite ops: the export, ``analyze`` and
TFLite run the fused classifier unchanged.

Example:
    >>> fused = add_statistics_head(classifier, "records/esc10-fold1", manifest, weight=0.5,
    ...                             task="multiclass")
    >>> fused.get_layer("statistics_fusion").weight
    0.5
"""

from __future__ import annotations

import keras
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from tfbird import dataset
from tfbird.config import DEFAULT_STATISTICS_FEATURES
from tfbird.model import LogMelStatistics, StatisticsFusion

REGRESSION_C = 0.1  # As tfbird cv's baseline (cv.BASELINE_C): its measured regularisation.
# The log-probability given to a class the regression never saw in training.
ABSENT_CLASS_LOGIT = -30.0
FEATURES_LAYER = "logmel_statistics"
FUSION_LAYER = "statistics_fusion"


def has_statistics_head(classifier: keras.Model) -> bool:
    """Whether ``classifier`` (a log-mel classifier) already carries the fused regression."""
    return FUSION_LAYER in {layer.name for layer in classifier.layers}


def fit_logistic_regression(features: np.ndarray, targets: np.ndarray, task: str
                            ) -> tuple[np.ndarray, np.ndarray]:
    """``(kernel [dim, classes], bias [classes])`` of a standardised logistic regression, the
    standardisation folded into the kernel: ``features @ kernel + bias`` are the logits.

    Args:
        features: ``[examples, dim]``.
        targets: 0/1 ``[examples, classes]``.
        task: ``multiclass`` (one multinomial regression on each example's positive class,
            examples without one left out; a class absent from training gets
            ``ABSENT_CLASS_LOGIT``) or ``multilabel`` (one binary regression per class; a
            class that is always or never present gets a constant logit of
            ±``ABSENT_CLASS_LOGIT``).
    """
    scaler = StandardScaler().fit(features)
    scaled = scaler.transform(features)
    num_classes = targets.shape[1]
    kernel = np.zeros([features.shape[1], num_classes])
    bias = np.full([num_classes], ABSENT_CLASS_LOGIT)
    if task == "multiclass":
        labelled = targets.max(1) > 0  # A window without a class teaches no class here.
        y = targets[labelled].argmax(1)
        if len(np.unique(y)) < 2:
            raise ValueError("The log-mel statistics regression (model.statistics_weight) "
                             "needs training windows of at least 2 classes. Received: "
                             f"classes={sorted(set(y.tolist()))}")
        regression = LogisticRegression(C=REGRESSION_C, max_iter=5000).fit(scaled[labelled], y)
        coef, intercept = regression.coef_, regression.intercept_
        if len(regression.classes_) == 2:  # One logit z for class 1: logits [-z/2, z/2].
            coef = np.concatenate([-coef / 2, coef / 2])
            intercept = np.concatenate([-intercept / 2, intercept / 2])
        kernel[:, regression.classes_] = coef.T
        bias[regression.classes_] = intercept
    else:
        for k in range(num_classes):
            present = targets[:, k] > 0
            if present.all() or not present.any():
                bias[k] = -ABSENT_CLASS_LOGIT if present.all() else ABSENT_CLASS_LOGIT
                continue
            regression = LogisticRegression(C=REGRESSION_C, max_iter=5000).fit(scaled, present)
            kernel[:, k], bias[k] = regression.coef_[0], regression.intercept_[0]
    # (x - mean) / scale @ K + b  =  x @ (K / scale) + (b - (mean / scale) @ K)
    folded_kernel = kernel / scaler.scale_[:, None]
    folded_bias = bias - (scaler.mean_ / scaler.scale_) @ kernel
    return folded_kernel.astype(np.float32), folded_bias.astype(np.float32)


def build_fused_classifier(classifier: keras.Model, weight: float, task: str,
                           feature_names: tuple[str, ...] = DEFAULT_STATISTICS_FEATURES) -> keras.Model:
    """``classifier`` (log-mel -> logits) with the statistics layers beside it and its output
    fused (``StatisticsFusion``); the regression's kernel is zero until
    ``add_statistics_head`` sets it. Shares the network's layers and weights."""
    num_classes = classifier.output.shape[-1]
    statistics = LogMelStatistics(feature_names, name=FEATURES_LAYER)(classifier.input)
    statistics_logits = keras.layers.Dense(num_classes, dtype="float32", trainable=False,
                                           kernel_initializer="zeros",
                                           name="statistics_logits")(statistics)
    fused = StatisticsFusion(weight, task, dtype="float32", name=FUSION_LAYER)(
        [classifier.output, statistics_logits])
    return keras.Model(classifier.input, fused, name=classifier.name)


def statistics_of_split(fused: keras.Model, records_dir, manifest: dict, split: str,
                        batch_size: int, task: str) -> tuple[np.ndarray, np.ndarray]:
    """``(features [windows, statistics * mels], 0/1 targets [windows, classes])`` of every window of
    a split, computed by the fused classifier's own ``logmel_statistics`` layer (so the fit
    reads exactly what the exported model computes), without augmentation."""
    features_model = keras.Model(fused.input, fused.get_layer(FEATURES_LAYER).output)
    data = dataset.make_dataset(records_dir, manifest, split, batch_size,
                                dataset.ReadSpec(task=task))
    features, targets = [], []
    for logmel, y in data:
        features.append(np.asarray(features_model.predict_on_batch(logmel), np.float64))
        targets.append(dataset.positive_targets(y, task).numpy())
    return np.concatenate(features), np.concatenate(targets)


def add_statistics_head(classifier: keras.Model, records_dir, manifest: dict, weight: float,
                        task: str, batch_size: int = 64,
                        feature_names: tuple[str, ...] = DEFAULT_STATISTICS_FEATURES) -> keras.Model:
    """The trained log-mel ``classifier`` with the regression on ``feature_names``
    (``model.statistics_features``) fitted on the training split of ``records_dir`` and fused
    into its output (the module docstring)."""
    fused = build_fused_classifier(classifier, weight, task, feature_names)
    features, targets = statistics_of_split(fused, records_dir, manifest, "train",
                                            batch_size, task)
    kernel, bias = fit_logistic_regression(features, targets, task)
    fused.get_layer("statistics_logits").set_weights([kernel, bias])
    return fused

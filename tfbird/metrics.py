"""The scores BirdCLEF and Cornell competitions rank by, computed with scikit-learn.

- ``macro_roc_auc``: ROC-AUC averaged over the classes that have at least one positive (and one
  negative) example: BirdCLEF 2024 and 2025.
- ``padded_cmap``: macro average precision after appending ``padding_rows`` rows in which every
  class is positive and scored 1: BirdCLEF 2023. The padding keeps classes with few positives
  from dominating and makes the score defined for classes without positives.
- ``row_f1``: F1 of each row's predicted label set (score >= threshold) against its true set,
  averaged over rows: the Cornell 2020 "row-wise micro F1". A row with no true and no
  predicted label scores 1, as "nocall" = "nocall" did there. The threshold is one number or
  one per class (e.g. the ``threshold`` column of ``per_class_table``).
- ``top1_accuracy``: multiclass accuracy over the rows that have a true class.
- ``per_class_table``: per class, the positives, average precision, ROC-AUC and the threshold
  with the best F1 on these scores (``best_f1_threshold``).

Example:
    >>> validation_metrics(np.array([[1, 0], [0, 1]]), np.array([[0.9, 0.2], [0.3, 0.8]]))
    {'macro_roc_auc': 1.0, 'padded_cmap': 1.0, 'row_f1': 1.0}
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_recall_curve,
    roc_auc_score,
)

DEFAULT_THRESHOLD = 0.5


def macro_roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Mean ROC-AUC over classes with both positives and negatives (NaN if there are none)."""
    y_true = np.asarray(y_true) > 0.5
    scored = y_true.any(axis=0) & ~y_true.all(axis=0)
    if not scored.any():
        return float("nan")
    return float(roc_auc_score(y_true[:, scored], np.asarray(y_score)[:, scored],
                               average="macro"))


def padded_cmap(y_true: np.ndarray, y_score: np.ndarray, padding_rows: int = 5) -> float:
    """BirdCLEF 2023 padded class-mean average precision."""
    num_classes = np.asarray(y_true).shape[1]
    padding = np.ones((padding_rows, num_classes))
    padded_true = np.concatenate([np.asarray(y_true) > 0.5, padding > 0])
    padded_score = np.concatenate([np.asarray(y_score, np.float64), padding])
    return float(average_precision_score(padded_true, padded_score, average="macro"))


def row_f1(y_true: np.ndarray, y_score: np.ndarray,
           threshold: float | np.ndarray = DEFAULT_THRESHOLD) -> float:
    """Mean over rows of the F1 between true and predicted (score >= threshold) label sets.

    ``threshold`` is one number, or an array ``[classes]`` of per-class thresholds.
    """
    predicted = np.asarray(y_score) >= threshold
    return float(f1_score(np.asarray(y_true) > 0.5, predicted, average="samples",
                          zero_division=1.0))


def best_f1_threshold(y_true: np.ndarray, y_score: np.ndarray) -> tuple[float, float]:
    """``(threshold, F1)`` of the threshold with the best F1 for one class.

    Predictions are ``score >= threshold``; among equal F1 the lowest threshold wins. A class
    without positives gets ``(DEFAULT_THRESHOLD, nan)``.

    Example:
        >>> best_f1_threshold(np.array([1, 1, 0, 0, 1]), np.array([.9, .8, .7, .3, .2]))
        (0.8, 0.8)
    """
    y_true = np.asarray(y_true) > 0.5
    if not y_true.any():
        return DEFAULT_THRESHOLD, float("nan")
    precision, recall, thresholds = precision_recall_curve(y_true, np.asarray(y_score))
    precision, recall = precision[:-1], recall[:-1]  # The last point has no threshold.
    f1 = np.divide(2 * precision * recall, precision + recall,
                   out=np.zeros_like(precision), where=(precision + recall) > 0)
    best = int(np.argmax(f1))
    return float(thresholds[best]), float(f1[best])


def per_class_table(y_true: np.ndarray, y_score: np.ndarray, labels: list[str]) -> pd.DataFrame:
    """One row per class: ``label, support, ap, roc_auc, threshold, best_f1``.

    ``support`` counts positives; ``ap`` (average precision) is NaN without positives and
    ``roc_auc`` without positives or without negatives.
    """
    y_true, y_score = np.asarray(y_true) > 0.5, np.asarray(y_score, np.float64)
    rows = []
    for k, label in enumerate(labels):
        positives = int(y_true[:, k].sum())
        threshold, f1 = best_f1_threshold(y_true[:, k], y_score[:, k])
        rows.append({
            "label": label,
            "support": positives,
            "ap": (float(average_precision_score(y_true[:, k], y_score[:, k]))
                   if positives else float("nan")),
            "roc_auc": (float(roc_auc_score(y_true[:, k], y_score[:, k]))
                        if 0 < positives < len(y_true) else float("nan")),
            "threshold": threshold,
            "best_f1": f1,
        })
    return pd.DataFrame(rows, columns=["label", "support", "ap", "roc_auc", "threshold",
                                       "best_f1"])


def top1_accuracy(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Share of the rows with a true class whose highest score is one of their true classes
    (multiclass accuracy); NaN without such rows.

    Example:
        >>> top1_accuracy(np.array([[1, 0], [0, 1], [0, 0]]), np.array([[.7, .3], [.6, .4], [.5, .5]]))
        0.5
    """
    y_true = np.asarray(y_true) > 0.5
    rows = y_true.any(axis=1)
    if not rows.any():
        return float("nan")
    predicted = np.argmax(np.asarray(y_score), axis=1)
    return float(y_true[np.arange(len(y_true)), predicted][rows].mean())


def validation_metrics(y_true: np.ndarray, y_score: np.ndarray) -> dict[str, float]:
    """The three scores under the keys written to ``metrics.json``."""
    return {
        "macro_roc_auc": macro_roc_auc(y_true, y_score),
        "padded_cmap": padded_cmap(y_true, y_score),
        "row_f1": row_f1(y_true, y_score),
    }

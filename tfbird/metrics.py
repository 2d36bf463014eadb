"""The scores BirdCLEF and Cornell competitions rank by, computed with scikit-learn.

- ``macro_roc_auc``: ROC-AUC averaged over the classes that have at least one positive (and one
  negative) example: BirdCLEF 2024 and 2025.
- ``padded_cmap``: macro average precision after appending ``padding_rows`` rows in which every
  class is positive and scored 1: BirdCLEF 2023. The padding keeps classes with few positives
  from dominating and makes the score defined for classes without positives.
- ``row_f1``: F1 of each row's predicted label set (score >= threshold) against its true set,
  averaged over rows: the Cornell 2020 "row-wise micro F1". A row with no true and no
  predicted label scores 1, as "nocall" = "nocall" did there.

Example:
    >>> validation_metrics(np.array([[1, 0], [0, 1]]), np.array([[0.9, 0.2], [0.3, 0.8]]))
    {'macro_roc_auc': 1.0, 'padded_cmap': 1.0, 'row_f1': 1.0}
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score


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


def row_f1(y_true: np.ndarray, y_score: np.ndarray, threshold: float = 0.5) -> float:
    """Mean over rows of the F1 between true and predicted (score >= threshold) label sets."""
    predicted = np.asarray(y_score) >= threshold
    return float(f1_score(np.asarray(y_true) > 0.5, predicted, average="samples",
                          zero_division=1.0))


def validation_metrics(y_true: np.ndarray, y_score: np.ndarray) -> dict[str, float]:
    """The three scores under the keys written to ``metrics.json``."""
    return {
        "macro_roc_auc": macro_roc_auc(y_true, y_score),
        "padded_cmap": padded_cmap(y_true, y_score),
        "row_f1": row_f1(y_true, y_score),
    }

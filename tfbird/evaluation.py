"""Scores a trained run on a split of the records: competition metrics, a per-class table,
tuned per-class thresholds and plots.

``evaluate_run`` writes into ``<run>/evaluation/<split>/`` (or ``out_dir``):

- ``metrics.json``: ``macro_roc_auc``, ``padded_cmap``, ``row_f1`` (threshold 0.5) and
  ``row_f1_tuned`` (the per-class thresholds below), with ``examples``;
- ``per_class.csv``: ``label, support, ap, roc_auc, threshold, best_f1``
  (``metrics.per_class_table``);
- ``thresholds.csv``: ``label,threshold``, the best-F1 threshold of each class on these scores,
  for inference (0.5 for a class without positives);
- ``pr_curves.png``: precision-recall curves of the 5 classes with the lowest AP;
- ``score_histogram.png``: scores of positives and negatives, all classes together;
- for ``model.task: multiclass``, also ``top1_accuracy`` in ``metrics.json`` and
  ``confusion_matrix.csv`` / ``confusion_matrix.png``: windows by true class (rows) and the
  class with the highest probability (columns), windows without a true class left out.

Thresholds tuned on a split flatter that split's ``row_f1_tuned``; tune on ``valid`` and
report on a held-out split when there is one.

Example:
    >>> summary = evaluate_run("runs/20250101-120000", split="valid")
    >>> sorted(summary)
    ['examples', 'macro_roc_auc', 'out_dir', 'padded_cmap', 'row_f1', 'row_f1_tuned']
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix, precision_recall_curve

from tfbird import config, metrics
from tfbird import labels as labels_lib
from tfbird.artifacts import (
    CONFIG_FILE,
    LABELS_FILE,
    METRICS_FILE,
    MODEL_FILE,
    THRESHOLDS_FILE,
    check_run_dir,
    write_metrics,
)
from tfbird.records import read_manifest
from tfbird.training import predict_split

EVALUATION_DIR = "evaluation"
PER_CLASS_FILE = "per_class.csv"
PR_CURVES_FILE = "pr_curves.png"
HISTOGRAM_FILE = "score_histogram.png"
CONFUSION_CSV_FILE = "confusion_matrix.csv"
CONFUSION_PLOT_FILE = "confusion_matrix.png"
WORST_CLASSES = 5


def evaluate_run(run_dir: str | Path, records_dir: str | Path | None = None,
                 split: str = "valid", out_dir: str | Path | None = None,
                 batch_size: int | None = None) -> dict:
    """Scores ``run_dir/model.keras`` on ``split`` of ``records_dir`` and writes the report.

    Args:
        run_dir: a training run folder (``model.keras``, ``config.yaml``, ``labels.txt``).
        records_dir: records to score; default the run's ``data.records``.
        split: ``"valid"`` or ``"train"`` (any split of the manifest).
        out_dir: report folder; default ``run_dir/evaluation/<split>``.
        batch_size: examples per prediction batch; default the run's global batch size.

    Returns:
        The contents of ``metrics.json`` plus ``out_dir``.

    Raises:
        ValueError: missing files, or records whose labels differ from the run's.
    """
    run_dir = check_run_dir(run_dir)
    cfg = config.load(run_dir / CONFIG_FILE)
    records_dir = Path(records_dir or cfg.data.records)
    manifest = read_manifest(records_dir)
    labels = labels_lib.read_labels(run_dir / LABELS_FILE)
    if list(manifest["labels"]) != list(labels):
        raise ValueError(f"The records' labels differ from the run's labels.txt. "
                         f"Received: records={str(records_dir)!r}")
    model = keras.models.load_model(run_dir / MODEL_FILE, compile=False)
    y_true, y_score = predict_split(model, records_dir, manifest, split,
                                    batch_size or cfg.train.global_batch_size, cfg.model.task,
                                    cfg.data.secondary_label_weight)
    out_dir = Path(out_dir) if out_dir else run_dir / EVALUATION_DIR / split
    summary = write_report(y_true, y_score, labels, out_dir, cfg.model.task)
    return {**summary, "out_dir": str(out_dir)}


def write_report(y_true: np.ndarray, y_score: np.ndarray, labels: list[str],
                 out_dir: str | Path, task: str = "multilabel") -> dict:
    """Writes the metrics, the per-class table, the thresholds and the plots to ``out_dir``.

    Args:
        y_true: targets ``[examples, classes]`` (values above 0.5 are positives).
        y_score: probabilities ``[examples, classes]``.
        labels: the class names, in column order.
        out_dir: created if missing.
        task: ``"multiclass"`` adds ``top1_accuracy`` and the confusion matrix.

    Returns:
        The metrics written to ``metrics.json``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = metrics.per_class_table(y_true, y_score, labels)
    summary = split_metrics(y_true, y_score, table["threshold"].to_numpy())
    if task == "multiclass":
        summary["top1_accuracy"] = metrics.top1_accuracy(y_true, y_score)
        matrix = write_confusion_matrix(y_true, y_score, labels, out_dir / CONFUSION_CSV_FILE)
        plot_confusion_matrix(matrix, out_dir / CONFUSION_PLOT_FILE)
    write_metrics(summary, out_dir / METRICS_FILE)
    table.to_csv(out_dir / PER_CLASS_FILE, index=False)
    table[["label", "threshold"]].to_csv(out_dir / THRESHOLDS_FILE, index=False)
    plot_worst_pr_curves(y_true, y_score, table, out_dir / PR_CURVES_FILE)
    plot_score_histogram(y_true, y_score, out_dir / HISTOGRAM_FILE)
    return summary


def split_metrics(y_true: np.ndarray, y_score: np.ndarray, thresholds: np.ndarray) -> dict:
    """``metrics.validation_metrics`` plus ``row_f1_tuned`` at ``thresholds`` and ``examples``."""
    return {**metrics.validation_metrics(y_true, y_score),
            "row_f1_tuned": metrics.row_f1(y_true, y_score, thresholds),
            "examples": len(y_true)}


def worst_classes(table: pd.DataFrame, count: int = WORST_CLASSES) -> pd.DataFrame:
    """The ``count`` rows with the lowest AP among classes with positives."""
    return table.dropna(subset=["ap"]).sort_values(["ap", "label"]).head(count)


def plot_worst_pr_curves(y_true: np.ndarray, y_score: np.ndarray, table: pd.DataFrame,
                         path: Path) -> None:
    figure = Figure(figsize=(6, 5))
    axes = figure.subplots()
    for k, row in worst_classes(table).iterrows():
        precision, recall, _ = precision_recall_curve(np.asarray(y_true)[:, k] > 0.5,
                                                      np.asarray(y_score)[:, k])
        axes.step(recall, precision, where="post",
                  label=f"{row['label']} (AP {row['ap']:.3f}, n={row['support']})")
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.05),
             title=f"Precision-recall of the {WORST_CLASSES} classes with the lowest AP")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="lower left", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def plot_score_histogram(y_true: np.ndarray, y_score: np.ndarray, path: Path) -> None:
    positive = np.asarray(y_true) > 0.5
    scores = np.asarray(y_score)
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    bins = np.linspace(0, 1, 41)
    axes.hist(scores[~positive], bins=bins, alpha=0.6, label=f"negatives ({(~positive).sum()})")
    axes.hist(scores[positive], bins=bins, alpha=0.6, label=f"positives ({positive.sum()})")
    axes.set(xlabel="score", ylabel="example-class pairs", yscale="log",
             title="Scores of positives and negatives, all classes")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def write_confusion_matrix(y_true: np.ndarray, y_score: np.ndarray, labels: list[str],
                           path: Path) -> pd.DataFrame:
    """Counts of windows by true class (rows, the first if several) and highest-scoring
    class (columns), as CSV with the labels as header and index; windows without a true
    class are left out."""
    y_true = np.asarray(y_true) > 0.5
    rows = y_true.any(axis=1)
    counts = confusion_matrix(np.argmax(y_true[rows], axis=1),
                              np.argmax(np.asarray(y_score)[rows], axis=1),
                              labels=np.arange(len(labels)))
    matrix = pd.DataFrame(counts, index=pd.Index(labels, name="true"), columns=labels)
    matrix.to_csv(path)
    return matrix


def plot_confusion_matrix(matrix: pd.DataFrame, path: Path) -> None:
    """The counts, coloured by the share of their row (the recall of the true class)."""
    counts = matrix.to_numpy()
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = min(4 + 0.35 * len(matrix), 30)
    figure = Figure(figsize=(size, size))
    axes = figure.subplots()
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if len(matrix) <= 30:
        for (i, j), count in np.ndenumerate(counts):
            if count:
                axes.text(j, i, str(count), ha="center", va="center", fontsize="small",
                          color="white" if shares[i, j] > 0.5 else "black")
    ticks = np.arange(len(matrix))
    axes.set_xticks(ticks, matrix.columns, rotation=90, fontsize="small")
    axes.set_yticks(ticks, matrix.index, fontsize="small")
    axes.set(xlabel="predicted (highest probability)", ylabel="true",
             title="Confusion matrix (colour: share of the true class)")
    figure.colorbar(image, ax=axes, fraction=0.046)
    figure.tight_layout()
    figure.savefig(path, dpi=100)

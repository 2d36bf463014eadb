"""Cross-validation on a data set's own folds: one model per fold, scored beside a baseline.

``run_cv`` trains one run per held-out fold (``runs/cv-<timestamp>/fold-K/``, records in
``records/<data set>-fold<K>``), exports it, and scores the held-out recordings with the
exported SavedModel through ``analyze``'s code path (``analyze.score_recording``: the same
windows, the model's own front end). A recording's score is the mean of its windows'
probabilities. Beside it, in the same run and on the same folds, a **baseline**: a
logistic regression (scikit-learn ``StandardScaler`` + ``LogisticRegression(C=0.1)``) on each
recording's mean and standard deviation over time of the very log-mels the model trained on,
read from the fold's records (for a head on a pretrained backbone, on the recording's mean
embedding: the linear probe).

Scores per fold and their mean and standard deviation: top-1 accuracy (the highest-scoring
class is one of the recording's labels) with a confusion matrix, macro ROC-AUC and padded
cmAP, and the wall time of the fold. Written to ``cv.json`` and ``cv.md`` after each fold.

Each training uses ``train.model_selection: last``: the held-out fold is the test fold, and
picking the epoch on it would flatter the figure.

Resuming: a fold with its ``fold-K/score.json`` is done. Rerunning the same command (same
data, folds, fold column and config) finds the newest ``cv-*`` folder made with that plan
(``cv_plan.json``) and continues it; a fold killed midway resumes its training from its
backup (``training``).

Example:
    >>> summary = run_cv(config.load("configs/small.yaml"), "esc10/esc10.csv", "fold")
    >>> summary["model"]["top1_accuracy"]["mean"]
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tfbird import catalog, config, metrics

log = logging.getLogger(__name__)

PLAN_FILE = "cv_plan.json"
SCORE_FILE = "score.json"
CV_JSON = "cv.json"
CV_MARKDOWN = "cv.md"
EXPORT_DIR = "export"
BASELINE_C = 0.1
SCORES = ("top1_accuracy", "macro_roc_auc", "padded_cmap")


def run_cv(cfg: config.Config, data: str | Path, fold_column: str,
           folds: list[str] | None = None, out_dir: str | Path | None = None,
           progress: bool = True) -> dict:
    """Trains, exports and scores one model per fold, with the baseline beside it.

    Args:
        cfg: the training config (a preset such as ``configs/small.yaml`` plus overrides);
            its ``data`` section gives the layout and label column.
        data: the data set (folder or CSV) with the fold column.
        fold_column: the column naming each recording's fold.
        folds: the folds to hold out, in order; default every fold of the data set.
        out_dir: the cv folder; default the newest ``<runs_dir>/cv-*`` made with the same
            plan, else a new ``<runs_dir>/cv-<timestamp>``.
        progress: progress bars of ingest and training.

    Returns:
        The summary also written to ``cv.json``: per fold and mean/std of the model's and the
        baseline's scores, and the minutes per fold.

    Raises:
        ValueError: a fold that is not one of the data set's, or a data set without the
            fold column.
    """
    table = recordings_of(cfg, data, fold_column)
    known = catalog.folds_of(table, fold_column)
    folds = [str(f) for f in folds] if folds else known
    unknown = [f for f in folds if f not in known]
    if unknown:
        raise ValueError(f"Not a fold of column {fold_column!r} (its folds: {known}). "
                         f"Received: folds={unknown}")
    # What every fold's training sets anyway, so `cv` and `bench cv` (with or without the
    # fold flags in the config) share a plan and resume each other's folds.
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, model_selection="last"),
        data=dataclasses.replace(cfg.data, path=str(data), fold_column=fold_column,
                                 valid_fold=None, records=""))
    plan = {"data": str(Path(data).absolute()), "fold_column": fold_column, "folds": folds,
            "config": config.to_dict(cfg)}
    cv_dir = Path(out_dir) if out_dir else find_cv_dir(Path(cfg.train.runs_dir), plan)
    cv_dir.mkdir(parents=True, exist_ok=True)
    (cv_dir / PLAN_FILE).write_text(json.dumps(plan, indent=1))
    log.info("Cross-validation over folds %s of %s in %s", folds, data, cv_dir)

    results = []
    for index, fold in enumerate(folds, 1):
        score_path = cv_dir / f"fold-{fold}" / SCORE_FILE
        if score_path.is_file():
            result = json.loads(score_path.read_text())
            log.info("Fold %s (%d of %d): done before: %s", fold, index, len(folds),
                     fold_line(result))
        else:
            result = run_fold(cfg, data, fold_column, fold, table, cv_dir / f"fold-{fold}",
                              progress)
            score_path.write_text(json.dumps(result, indent=1))
            log.info("Fold %s (%d of %d): %s", fold, index, len(folds), fold_line(result))
        results.append(result)
        summary = summarize(results, cfg.model.task)
        write_summary(cv_dir, summary, data, fold_column)
    return {"cv_dir": str(cv_dir), **summary}


def recordings_of(cfg: config.Config, data: str | Path, fold_column: str) -> pd.DataFrame:
    """The data set's catalog rows that ingest would take (no error), with their folds."""
    layout = cfg.data.layout if cfg.data.layout != "auto" else catalog.detect_layout(data)
    table, _ = catalog.read_catalog(data, layout, cfg.data.label_column,
                                    cfg.data.ignore_labels, fold_column)
    table = table[table["error"] == ""].reset_index(drop=True)
    catalog.folds_of(table, fold_column)  # Checks the column and that every row has a fold.
    return table


def find_cv_dir(runs_dir: Path, plan: dict) -> Path:
    """The newest ``cv-*`` folder under ``runs_dir`` made with ``plan``, else a new one."""
    for candidate in sorted(runs_dir.glob("cv-*"), reverse=True):
        plan_path = candidate / PLAN_FILE
        if plan_path.is_file() and json.loads(plan_path.read_text()) == json.loads(
                json.dumps(plan)):
            log.info("Resuming the cross-validation in %s", candidate)
            return candidate
    return runs_dir / f"cv-{datetime.datetime.now():%Y%m%d-%H%M%S}"


def run_fold(cfg: config.Config, data: str | Path, fold_column: str, fold: str,
             table: pd.DataFrame, fold_dir: Path, progress: bool) -> dict:
    """Ingests (if needed), trains, exports and scores one held-out fold, and the baseline."""
    import keras

    from tfbird import exporter, pipeline, training

    started = time.perf_counter()
    fold_cfg = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, path=str(data), fold_column=fold_column, valid_fold=fold,
        records=str(catalog.default_records_dir(data, fold, backbone=cfg.model.backbone))))
    run_dir = fold_dir
    if training.training_finished(fold_dir):  # Killed after training, before its score.
        log.info("Fold %s: reusing the model trained in %s", fold, fold_dir)
    else:
        pipeline.prepare_and_train(fold_cfg, data_given=True, run_dir=fold_dir,
                                   progress=progress)
    export_dir = fold_dir / EXPORT_DIR
    shutil.rmtree(export_dir, ignore_errors=True)  # A half-written export of a killed run.
    result = exporter.export_run(run_dir, exports_dir=export_dir, model_name="model",
                                 version=1)
    keras.backend.clear_session()  # The next fold builds its model afresh.
    labels = list(result.labels)
    split = catalog.split_by_fold(table, fold_column, fold)
    held_out = split[split["split"] == "valid"]
    y_true = targets_of(held_out, labels)
    y_model = score_recordings(held_out["path"].tolist(), result.saved_model_dir,
                               max(0.0, fold_cfg.audio.window_s - fold_cfg.audio.hop_s))
    y_baseline = baseline_scores(fold_cfg.data.records, held_out["filename"].tolist(), labels)
    return {
        "fold": fold,
        "recordings": len(held_out),
        "labels": labels,
        "model": clip_scores(y_true, y_model),
        "baseline": clip_scores(y_true, y_baseline),
        "baseline_features": baseline_features(fold_cfg),
        "confusion_matrix": confusion(y_true, y_model, labels),
        "baseline_confusion_matrix": confusion(y_true, y_baseline, labels),
        "minutes": round((time.perf_counter() - started) / 60, 2),
        "run_dir": str(run_dir),
    }


def targets_of(rows: pd.DataFrame, labels: list[str]) -> np.ndarray:
    """Multi-hot ``[recordings, classes]`` of each recording's primary and secondary
    labels."""
    index = {label: k for k, label in enumerate(labels)}
    y = np.zeros([len(rows), len(labels)], np.float32)
    for row, (primary, secondary) in enumerate(zip(rows["primary_label"],
                                                   rows["secondary_labels"])):
        for label in [primary, *secondary]:
            if label in index:
                y[row, index[label]] = 1.0
    return y


def score_recordings(paths: list[str], saved_model_dir: Path, overlap_s: float = 0.0
                     ) -> np.ndarray:
    """Each recording's mean window probabilities ``[recordings, classes]`` from an exported
    SavedModel, through ``analyze``'s reading and windowing, with the windows the training
    records have: overlapping by ``overlap_s``, and the end covered by the training tail rule
    (``analyze.tail: min_fraction``, the windows past the end padded by ``audio.pad_mode``)."""
    from tfbird import analyze
    from tfbird.config import AnalyzeConfig

    info = analyze.read_model_info(saved_model_dir)
    predict = analyze.load_predictor(info)
    analyze_cfg = AnalyzeConfig(overlap_s=overlap_s, tail="min_fraction")
    return np.stack([analyze.score_recording(path, predict, info, analyze_cfg).scores.mean(0)
                     for path in paths])


def clip_features(records_dir: str | Path, split: str) -> tuple[list[str], np.ndarray,
                                                                 np.ndarray]:
    """``(filenames, features [recordings, 2 * mels], targets [recordings, classes])``: per
    recording of a split, the mean and standard deviation over time of its log-mels (all
    its windows' frames), as stored in the records (PCM records through their front end).
    For embedding records: the mean of its windows' embeddings (``[recordings, dim]``), the
    linear probe of BirdNET-Analyzer and Perch."""
    import tensorflow as tf

    from tfbird import dataset, records
    from tfbird.records import read_manifest

    manifest = read_manifest(records_dir)
    store = manifest.get("store", records.LOGMEL)
    num_classes = len(manifest["labels"])
    to_logmel = dataset.build_manifest_frontend(manifest) if store == records.PCM else None
    frames: dict[str, list[np.ndarray]] = {}
    targets: dict[str, np.ndarray] = {}
    for serialized in tf.data.TFRecordDataset(dataset.shard_paths(records_dir, manifest, split)):
        example = records.parse_example(serialized, num_classes,
                                        tuple(manifest["feature"]["shape"]), store)
        feature = example[store]
        if store == records.EMBEDDING:
            feature = feature[None]  # One "frame" per window.
        elif to_logmel is not None:
            feature = to_logmel(feature[None])[0]
        name = example[records.FILENAME].numpy().decode("utf-8")
        frames.setdefault(name, []).append(feature.numpy())
        targets[name] = np.maximum(targets.get(name, 0.0), example[records.LABELS].numpy())
    names = list(frames)
    stacked = [np.concatenate(frames[name]) for name in names]
    if store == records.EMBEDDING:
        features = np.stack([f.mean(0) for f in stacked])
    else:
        features = np.stack([np.concatenate([f.mean(0), f.std(0)]) for f in stacked])
    return names, features, np.stack([targets[name] for name in names])


def baseline_scores(records_dir: str | Path, filenames: list[str],
                    labels: list[str]) -> np.ndarray:
    """The baseline's probabilities ``[recordings, classes]`` for ``filenames`` (the
    validation split of ``records_dir``), trained on the training split.

    One multinomial logistic regression when every training recording has exactly one
    class; otherwise one per class (one-vs-rest), for multi-label data.
    """
    _, x_train, y_train = clip_features(records_dir, "train")
    names, x_valid, _ = clip_features(records_dir, "valid")
    single_label = bool(np.all(y_train.sum(1) == 1))
    regression = LogisticRegression(C=BASELINE_C, max_iter=5000)
    if single_label:
        model = make_pipeline(StandardScaler(), regression).fit(x_train, y_train.argmax(1))
        present = model.classes_
    else:
        model = make_pipeline(StandardScaler(), OneVsRestClassifier(regression)).fit(
            x_train, y_train)
        present = np.arange(len(labels))
    probabilities = np.zeros([len(names), len(labels)], np.float32)
    probabilities[:, present] = model.predict_proba(x_valid)
    row_of = {name: k for k, name in enumerate(names)}
    missing = [name for name in filenames if name not in row_of]
    if missing:
        raise ValueError(f"Held-out recordings missing from the validation records of "
                         f"{records_dir} (failed at ingest? see its failures.csv). "
                         f"Received: missing={missing[:5]}")
    return probabilities[[row_of[name] for name in filenames]]


def baseline_features(cfg: config.Config) -> str:
    """What the baseline's logistic regression reads, in words (``clip_features``)."""
    if cfg.data.store == "embedding":
        return f"the per-recording mean {cfg.model.backbone} embedding"
    return "per-recording log-mel mean and std"


def primary_index(y_true: np.ndarray) -> np.ndarray:
    """The true class of each row for the confusion matrix: its positive class (with
    several, as multi-label data has, the first in label order)."""
    return np.argmax(y_true, axis=1)


def clip_scores(y_true: np.ndarray, y_score: np.ndarray) -> dict:
    """Top-1 accuracy, macro ROC-AUC and padded cmAP of recording scores (NaN -> None)."""
    scores = {"top1_accuracy": metrics.top1_accuracy(y_true, y_score),
              "macro_roc_auc": metrics.macro_roc_auc(y_true, y_score),
              "padded_cmap": metrics.padded_cmap(y_true, y_score)}
    return {k: None if v is None or np.isnan(v) else round(float(v), 4)
            for k, v in scores.items()}


def confusion(y_true: np.ndarray, y_score: np.ndarray, labels: list[str]) -> list[list[int]]:
    """Counts by true class (rows, ``primary_index``) and top-scoring class (columns)."""
    rows = y_true.sum(1) > 0
    return confusion_matrix(primary_index(y_true[rows]), y_score[rows].argmax(1),
                            labels=np.arange(len(labels))).tolist()


def summarize(results: list[dict], task: str) -> dict:
    """Per fold and mean/std over the folds done, for the model and the baseline."""
    def spread(values):
        values = [v for v in values if v is not None]
        if not values:
            return {"mean": None, "std": None}
        return {"mean": round(float(np.mean(values)), 4), "std": round(float(np.std(values)), 4)}

    summary = {"task": task, "folds": [r["fold"] for r in results],
               "per_fold": results}
    for who in ("model", "baseline"):
        summary[who] = {score: spread([r[who][score] for r in results]) for score in SCORES}
    summary["minutes_per_fold"] = spread([r["minutes"] for r in results])
    summary["model_above_baseline"] = [
        r["fold"] for r in results
        if (r["model"]["top1_accuracy"] or 0) > (r["baseline"]["top1_accuracy"] or 0)]
    return summary


def fold_line(result: dict) -> str:
    model, baseline = result["model"], result["baseline"]
    return (f"top-1 {fmt(model['top1_accuracy'])} (baseline {fmt(baseline['top1_accuracy'])}), "
            f"ROC-AUC {fmt(model['macro_roc_auc'])} (baseline "
            f"{fmt(baseline['macro_roc_auc'])}), {result['minutes']:.1f} min")


def fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def write_summary(cv_dir: Path, summary: dict, data, fold_column: str) -> None:
    """``cv.json`` and ``cv.md`` (the table a README or BENCHMARKS.md can show)."""
    (cv_dir / CV_JSON).write_text(json.dumps(summary, indent=1))
    (cv_dir / CV_MARKDOWN).write_text(format_markdown(summary, data, fold_column))


def format_markdown(summary: dict, data, fold_column: str) -> str:
    """The per-fold table, the mean ± std row and each fold's confusion matrix."""
    header = ("| fold | recordings | top-1 | baseline top-1 | macro ROC-AUC | baseline ROC-AUC "
              "| padded cmAP | baseline cmAP | minutes |")
    features = summary["per_fold"][0].get("baseline_features",
                                          "per-recording log-mel mean and std")
    lines = [f"Cross-validation on {data} (folds of column `{fold_column}`; the baseline is a "
             f"logistic regression on {features}).", "",
             header, "|" + "---|" * 9]
    for r in summary["per_fold"]:
        m, b = r["model"], r["baseline"]
        lines.append(f"| {r['fold']} | {r['recordings']} | {fmt(m['top1_accuracy'])} | "
                     f"{fmt(b['top1_accuracy'])} | {fmt(m['macro_roc_auc'])} | "
                     f"{fmt(b['macro_roc_auc'])} | {fmt(m['padded_cmap'])} | "
                     f"{fmt(b['padded_cmap'])} | {r['minutes']:.1f} |")

    def mean_std(who, score):
        value = summary[who][score]
        return "n/a" if value["mean"] is None else f"{value['mean']:.3f} ± {value['std']:.3f}"

    minutes = summary["minutes_per_fold"]
    lines.append(f"| **mean ± std** | | **{mean_std('model', 'top1_accuracy')}** | "
                 f"{mean_std('baseline', 'top1_accuracy')} | {mean_std('model', 'macro_roc_auc')}"
                 f" | {mean_std('baseline', 'macro_roc_auc')} | {mean_std('model', 'padded_cmap')}"
                 f" | {mean_std('baseline', 'padded_cmap')} | {minutes['mean']:.1f} |")
    lines += ["", f"Model above the baseline (top-1) on {len(summary['model_above_baseline'])} "
                  f"of {len(summary['per_fold'])} folds."]
    for r in summary["per_fold"]:
        labels = r["labels"]
        lines += ["", f"Confusion matrix of fold {r['fold']} (rows: true, columns: top class):",
                  "", "| | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
        lines += [f"| {label} | " + " | ".join(str(c) for c in row) + " |"
                  for label, row in zip(labels, r["confusion_matrix"])]
    return "\n".join(lines) + "\n"

"""How well a ``sed`` model's framewise scores place calls in time, on recordings whose call
times are known (the synthetic corpus writes them to ``call_onsets.csv``).

For every validation window and every species with a call starting inside it, the peak of
that species' framewise score is compared with the call onsets: a *hit* is a peak within
``tolerance_s`` of an onset of that species. Calls come every 1-3 s in the synthetic corpus,
so a peak placed at random would often hit too; each row carries that *chance* (the share of
the window within ``tolerance_s`` of an onset) so the hit rate can be read against it.

Example:
    >>> summary = localize_run("runs/sed-demo", "data/demo/call_onsets.csv")
    >>> summary["hit_fraction"], summary["chance_fraction"]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from tfbird import config, records
from tfbird import labels as labels_lib
from tfbird.artifacts import CONFIG_FILE, LABELS_FILE, MODEL_FILE
from tfbird.dataset import build_manifest_frontend, shard_paths
from tfbird.exporter import load_classifier
from tfbird.model import framewise_model
from tfbird.records import read_manifest

LOCALIZATION_FILE = "localization.csv"
SUMMARY_FILE = "localization.json"
TOLERANCE_S = 0.5


def peak_hits(framewise: np.ndarray, filenames: list[str], start_s: np.ndarray,
              labels: list[str], onsets: pd.DataFrame, frame_s: float, window_s: float,
              tolerance_s: float = TOLERANCE_S) -> pd.DataFrame:
    """One row per (window, species with an onset in the window): where the score peaks.

    Args:
        framewise: probabilities ``[windows, frames, classes]``; frame ``t`` is centred at
            ``t * frame_s`` from the window start.
        filenames: the recording of each window (as in ``onsets["filename"]``).
        start_s: the start of each window in its recording (s).
        labels: class names, in column order.
        onsets: ``filename, label, onset_s`` of every call (``call_onsets.csv``).
        frame_s: time between frames (s).
        window_s: window length (s).
        tolerance_s: largest peak-to-onset distance counted as a hit (s).

    Returns:
        Columns ``filename, start_s, label, peak_s, error_s, hit, chance``: times in the
        recording; ``error_s`` is the distance from the peak to the nearest onset of the label.
    """
    column = {label: k for k, label in enumerate(labels)}
    onsets_by_key = {key: np.sort(group["onset_s"].to_numpy(float))
                     for key, group in onsets.groupby(["filename", "label"])}
    grid_s = np.arange(0.0, window_s, frame_s)
    rows = []
    for w, (filename, start) in enumerate(zip(filenames, start_s)):
        for label in labels:
            times = onsets_by_key.get((filename, label))
            if times is None or not np.any((times >= start) & (times < start + window_s)):
                continue
            peak_s = start + np.argmax(framewise[w, :, column[label]]) * frame_s
            error_s = float(np.min(np.abs(times - peak_s)))
            near = np.abs((start + grid_s)[:, None] - times[None, :]).min(axis=1) <= tolerance_s
            rows.append({"filename": filename, "start_s": float(start), "label": label,
                         "peak_s": float(peak_s), "error_s": error_s,
                         "hit": error_s <= tolerance_s, "chance": float(near.mean())})
    return pd.DataFrame(rows, columns=["filename", "start_s", "label", "peak_s", "error_s",
                                       "hit", "chance"])


def summarize(table: pd.DataFrame, tolerance_s: float = TOLERANCE_S) -> dict:
    """Hit fraction, the chance fraction to read it against, and the median error."""
    return {"calls_windows": len(table), "tolerance_s": tolerance_s,
            "hit_fraction": float(table["hit"].mean()) if len(table) else float("nan"),
            "chance_fraction": float(table["chance"].mean()) if len(table) else float("nan"),
            "median_error_s": float(table["error_s"].median()) if len(table) else float("nan")}


def read_windows(records_dir: str | Path, manifest: dict, split: str
                 ) -> tuple[np.ndarray, list[str], np.ndarray]:
    """``(logmels, filenames, start_s)`` of every window of a split, in record order; PCM
    records go through the front end they were made with."""
    num_classes = len(manifest["labels"])
    store = manifest.get("store", records.LOGMEL)
    shape = tuple(manifest["feature"]["shape"])
    dataset = tf.data.TFRecordDataset(shard_paths(records_dir, manifest, split)).map(
        lambda serialized: records.parse_example(serialized, num_classes, shape, store))
    features, filenames, start_s = [], [], []
    for example in dataset.as_numpy_iterator():
        features.append(example[store])
        filenames.append(example[records.FILENAME].decode("utf-8"))
        start_s.append(example[records.START_S])
    features = np.stack(features)
    if store == records.PCM:
        features = build_manifest_frontend(manifest)(features).numpy()
    return features, filenames, np.asarray(start_s, np.float64)


def localize_run(run_dir: str | Path, onsets_csv: str | Path, records_dir: str | Path | None = None,
                 split: str = "valid", out_dir: str | Path | None = None,
                 tolerance_s: float = TOLERANCE_S, batch_size: int = 32) -> dict:
    """Scores the framewise peaks of a ``sed`` run against known call onsets.

    Writes ``localization.csv`` (``peak_hits``) and ``localization.json`` (``summarize``)
    into ``out_dir`` (default ``run_dir/evaluation/<split>``) and returns the summary.

    Raises:
        ValueError: the run's model has no ``sed`` head, or the onsets file lacks columns.
    """
    run_dir = Path(run_dir)
    cfg = config.load(run_dir / CONFIG_FILE)
    records_dir = Path(records_dir or cfg.data.records)
    onsets = pd.read_csv(onsets_csv, dtype={"filename": str, "label": str})
    missing = {"filename", "label", "onset_s"} - set(onsets.columns)
    if missing:
        raise ValueError(f"The call onsets file lacks columns {sorted(missing)}. "
                         f"Received: onsets_csv={str(onsets_csv)!r}")
    framewise = framewise_model(load_classifier(run_dir / MODEL_FILE))
    logmels, filenames, start_s = read_windows(records_dir, read_manifest(records_dir), split)
    scores = framewise.predict(logmels, batch_size=batch_size, verbose=0)
    frame_s = cfg.frontend.hop_length / cfg.audio.sample_rate_hz
    table = peak_hits(scores, filenames, start_s, labels_lib.read_labels(run_dir / LABELS_FILE),
                      onsets, frame_s, cfg.audio.window_s, tolerance_s)
    summary = summarize(table, tolerance_s)
    out_dir = Path(out_dir) if out_dir else run_dir / "evaluation" / split
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / LOCALIZATION_FILE, index=False)
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary

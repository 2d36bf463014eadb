"""Scores ``[windows, classes]`` + window times -> detection rows -> CSV, BirdNET's Raven, CSV
and Kaleidoscope tables, Parquet, Audacity, JSON.

One table schema, ``COLUMNS`` (``file,start_s,end_s,label,confidence``), is made by
``select_detections`` (threshold, top-n, species list) and ``merge_consecutive`` (one row per
call that spans windows). The writers only reformat that table; each writes to a temporary
name and renames, so an output file that exists is complete (``analyze`` resumes on that).

Example:
    >>> rows = select_detections(np.array([[0.9, 0.2]]), np.array([0.0]), np.array([5.0]),
    ...                          ["sp00", "sp01"], min_conf=0.5)
    >>> rows[["label", "confidence"]].values.tolist()
    [['sp00', 0.9]]
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from tfbird import catalog
from tfbird.artifacts import write_atomically

COLUMNS = ["file", "start_s", "end_s", "label", "confidence"]
# BirdNET-Analyzer's tables, column for column (its Raven ``Begin Path`` and ``File Offset
# (s)`` are what BirdNET's ``segments`` command reads back).
RAVEN_COLUMNS = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)",
                 "Low Freq (Hz)", "High Freq (Hz)", "Common Name", "Species Code", "Confidence",
                 "Begin Path", "File Offset (s)"]
BIRDNET_CSV_COLUMNS = ["Start (s)", "End (s)", "Scientific name", "Common name", "Confidence",
                       "File"]
KALEIDOSCOPE_COLUMNS = ["INDIR", "FOLDER", "IN FILE", "OFFSET", "DURATION", "scientific_name",
                        "common_name", "confidence", "lat", "lon", "week", "overlap",
                        "sensitivity"]
PARQUET_COLUMNS = ["file", "start_s", "end_s", "label", "scientific_name", "common_name",
                   "confidence"]
UNKNOWN_PLACE = -1  # Kaleidoscope's lat, lon and week: BirdNET's value when not given.

# Output file of each format, appended to the recording's name (``dawn.flac.csv``, ...).
OUTPUT_SUFFIXES = {"csv": ".csv", "raven": ".selection.table.txt",
                   "birdnet_csv": ".birdnet.csv", "kaleidoscope": ".kaleidoscope.csv",
                   "parquet": ".parquet", "audacity": ".audacity.txt", "json": ".json"}
TABLE_FORMATS = ("csv", "raven", "birdnet_csv", "kaleidoscope", "parquet")  # Combinable.


def empty_detections() -> pd.DataFrame:
    return pd.DataFrame({"file": pd.Series(dtype=str), "start_s": pd.Series(dtype=float),
                         "end_s": pd.Series(dtype=float), "label": pd.Series(dtype=str),
                         "confidence": pd.Series(dtype=float)})


def select_detections(scores: np.ndarray, start_s: np.ndarray, end_s: np.ndarray,
                      labels: list[str], min_conf: float | np.ndarray, top_n: int | None = None,
                      keep_labels: list[str] | None = None, file: str = "") -> pd.DataFrame:
    """The (window, label) pairs worth reporting, as rows of ``COLUMNS``.

    Args:
        scores: probabilities ``[windows, classes]``.
        start_s: start of each window in the recording, in seconds: ``[windows]``, or
            ``[windows, classes]`` when each label has its own begin (framewise spans).
        end_s: end of each window, in seconds (clipped to the recording), shaped as
            ``start_s``.
        labels: class names, in score column order.
        min_conf: keep scores at or above this probability: one for all classes, or one
            per class ``[classes]`` (per-class thresholds).
        top_n: keep at most this many labels per window, highest first; ``None`` keeps all.
        keep_labels: report only these labels (a species list); ``None`` keeps all.
        file: value of the ``file`` column.

    Returns:
        Rows sorted by start time, then confidence (highest first).
    """
    scores = np.asarray(scores, np.float32)
    if scores.ndim != 2 or scores.shape[1] != len(labels):
        raise ValueError(f"scores must be [windows, {len(labels)}]. "
                         f"Received: scores.shape={scores.shape}")
    if keep_labels is not None:
        unknown = sorted(set(keep_labels) - set(labels))
        if unknown:
            raise ValueError(f"Species list labels unknown to the model. Received: {unknown}")
        scores = np.where(np.isin(labels, keep_labels)[None, :], scores, -1.0)
    rank = np.argsort(-scores, axis=1, kind="stable")
    thresholds = np.broadcast_to(np.asarray(min_conf, np.float32), [len(labels)])
    kept = np.take_along_axis(scores, rank, axis=1) >= thresholds[rank]
    if top_n is not None:
        kept[:, top_n:] = False
    window, order = np.nonzero(kept)
    classes = rank[window, order]
    if not len(window):
        return empty_detections()
    per_label = lambda times: np.broadcast_to(  # [windows] or [windows, classes] -> the latter
        np.asarray(times, np.float64).reshape(len(scores), -1), scores.shape)
    return sort_detections(pd.DataFrame({
        "file": file,
        "start_s": per_label(start_s)[window, classes],
        "end_s": per_label(end_s)[window, classes],
        "label": np.asarray(labels, dtype=object)[classes],
        "confidence": scores[window, classes].astype(np.float64),
    }))


def framewise_spans(framewise: np.ndarray, thresholds: np.ndarray, window_s: float
                    ) -> np.ndarray:
    """Where in each window each class's framewise score reaches its threshold.

    Frame ``t`` is centred at ``t * window_s / (frames - 1)`` from the window start (the
    front end's centred frames) and spans half a frame either side. A class's span runs from
    the first frame at or above its threshold to the last one.

    Args:
        framewise: probabilities ``[windows, frames, classes]`` (the SED head's).
        thresholds: ``[classes]`` (or one for all), as given to ``select_detections``.
        window_s: window length, in seconds.

    Returns:
        float64 ``[windows, classes, 2]``: begin and end in seconds from the window start,
        within ``[0, window_s]``; NaN where no frame reaches the threshold.

    Example:
        >>> framewise = np.zeros([1, 11, 1]); framewise[0, 4:7, 0] = 0.9  # frames 2.0-3.0 s
        >>> framewise_spans(framewise, np.array([0.5]), window_s=5.0)[0, 0].tolist()
        [1.75, 3.25]
    """
    framewise = np.asarray(framewise, np.float32)
    if framewise.ndim != 3:
        raise ValueError(f"framewise must be [windows, frames, classes]. "
                         f"Received: framewise.shape={framewise.shape}")
    num_frames = framewise.shape[1]
    frame_s = window_s / max(num_frames - 1, 1)
    above = framewise >= np.asarray(thresholds, np.float32)
    first = np.argmax(above, axis=1)
    last = num_frames - 1 - np.argmax(above[:, ::-1], axis=1)
    spans = np.clip(np.stack([(first - 0.5) * frame_s, (last + 0.5) * frame_s], -1),
                    0.0, window_s)
    spans[~above.any(axis=1)] = np.nan
    return spans


def merge_consecutive(detections: pd.DataFrame) -> pd.DataFrame:
    """Merges rows of one file and label whose windows overlap or touch into one row.

    A call heard in windows 0-5 s, 5-10 s and 10-15 s becomes one row 0-15 s with the
    highest of the three confidences; a gap of even one window starts a new row.
    """
    if detections.empty:
        return detections.reset_index(drop=True)
    merged = []
    for (file, label), rows in detections.sort_values("start_s").groupby(
            ["file", "label"], sort=False):
        # A new run starts where a window begins after everything before it has ended.
        ends_so_far = rows["end_s"].cummax().shift(fill_value=-np.inf)
        run = (rows["start_s"] > ends_so_far).cumsum()
        merged.append(rows.groupby(run).agg(
            file=("file", "first"), start_s=("start_s", "min"), end_s=("end_s", "max"),
            label=("label", "first"), confidence=("confidence", "max")))
    return sort_detections(pd.concat(merged, ignore_index=True))


def sort_detections(detections: pd.DataFrame) -> pd.DataFrame:
    return detections.sort_values(["file", "start_s", "confidence"],
                                  ascending=[True, True, False],
                                  kind="stable").reset_index(drop=True)[COLUMNS]


# --- Formats ----------------------------------------------------------------------------


SpeciesNames = dict[str, tuple[str, str]]  # {label: (scientific name, common name)}


def with_names(detections: pd.DataFrame, names: SpeciesNames | None = None) -> pd.DataFrame:
    """``detections`` with ``scientific_name`` and ``common_name`` columns
    (``catalog.label_names`` of each label)."""
    pairs = [catalog.label_names(label, names) for label in detections["label"]]
    return detections.assign(scientific_name=[scientific for scientific, _ in pairs],
                             common_name=[common for _, common in pairs])


def to_raven(detections: pd.DataFrame, low_freq_hz: float, high_freq_hz: float,
             names: SpeciesNames | None = None) -> pd.DataFrame:
    """BirdNET's Raven selection table (one recording): the model's band as the frequency
    box, the label as ``Species Code``, the recording as ``Begin Path`` and the begin time
    within it as ``File Offset (s)``."""
    named = with_names(detections, names)
    return pd.DataFrame({
        "Selection": np.arange(1, len(named) + 1),
        "View": "Spectrogram 1",
        "Channel": 1,
        "Begin Time (s)": named["start_s"].to_numpy(),
        "End Time (s)": named["end_s"].to_numpy(),
        "Low Freq (Hz)": float(low_freq_hz),
        "High Freq (Hz)": float(high_freq_hz),
        "Common Name": named["common_name"].to_numpy(),
        "Species Code": named["label"].to_numpy(),
        "Confidence": named["confidence"].to_numpy(),
        "Begin Path": named["file"].to_numpy(),
        "File Offset (s)": named["start_s"].to_numpy(),
    }, columns=RAVEN_COLUMNS)


def to_birdnet_csv(detections: pd.DataFrame, names: SpeciesNames | None = None
                   ) -> pd.DataFrame:
    """BirdNET-Analyzer's CSV table."""
    named = with_names(detections, names)
    return pd.DataFrame({
        "Start (s)": named["start_s"].to_numpy(), "End (s)": named["end_s"].to_numpy(),
        "Scientific name": named["scientific_name"].to_numpy(),
        "Common name": named["common_name"].to_numpy(),
        "Confidence": named["confidence"].to_numpy(), "File": named["file"].to_numpy(),
    }, columns=BIRDNET_CSV_COLUMNS)


def to_kaleidoscope(detections: pd.DataFrame, names: SpeciesNames | None = None,
                    overlap_s: float = 0.0) -> pd.DataFrame:
    """BirdNET-Analyzer's Kaleidoscope CSV: ``INDIR`` and ``FOLDER`` split the recording's
    folder as ``os.path.split`` does; no location or week is used (-1); sensitivity 1."""
    named = with_names(detections, names)
    folders = [Path(file).parent for file in named["file"]]
    return pd.DataFrame({
        "INDIR": [str(folder.parent) for folder in folders],
        "FOLDER": [folder.name for folder in folders],
        "IN FILE": [Path(file).name for file in named["file"]],
        "OFFSET": named["start_s"].to_numpy(),
        "DURATION": (named["end_s"] - named["start_s"]).to_numpy(),
        "scientific_name": named["scientific_name"].to_numpy(),
        "common_name": named["common_name"].to_numpy(),
        "confidence": named["confidence"].to_numpy(),
        "lat": UNKNOWN_PLACE, "lon": UNKNOWN_PLACE, "week": UNKNOWN_PLACE,
        "overlap": float(overlap_s), "sensitivity": 1.0,
    }, columns=KALEIDOSCOPE_COLUMNS)


def to_parquet_table(detections: pd.DataFrame, names: SpeciesNames | None = None
                     ) -> pd.DataFrame:
    """tfbird's table with the species names (``PARQUET_COLUMNS``)."""
    return with_names(detections, names)[PARQUET_COLUMNS]


def format_table(name: str, detections: pd.DataFrame,
                 band_hz: tuple[float, float] = (0.0, 0.0), names: SpeciesNames | None = None,
                 overlap_s: float = 0.0) -> pd.DataFrame:
    """Rows of ``COLUMNS`` as the table of format ``name`` (one of ``TABLE_FORMATS``)."""
    if name == "csv":
        return detections
    if name == "raven":
        return to_raven(detections, *band_hz, names)
    if name == "birdnet_csv":
        return to_birdnet_csv(detections, names)
    if name == "kaleidoscope":
        return to_kaleidoscope(detections, names, overlap_s)
    if name == "parquet":
        return to_parquet_table(detections, names)
    raise ValueError(f"Unknown table format. Received: format={name!r}")


def read_table(name: str, path: Path) -> pd.DataFrame:
    """Reads back a table ``write_outputs`` wrote in format ``name`` (``TABLE_FORMATS``)."""
    if name == "parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, sep="\t" if name == "raven" else ",", keep_default_na=False)


def table_bytes(name: str, table: pd.DataFrame) -> str | bytes:
    """A table of format ``name`` as the file content ``write_outputs`` writes: Parquet
    bytes (pyarrow), tab-separated text for Raven, else CSV text."""
    if name == "parquet":
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        return buffer.getvalue()
    return table.to_csv(sep="\t" if name == "raven" else ",", index=False,
                        float_format="%.4f")


def to_audacity(detections: pd.DataFrame) -> str:
    """Audacity label track text: ``start<TAB>end<TAB>label confidence`` per line."""
    return "".join(f"{row.start_s:.3f}\t{row.end_s:.3f}\t{row.label} {row.confidence:.3f}\n"
                   for row in detections.itertuples())


def to_json(detections: pd.DataFrame, file: str, duration_s: float, model: str) -> str:
    rows = detections.drop(columns="file").to_dict(orient="records")
    return json.dumps({"file": file, "duration_s": round(duration_s, 3), "model": model,
                       "detections": rows}, indent=1)


def output_paths(stem: Path, formats: tuple[str, ...]) -> dict[str, Path]:
    """``{format: path}`` of one recording's outputs; ``stem`` is e.g. ``out/site1/dawn.flac``."""
    return {name: stem.with_name(stem.name + OUTPUT_SUFFIXES[name]) for name in formats}


def write_outputs(detections: pd.DataFrame, paths: dict[str, Path], file: str,
                  duration_s: float, band_hz: tuple[float, float], model: str,
                  names: SpeciesNames | None = None, overlap_s: float = 0.0) -> None:
    """Writes one recording's detections in each format of ``paths``.

    Args:
        detections: the recording's rows of ``COLUMNS``.
        paths: ``{format: path}`` from ``output_paths``.
        file: the recording, as named in the JSON output.
        duration_s: length of the recording, in seconds (JSON output).
        band_hz: ``(low, high)`` frequency box of the Raven selections, in Hz.
        model: the model path, as named in the JSON output.
        names: ``{label: (scientific name, common name)}`` for BirdNET's tables; labels
            missing from it get ``catalog.label_names``.
        overlap_s: the windows' overlap, in seconds (Kaleidoscope's ``overlap``).
    """
    for name, path in paths.items():
        if name in TABLE_FORMATS:
            text = table_bytes(name, format_table(name, detections, band_hz, names, overlap_s))
        elif name == "audacity":
            text = to_audacity(detections)
        elif name == "json":
            text = to_json(detections, file, duration_s, model)
        else:
            raise ValueError(f"Unknown output format. Received: format={name!r}")
        write_atomically(path, text)

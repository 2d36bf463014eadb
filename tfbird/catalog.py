"""Data sets on disk -> one table of recordings and their labels, and the train/validation split.

Layouts read here:

- **BirdCLEF** (2021–2024 and tfbird's synthetic corpus): a folder with ``train_metadata.csv``
  (``primary_label``, ``secondary_labels`` as a Python-list string like ``['sp03']``,
  ``filename`` relative to ``train_audio/``).
- **Plain CSV**: a ``.csv`` file with ``filename,label[,secondary_labels]``; filenames are
  relative to the CSV's folder.

The catalog table has one row per recording with the columns ``path`` (absolute),
``filename`` (as written in the data set), ``primary_label`` and ``secondary_labels`` (a list).

Example:
    >>> table, labels = read_catalog("data/demo")
    >>> table = assign_split(table, validation_fraction=0.2, seed=0)
"""

from __future__ import annotations

import ast
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

BIRDCLEF_METADATA = "train_metadata.csv"
BIRDCLEF_AUDIO_DIRS = ("train_audio", "train_short_audio")
CATALOG_COLUMNS = ["path", "filename", "primary_label", "secondary_labels"]


def read_catalog(data: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """Reads a data set into the catalog table and its sorted label list.

    The label list is the set of primary labels. Secondary labels outside it (common in
    BirdCLEF, where a background species may have no recordings of its own) are removed from
    the targets, and their number is logged.

    Args:
        data: a BirdCLEF folder (holding ``train_metadata.csv``) or a plain CSV file.

    Returns:
        ``(table, labels)``.

    Raises:
        ValueError: the path does not exist, has no known layout, or its CSV lacks a column.
    """
    data = Path(data)
    if not data.exists():
        raise ValueError(f"Data path does not exist. Received: data={str(data)!r}")
    if data.is_dir() and (data / BIRDCLEF_METADATA).is_file():
        table = read_birdclef(data)
    elif data.is_file() and data.suffix.lower() == ".csv":
        table = read_plain_csv(data)
    else:
        raise ValueError(
            f"No known data layout: expected a folder with {BIRDCLEF_METADATA} or a .csv file "
            f"with filename,label columns. Received: data={str(data)!r}")
    labels = sorted(table["primary_label"].unique())
    table["secondary_labels"] = drop_unknown_secondary_labels(table["secondary_labels"], labels)
    return table.reset_index(drop=True), labels


def read_birdclef(root: Path) -> pd.DataFrame:
    csv_path = root / BIRDCLEF_METADATA
    metadata = read_csv_with_columns(csv_path, ["primary_label", "secondary_labels", "filename"])
    audio_dir = next((root / d for d in BIRDCLEF_AUDIO_DIRS if (root / d).is_dir()),
                     root / BIRDCLEF_AUDIO_DIRS[0])
    return pd.DataFrame({
        "path": [str(resolve_inside(audio_dir, f, csv_path)) for f in metadata["filename"]],
        "filename": metadata["filename"].astype(str),
        "primary_label": metadata["primary_label"].astype(str),
        "secondary_labels": [parse_label_list(v, csv_path) for v in metadata["secondary_labels"]],
    })


def read_plain_csv(csv_path: Path) -> pd.DataFrame:
    metadata = read_csv_with_columns(csv_path, ["filename", "label"])
    secondary = metadata.get("secondary_labels", pd.Series([""] * len(metadata)))
    return pd.DataFrame({
        "path": [str(resolve_inside(csv_path.parent, f, csv_path)) for f in metadata["filename"]],
        "filename": metadata["filename"].astype(str),
        "primary_label": metadata["label"].astype(str),
        "secondary_labels": [parse_label_list(v, csv_path) for v in secondary],
    })


def read_csv_with_columns(csv_path: Path, required: list[str]) -> pd.DataFrame:
    """Reads a CSV and checks it has the ``required`` columns, naming any that are missing."""
    table = pd.read_csv(csv_path, keep_default_na=False, dtype=str)
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ValueError(
            f"{csv_path} lacks the column(s) {missing}; it has {list(table.columns)}. "
            f"Received: columns={list(table.columns)}")
    empty = table.index[table["filename"].str.strip() == ""].tolist()
    if empty:
        raise ValueError(f"{csv_path} has rows without a filename. Received: rows={empty[:10]}")
    return table


def parse_label_list(value, csv_path: Path) -> list[str]:
    """``"['sp03', 'sp07']"`` (BirdCLEF), ``"sp03 sp07"`` or ``"sp03;sp07"`` -> list of labels."""
    text = str(value).strip()
    if text in ("", "[]", "nan"):
        return []
    if text.startswith("["):
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError) as error:
            raise ValueError(f"{csv_path}: cannot parse a label list. Received: {text!r}") from error
        return [str(label) for label in parsed]
    return [label for label in text.replace(";", " ").replace(",", " ").split() if label]


def resolve_inside(root: Path, filename: str, csv_path: Path) -> Path:
    """``root / filename``, refusing names that lead outside ``root`` (``../../etc/passwd``).

    The check is on the normalised path, not the resolved one, so a data folder may hold
    symbolic links to audio stored elsewhere.
    """
    root = Path(os.path.normpath(root.absolute()))
    path = Path(os.path.normpath(root / filename))
    if not path.is_relative_to(root):
        raise ValueError(f"{csv_path}: a filename leads outside the data root {root}. "
                         f"Received: filename={filename!r}")
    return path


def drop_unknown_secondary_labels(secondary: pd.Series, labels: list[str]) -> list[list[str]]:
    known = set(labels)
    kept = [[label for label in row if label in known] for row in secondary]
    dropped = sum(len(row) for row in secondary) - sum(len(row) for row in kept)
    if dropped:
        log.warning("Ignored %d secondary label(s) that are not the primary label of any "
                    "recording, so have no class.", dropped)
    return kept


def assign_split(table: pd.DataFrame, validation_fraction: float, seed: int) -> pd.DataFrame:
    """Adds a ``split`` column (``train``/``valid``), stratified by primary label.

    The split is by recording, so no window of a recording is in both splits. From each
    class ``round(n * validation_fraction)`` recordings go to validation, at least one when a
    class has two or more, and never all of them.

    Returns:
        A copy of ``table`` with the ``split`` column.
    """
    rng = np.random.default_rng(seed)
    split = np.array(["train"] * len(table), dtype=object)
    for _, rows in table.groupby("primary_label", sort=True):
        n = len(rows)
        if n < 2:
            continue
        num_valid = min(max(1, int(round(n * validation_fraction))), n - 1)
        chosen = rng.choice(rows.index.to_numpy(), size=num_valid, replace=False)
        split[chosen] = "valid"
    return table.assign(split=split)

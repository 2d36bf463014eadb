"""Data sets on disk -> one table of recordings and their labels, and the train/validation split.

Layouts read here (``detect_layout`` picks one; ``data.layout`` or ``--layout`` forces it):

- ``birdclef`` (BirdCLEF 2021-2024 and tfbird's synthetic corpus): a folder with
  ``train_metadata.csv`` (``primary_label``, ``secondary_labels`` as a Python-list string like
  ``['sp03']``, ``filename`` relative to ``train_audio/``; 2021's ``train_short_audio/`` and
  its bare filenames, found under ``<primary_label>/``, work too). Labels: the primary labels.
- ``birdclef2025``: a folder with ``train.csv`` (same columns) and ``taxonomy.csv``, whose
  ``primary_label`` column is the label list.
- ``cornell`` (Cornell Birdcall Identification 2020): a folder with ``train.csv``; the class
  is ``ebird_code`` and the audio is ``train_audio/<ebird_code>/<filename>``.
  ``secondary_labels`` holds species names (``'Empidonax traillii_Willow Flycatcher'``),
  mapped to codes through the ``sci_name``/``species``/``ebird_code`` columns of the same CSV.
- ``folders``: ``ROOT/<label>/**/*.{wav,flac,ogg,mp3,opus}``. A folder named ``a,b`` holds
  recordings of both; a folder whose name starts with ``-`` holds negatives, and folders named
  Noise, Background, Other or Silence (any case) hold non-event recordings: both get an
  all-zero target and are not classes.
- ``raven``: Raven selection tables ``<stem>[.Table.N].selections.txt`` beside
  ``<stem>.<audio suffix>``; tab-separated, with ``Begin Time (s)``, ``End Time (s)`` and the
  label in ``data.label_column``. Targets are per window (``window_targets``). The tables are
  the inputs: audio without a table is not part of the data set (its number is logged).
- ``csv``: a ``.csv`` file with ``filename,label[,secondary_labels]``; filenames are relative
  to the CSV's folder.

The catalog table has one row per input file and the columns

- ``path`` (absolute), ``filename`` (as written in the data set);
- ``primary_label`` (``""`` for a negative or non-event recording) and ``secondary_labels``
  (a list; labels that are not classes are removed and their number logged);
- ``boxes``: ``None``, or for Raven a list of ``(begin_s, end_s, label)``;
- ``error``: ``""``, or ``"<reason>: <detail>"`` for a file that cannot be ingested (a path
  outside the data root, an unknown label, a missing audio file beside a Raven table);
- then the data set's metadata columns as strings (for Cornell: rating, duration, pitch,
  sampling_rate, latitude, longitude, author and license).

Example:
    >>> table, labels = read_catalog("data/demo")
    >>> table = assign_split(table[table["error"] == ""], validation_fraction=0.2, seed=0)
"""

from __future__ import annotations

import ast
import collections
import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from tfbird import labels as labels_lib
from tfbird.config import DATA_LAYOUTS, EMBEDDING_BACKBONES, IGNORED_LABELS

log = logging.getLogger(__name__)

BIRDCLEF_METADATA = "train_metadata.csv"
BIRDCLEF_AUDIO_DIRS = ("train_audio", "train_short_audio")
TRAIN_CSV = "train.csv"
TAXONOMY_CSV = "taxonomy.csv"
RAVEN_SUFFIX = ".selections.txt"
RAVEN_BEGIN = "Begin Time (s)"
RAVEN_END = "End Time (s)"
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus")
NON_EVENT_FOLDERS = ("noise", "background", "other", "silence")
CORNELL_METADATA = ("rating", "duration", "pitch", "sampling_rate", "latitude", "longitude",
                    "author", "license")
CATALOG_COLUMNS = ["path", "filename", "primary_label", "secondary_labels", "boxes", "error"]
PATH_OUTSIDE_ROOT = "path outside the data root"
LABEL_UNKNOWN = "label unknown"
FILE_MISSING = "file missing"


def read_catalog(data: str | Path, layout: str = "auto", label_column: str = "Species",
                 ignore_labels: tuple[str, ...] = IGNORED_LABELS,
                 fold_column: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Reads a data set into the catalog table and its sorted label list.

    Args:
        data: a data set folder, or its CSV file (see the module docstring for the layouts).
        layout: ``"auto"`` (``detect_layout``) or a layout name from ``config.DATA_LAYOUTS``.
        label_column: the label column of Raven selection tables.
        ignore_labels: Raven box labels that are no class (compared without case and
            surrounding spaces): such boxes are dropped and label no window.
        fold_column: ``data.fold_column``; a ``folders`` data set reads it from the CSV
            beside its class folders (``attach_folds``); the CSV layouts keep it as metadata.

    Returns:
        ``(table, labels)``. Rows with a non-empty ``error`` are failures, not recordings:
        ingest reports them in ``failures.csv``.

    Raises:
        ValueError: the path does not exist, has no known layout, a CSV lacks a column, or no
            file has a label.
    """
    data = Path(data)
    if not data.exists():
        raise ValueError(f"Data path does not exist. Received: data={str(data)!r}")
    if layout not in DATA_LAYOUTS:
        raise ValueError(f"Unknown layout; known: {list(DATA_LAYOUTS)}. Received: layout={layout!r}")
    if layout == "auto":
        layout = detect_layout(data)
    if layout == "birdclef":
        table, labels = read_birdclef(data)
    elif layout == "birdclef2025":
        table, labels = read_birdclef2025(data)
    elif layout == "cornell":
        table, labels = read_cornell(data)
    elif layout == "folders":
        table, labels = read_folders(data)
        if fold_column is not None and fold_column not in table.columns:
            table = attach_folds(table, data, fold_column)
    elif layout == "raven":
        table, labels = read_raven(data, label_column, ignore_labels)
    else:
        table, labels = read_plain_csv(data if data.is_file() else data / TRAIN_CSV)
    if not labels:
        raise ValueError(f"No file of the data set has a usable label (layout {layout!r}). "
                         f"Received: data={str(data)!r}")
    table["error"] = mark_unknown_primary_labels(table, labels)
    table["secondary_labels"] = drop_unknown_secondary_labels(table["secondary_labels"], labels)
    return table.reset_index(drop=True), labels


def data_set_name(data: str | Path) -> str:
    """A short name of a data set: its folder's name, or a CSV's stem unless that is a
    layout's standard file name (``train.csv``, ``train_metadata.csv``: then the folder's).

    Example:
        >>> data_set_name("../shared/data/esc10/esc10.csv"), data_set_name("birdclef-2024/")
        ('esc10', 'birdclef-2024')
    """
    path = Path(os.path.normpath(Path(data).absolute()))
    if path.suffix.lower() == ".csv":
        return path.parent.name if path.name in (TRAIN_CSV, BIRDCLEF_METADATA) else path.stem
    return path.name


def default_records_dir(data: str | Path, valid_fold: int | str | None = None,
                        records_root: str | Path = "records",
                        backbone: str = "resnet50") -> Path:
    """``records/<data set name>``, or ``records/<name>-fold<K>`` with a validation fold:
    where ``train --data`` and ``cv`` write a data set's records when not told. Records of
    a pretrained ``backbone``'s embeddings get its name: ``records/<name>-birdnet-fold<K>``;
    log-mel records serve every image backbone (``resnet50``, ``mobilenetv3small``, ...)."""
    embedding = backbone in EMBEDDING_BACKBONES
    name = data_set_name(data) + (f"-{backbone}" if embedding else "")
    return Path(records_root) / (name if valid_fold is None else f"{name}-fold{valid_fold}")


def detect_layout(path: str | Path) -> str:
    """The layout of a data set folder or CSV file, from the files and columns it has.

    Checked in this order: ``train_metadata.csv`` (birdclef); ``train.csv`` with
    ``ebird_code`` (cornell), or with ``primary_label`` and a ``taxonomy.csv`` beside it
    (birdclef2025); ``*.selections.txt`` tables beside most of the audio (raven; see
    ``layout_of_annotated_folder``); sub-folders holding audio (folders). A CSV file is cornell, birdclef2025, birdclef or csv by its columns.

    Raises:
        ValueError: none of these match.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"Data path does not exist. Received: data={str(path)!r}")
    if path.is_file() and path.suffix.lower() == ".csv":
        return layout_of_csv(path)
    if path.is_dir():
        if (path / BIRDCLEF_METADATA).is_file():
            return "birdclef"
        if (path / TRAIN_CSV).is_file():
            return layout_of_csv(path / TRAIN_CSV)
        has_class_folders = any(child.is_dir() and audio_files_under(child)
                                for child in path.iterdir())
        if next(path.rglob("*" + RAVEN_SUFFIX), None) is not None:
            layout = layout_of_annotated_folder(path, has_class_folders)
            if layout:
                return layout
        elif has_class_folders:
            return "folders"
    raise ValueError(
        f"No known data layout: expected a folder with {BIRDCLEF_METADATA}, {TRAIN_CSV}, "
        f"Raven *{RAVEN_SUFFIX} tables or class folders of audio, or a .csv file with "
        f"filename,label columns. Received: data={str(path)!r}")


def layout_of_annotated_folder(path: Path, has_class_folders: bool) -> str:
    """``raven`` when most of the audio under ``path`` has a Raven selection table beside
    it; else ``folders`` when the audio sits in class folders (the few tables are notes).

    Raises:
        ValueError: a minority of the recordings annotated and no class folders: the
            choice is the user's (``--layout raven`` reads only the annotated ones).
    """
    audio = audio_files_under(path)
    annotated = {raven_audio_path(table) for table in path.rglob("*" + RAVEN_SUFFIX)} - {None}
    if 2 * len(annotated) > len(audio):
        return "raven"
    if has_class_folders:
        log.info("Layout folders: %d of %d recordings have a Raven selection table; "
                 "--layout raven would read only those.", len(annotated), len(audio))
        return "folders"
    raise ValueError(
        f"Only {len(annotated)} of {len(audio)} recordings have a Raven selection table "
        f"(*{RAVEN_SUFFIX}) and they sit in no class folders: give --layout raven to train "
        f"on the annotated recordings only, or another --layout. Received: data={str(path)!r}")


def layout_of_csv(csv_path: Path) -> str:
    columns = set(pd.read_csv(csv_path, nrows=0).columns)
    if "ebird_code" in columns:
        return "cornell"
    if "primary_label" in columns:
        return "birdclef2025" if (csv_path.parent / TAXONOMY_CSV).is_file() else "birdclef"
    return "csv"


# --- One reader per layout: each returns (table, labels) ----------------------------------


def read_birdclef(data: Path) -> tuple[pd.DataFrame, list[str]]:
    """BirdCLEF 2021-2024 ``train_metadata.csv``; the labels are the primary labels."""
    csv_path = data if data.is_file() else data / BIRDCLEF_METADATA
    metadata = read_csv_with_columns(csv_path, ["primary_label", "secondary_labels", "filename"])
    table = recordings_table(
        birdclef_audio_dir(csv_path.parent), metadata["filename"], metadata["primary_label"],
        [parse_label_list(v, csv_path) for v in metadata["secondary_labels"]], metadata,
        label_folders=metadata["primary_label"])
    return table, labels_of_primaries(table)


def read_birdclef2025(data: Path) -> tuple[pd.DataFrame, list[str]]:
    """BirdCLEF 2025 ``train.csv``; the labels are ``taxonomy.csv``'s ``primary_label``."""
    csv_path = data if data.is_file() else data / TRAIN_CSV
    taxonomy_path = csv_path.parent / TAXONOMY_CSV
    if not taxonomy_path.is_file():
        raise ValueError(f"A BirdCLEF 2025 data set needs {TAXONOMY_CSV} beside {csv_path.name}. "
                         f"Received: taxonomy={str(taxonomy_path)!r}")
    taxonomy = pd.read_csv(taxonomy_path, keep_default_na=False, dtype=str)
    if "primary_label" not in taxonomy.columns:
        raise ValueError(f"{taxonomy_path} lacks the column 'primary_label'. "
                         f"Received: columns={list(taxonomy.columns)}")
    labels = sorted({label.strip() for label in taxonomy["primary_label"] if label.strip()})
    metadata = read_csv_with_columns(csv_path, ["primary_label", "secondary_labels", "filename"])
    table = recordings_table(
        birdclef_audio_dir(csv_path.parent), metadata["filename"], metadata["primary_label"],
        [parse_label_list(v, csv_path) for v in metadata["secondary_labels"]], metadata,
        label_folders=metadata["primary_label"])
    return table, labels


def read_cornell(data: Path) -> tuple[pd.DataFrame, list[str]]:
    """Cornell 2020 ``train.csv``: ``ebird_code`` classes, secondary labels by species name."""
    csv_path = data if data.is_file() else data / TRAIN_CSV
    metadata = read_csv_with_columns(csv_path, ["ebird_code", "filename"])
    codes = cornell_codes_by_name(metadata)
    secondary = metadata.get("secondary_labels", pd.Series([""] * len(metadata)))
    kept = metadata[[c for c in CORNELL_METADATA if c in metadata.columns]]
    table = recordings_table(
        csv_path.parent / "train_audio", metadata["filename"], metadata["ebird_code"],
        [[codes.get(name, name) for name in parse_label_list(v, csv_path)] for v in secondary],
        kept, label_folders=metadata["ebird_code"])
    return table, labels_of_primaries(table)


def read_folders(root: Path) -> tuple[pd.DataFrame, list[str]]:
    """``ROOT/<label>/...`` audio files; see ``labels_of_folder`` for the folder names."""
    root = Path(os.path.normpath(root.absolute()))
    rows = []
    for path in audio_files_under(root):
        relative = path.relative_to(root)
        folder_labels = labels_of_folder(relative.parts[0]) if len(relative.parts) > 1 else []
        error = "" if len(relative.parts) > 1 else (
            f"{LABEL_UNKNOWN}: the file lies directly in the data root, not in a class folder: "
            f"{relative}")
        rows.append({"path": str(path), "filename": relative.as_posix(),
                     "primary_label": folder_labels[0] if folder_labels else "",
                     "secondary_labels": folder_labels[1:], "boxes": None, "error": error,
                     "folder": relative.parts[0] if len(relative.parts) > 1 else ""})
    table = pd.DataFrame(rows, columns=[*CATALOG_COLUMNS, "folder"])
    labels = sorted({label for row in table.itertuples() if not row.error
                     for label in [row.primary_label, *row.secondary_labels] if label})
    return table, labels


def read_raven(root: Path, label_column: str, ignore_labels: tuple[str, ...] = IGNORED_LABELS
               ) -> tuple[pd.DataFrame, list[str]]:
    """Raven selection tables beside their audio; each table is one recording with boxes
    (boxes labelled with one of ``ignore_labels`` are dropped)."""
    root = Path(os.path.normpath(root.absolute()))
    boxes_by_audio: dict[Path, list] = {}
    missing = []
    for table_path in sorted(root.rglob("*" + RAVEN_SUFFIX)):
        boxes = read_selection_table(table_path, label_column, ignore_labels)
        audio = raven_audio_path(table_path)
        if audio is None:
            missing.append(table_path)
            continue
        boxes_by_audio.setdefault(audio, []).extend(boxes)
    rows = [raven_row(root, audio, boxes) for audio, boxes in boxes_by_audio.items()]
    rows += [{"path": str(t.parent / raven_stem(t)), "filename": t.relative_to(root).as_posix(),
              "primary_label": "", "secondary_labels": [], "boxes": [],
              "error": f"{FILE_MISSING}: no audio file "
                       f"{raven_stem(t)}{{{','.join(AUDIO_SUFFIXES)}}} beside the table {t}"}
             for t in missing]
    unannotated = len(set(audio_files_under(root)) - set(boxes_by_audio))
    if unannotated:
        log.warning("%d audio file(s) under %s have no Raven selection table and are not part "
                    "of the data set.", unannotated, root)
    table = pd.DataFrame(rows, columns=CATALOG_COLUMNS)
    labels = sorted({label for boxes in table["boxes"] for _, _, label in boxes})
    return table, labels


def read_plain_csv(csv_path: Path) -> tuple[pd.DataFrame, list[str]]:
    """``filename,label[,secondary_labels]``; the labels are the ``label`` values."""
    metadata = read_csv_with_columns(csv_path, ["filename", "label"])
    secondary = metadata.get("secondary_labels", pd.Series([""] * len(metadata)))
    table = recordings_table(csv_path.parent, metadata["filename"], metadata["label"],
                             [parse_label_list(v, csv_path) for v in secondary], metadata)
    empty = (table["primary_label"] == "") & (table["error"] == "")
    table.loc[empty, "error"] = f"{LABEL_UNKNOWN}: the label is empty"
    return table, labels_of_primaries(table)


# --- Helpers of the readers ----------------------------------------------------------------


def recordings_table(audio_dir: Path, filenames, primary, secondary: list[list[str]],
                     metadata: pd.DataFrame | None = None,
                     label_folders=None) -> pd.DataFrame:
    """Catalog rows for files named relative to ``audio_dir``.

    A bare filename (no folder) is looked for under ``<label folder>/`` when
    ``label_folders`` is given (BirdCLEF 2021, Cornell). A filename leading outside
    ``audio_dir`` gets the error ``path outside the data root``. The other ``metadata``
    columns are kept.
    """
    filenames = [str(f).strip() for f in filenames]
    folders = list(label_folders) if label_folders is not None else [""] * len(filenames)
    located = [audio_path(audio_dir, name if "/" in name or not folder else f"{folder}/{name}")
               for name, folder in zip(filenames, folders)]
    table = pd.DataFrame({
        "path": [path for path, _ in located],
        "filename": filenames,
        "primary_label": [str(p).strip() for p in primary],
        "secondary_labels": list(secondary),
        "boxes": [None] * len(filenames),
        "error": [error for _, error in located],
    })
    if metadata is not None:
        used = {"filename", "label", "primary_label", "secondary_labels", "ebird_code"}
        for column in metadata.columns:
            if column not in used and column not in table.columns:
                table[column] = metadata[column].to_numpy()
    return table


def audio_path(root: Path, filename: str) -> tuple[str, str]:
    """``(path, error)``: ``root / filename``, or an error when it leads outside ``root``.

    The check is on the normalised path, not the resolved one, so a data folder may hold
    symbolic links to audio stored elsewhere.
    """
    root = Path(os.path.normpath(root.absolute()))
    path = Path(os.path.normpath(root / filename))
    if not path.is_relative_to(root):
        return str(path), (f"{PATH_OUTSIDE_ROOT}: {filename!r} leads outside {root}")
    return str(path), ""


def birdclef_audio_dir(root: Path) -> Path:
    return next((root / d for d in BIRDCLEF_AUDIO_DIRS if (root / d).is_dir()),
                root / BIRDCLEF_AUDIO_DIRS[0])


def labels_of_primaries(table: pd.DataFrame) -> list[str]:
    """Sorted primary labels of the rows without an error."""
    return sorted({p for p, e in zip(table["primary_label"], table["error"]) if p and not e})


def cornell_codes_by_name(metadata: pd.DataFrame) -> dict[str, str]:
    """``{"Sci name_Common Name" | "Sci name" | "Common Name" | code: ebird_code}``."""
    codes = {}
    scientific = metadata.get("sci_name", pd.Series([""] * len(metadata)))
    common = metadata.get("species", pd.Series([""] * len(metadata)))
    for code, sci, name in zip(metadata["ebird_code"], scientific, common):
        for key in (f"{sci}_{name}", sci, name, code):
            if key and key != "_":
                codes.setdefault(key.strip(), code.strip())
    return codes


# The (label, scientific name, common name) columns of the files that name species.
SPECIES_NAME_COLUMNS = {TAXONOMY_CSV: ("primary_label", "scientific_name", "common_name"),
                        BIRDCLEF_METADATA: ("primary_label", "scientific_name", "common_name"),
                        TRAIN_CSV: ("ebird_code", "sci_name", "species")}


def species_names(data: str | Path) -> dict[str, tuple[str, str]]:
    """``{label: (scientific name, common name)}`` from the data set's taxonomy, if any.

    Read from BirdCLEF 2025's ``taxonomy.csv``, BirdCLEF 2021-2024's ``train_metadata.csv``
    or Cornell's ``train.csv`` (``ebird_code``, ``sci_name``, ``species``), whichever of them
    sits in the data set folder (or beside its CSV) with those columns; ``{}`` for other
    data sets or a data set that is not on disk. Labels without names fall back to
    ``label_names``.
    """
    data = Path(data)
    folder = data.parent if data.is_file() else data
    for name, columns in SPECIES_NAME_COLUMNS.items():
        path = folder / name
        if not path.is_file() or not set(columns) <= set(pd.read_csv(path, nrows=0).columns):
            continue
        table = pd.read_csv(path, usecols=list(columns), keep_default_na=False, dtype=str)
        table = table.apply(lambda column: column.str.strip()).drop_duplicates(columns[0])
        return {label: (scientific, common) for label, scientific, common
                in table[list(columns)].itertuples(index=False) if label}
    return {}


def label_names(label: str, names: dict[str, tuple[str, str]] | None = None
                ) -> tuple[str, str]:
    """``(scientific name, common name)`` of a label: from ``names`` (``species_names``),
    else split from a BirdNET label ``Scientific name_Common name`` (a binomial, with a
    space, before the underscore: ``dog_bark`` is not one), else the label twice.

    Example:
        >>> label_names("Turdus merula_Eurasian Blackbird")
        ('Turdus merula', 'Eurasian Blackbird')
        >>> label_names("dog_bark")
        ('dog_bark', 'dog_bark')
    """
    if names and label in names:
        return names[label]
    scientific, sep, common = label.partition("_")
    binomial = " " in scientific.strip()
    return (scientific, common) if sep and binomial and common else (label, label)


def labels_of_folder(name: str) -> list[str]:
    """Labels of a class folder: ``"a,b"`` -> ``["a", "b"]``; negatives and non-event -> ``[]``."""
    if name.startswith("-") or name.strip().lower() in NON_EVENT_FOLDERS:
        return []
    return [label.strip() for label in name.split(",") if label.strip()]


def audio_files_under(folder: Path) -> list[Path]:
    """Audio files below ``folder`` (recursive, sorted), by suffix (``AUDIO_SUFFIXES``)."""
    return sorted(p for p in Path(folder).rglob("*")
                  if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def raven_stem(table_path: Path) -> str:
    """``13738.Table.1.selections.txt`` -> ``13738``."""
    stem = table_path.name[: -len(RAVEN_SUFFIX)]
    return re.sub(r"\.Table\.\d+$", "", stem)


def raven_audio_path(table_path: Path) -> Path | None:
    """The audio file beside a selection table with the same stem, or ``None``."""
    stem = raven_stem(table_path)
    for candidate in sorted(table_path.parent.iterdir()):
        if candidate.stem == stem and candidate.suffix.lower() in AUDIO_SUFFIXES:
            return candidate
    return None


def read_selection_table(table_path: Path, label_column: str,
                         ignore_labels: tuple[str, ...] = IGNORED_LABELS
                         ) -> list[tuple[float, float, str]]:
    """The ``(begin_s, end_s, label)`` boxes of a Raven selection table. Rows without a
    label, or with one of ``ignore_labels`` (any case, e.g. ``?``, ``Unknown``), are skipped.

    Raises:
        ValueError: a missing column (naming the columns the table has) or a time that is not
            a number.
    """
    table = pd.read_csv(table_path, sep="\t", dtype=str, keep_default_na=False)
    missing = [c for c in (RAVEN_BEGIN, RAVEN_END, label_column) if c not in table.columns]
    if missing:
        raise ValueError(
            f"The Raven table {table_path} lacks the column(s) {missing}; it has "
            f"{list(table.columns)} (choose the label column with --label-column). "
            f"Received: label_column={label_column!r}")
    try:
        begin = table[RAVEN_BEGIN].astype(float).to_numpy()
        end = table[RAVEN_END].astype(float).to_numpy()
    except ValueError as error:
        raise ValueError(f"The Raven table {table_path} has a time that is not a number. "
                         f"Received: {error}") from error
    ignored = {label.strip().lower() for label in ignore_labels} | {""}
    return [(float(b), float(e), label.strip())
            for b, e, label in zip(begin, end, table[label_column])
            if label.strip().lower() not in ignored]


def raven_row(root: Path, audio: Path, boxes: list) -> dict:
    """One catalog row for an annotated recording: primary = its most frequent box label."""
    counts = collections.Counter(label for _, _, label in boxes)
    ranked = sorted(counts, key=lambda label: (-counts[label], label))
    return {"path": str(audio), "filename": audio.relative_to(root).as_posix(),
            "primary_label": ranked[0] if ranked else "", "secondary_labels": ranked[1:],
            "boxes": boxes, "error": ""}


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
    """``"['sp03', 'sp07']"`` (BirdCLEF), ``"sp03 sp07"`` or ``"sp03;sp07"`` -> list of labels.

    Empty entries (BirdCLEF 2025 writes ``['']``) are dropped.
    """
    text = str(value).strip()
    if text in ("", "[]", "nan"):
        return []
    if text.startswith("["):
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError) as error:
            raise ValueError(f"{csv_path}: cannot parse a label list. Received: {text!r}") from error
        return [str(label).strip() for label in parsed if str(label).strip()]
    return [label for label in text.replace(";", " ").replace(",", " ").split() if label]


def mark_unknown_primary_labels(table: pd.DataFrame, labels: list[str]) -> list[str]:
    """The ``error`` column, with ``label unknown`` added for primary labels not in ``labels``."""
    known = set(labels)
    return [error or (f"{LABEL_UNKNOWN}: {primary!r} is not a class of this data set"
                      if primary and primary not in known else "")
            for primary, error in zip(table["primary_label"], table["error"])]


def drop_unknown_secondary_labels(secondary: pd.Series, labels: list[str]) -> list[list[str]]:
    known = set(labels)
    kept = [[label for label in row if label in known] for row in secondary]
    dropped = sum(len(row) for row in secondary) - sum(len(row) for row in kept)
    if dropped:
        log.warning("Ignored %d secondary label(s) that are not classes of the data set.",
                    dropped)
    return kept


# --- Targets --------------------------------------------------------------------------------


def recording_target(primary_label: str, secondary_labels: list[str],
                     labels: list[str]) -> np.ndarray:
    """Multi-hot ``[classes]`` of a recording's labels; all zeros for ``primary_label=""``."""
    return labels_lib.to_multi_hot([l for l in [primary_label, *secondary_labels] if l], labels)


def secondary_target(primary_label: str, secondary_labels: list[str], labels: list[str],
                     boxes: list | None = None) -> np.ndarray:
    """Multi-hot ``[classes]`` of a recording's secondary labels that are not its primary
    label; all zeros with ``boxes`` (Raven windows are labelled by the boxes they overlap,
    each as sure as the others).

    Example:
        >>> secondary_target("a", ["b", "a"], ["a", "b", "c"])
        array([0., 1., 0.], dtype=float32)
    """
    if boxes is not None:
        return np.zeros(len(labels), np.float32)
    return labels_lib.to_multi_hot(
        [label for label in secondary_labels if label and label != primary_label], labels)


def window_targets(start_s: np.ndarray, window_s: float, labels: list[str],
                   recording: np.ndarray, boxes: list | None = None,
                   min_overlap_s: float = 0.5) -> np.ndarray:
    """Multi-hot ``[windows, classes]`` for windows starting at ``start_s``.

    Without ``boxes`` every window gets the recording's target. With boxes (Raven), a window
    ``[start, start + window_s)`` gets a box's label when they overlap by at least
    ``min(min_overlap_s, box length)`` seconds, and by more than zero.

    Args:
        start_s: window start times, seconds ``[windows]``.
        window_s: window length, seconds.
        labels: the class list.
        recording: the recording's multi-hot target ``[classes]``.
        boxes: ``None`` or ``(begin_s, end_s, label)`` tuples.
        min_overlap_s: the overlap a box needs, seconds.

    Example:
        >>> window_targets(np.array([0.0, 5.0]), 5.0, ["a"], np.zeros(1), [(4.0, 6.0, "a")])
        array([[1.], [1.]], dtype=float32)
    """
    start_s = np.asarray(start_s, np.float64).reshape(-1)
    if boxes is None:
        return np.tile(np.asarray(recording, np.float32), (len(start_s), 1))
    index = {label: i for i, label in enumerate(labels)}
    targets = np.zeros((len(start_s), len(labels)), np.float32)
    for begin_s, end_s, label in boxes:
        if label not in index:
            continue
        overlap_s = np.minimum(end_s, start_s + window_s) - np.maximum(begin_s, start_s)
        needed_s = min(min_overlap_s, end_s - begin_s)
        targets[(overlap_s > 0) & (overlap_s >= needed_s), index[label]] = 1.0
    return targets


# --- Split ----------------------------------------------------------------------------------


def assign_split(table: pd.DataFrame, validation_fraction: float, seed: int,
                 fold_column: str | None = None, valid_fold: int | str | None = None
                 ) -> pd.DataFrame:
    """Adds a ``split`` column (``train``/``valid``).

    With ``fold_column`` (``data.fold_column``), the data set's own folds decide
    (``split_by_fold``). Otherwise the split is random, stratified by primary label and by
    recording, so no window of a recording is in both splits: from each class
    ``round(n * validation_fraction)`` recordings go to validation, at least one when a class
    has two or more, and never all of them. Negative and non-event recordings
    (``primary_label=""``) form one more group.

    Returns:
        A copy of ``table`` with the ``split`` column.
    """
    if fold_column is not None:
        return split_by_fold(table, fold_column, valid_fold)
    rng = np.random.default_rng(seed)
    split = np.array(["train"] * len(table), dtype=object)
    positions = pd.Series(np.arange(len(table)), index=table.index)
    for _, rows in table.groupby("primary_label", sort=True):
        n = len(rows)
        if n < 2:
            continue
        num_valid = min(max(1, int(round(n * validation_fraction))), n - 1)
        chosen = rng.choice(positions[rows.index].to_numpy(), size=num_valid, replace=False)
        split[chosen] = "valid"
    return table.assign(split=split)


def folds_of(table: pd.DataFrame, fold_column: str) -> list[str]:
    """The folds named in ``fold_column`` (as strings, numbers in numeric order).

    Raises:
        ValueError: the column is missing, or some rows have no fold (the first are named).
    """
    if fold_column not in table.columns:
        extra = [c for c in table.columns if c not in CATALOG_COLUMNS]
        raise ValueError(
            f"The data set has no fold column {fold_column!r}; its metadata columns are "
            f"{extra}. A folder of class folders takes its folds from a CSV beside them "
            f"(filename,{fold_column}). Received: fold_column={fold_column!r}")
    values = table[fold_column].astype(str).str.strip()
    missing = table.loc[values == "", "filename"].tolist()
    if missing:
        raise ValueError(f"{len(missing)} recording(s) have no value in the fold column "
                         f"{fold_column!r}, e.g. {missing[:5]}. Received: "
                         f"fold_column={fold_column!r}")
    return sorted(set(values), key=lambda f: (0, float(f), f) if is_number(f) else (1, 0.0, f))


def split_by_fold(table: pd.DataFrame, fold_column: str,
                  valid_fold: int | str | None) -> pd.DataFrame:
    """``valid`` for the recordings whose ``fold_column`` is ``valid_fold``, ``train`` for
    the others (predefined folds, e.g. ESC-50's or a site-wise split).

    Raises:
        ValueError: no ``valid_fold``, or one that is not a fold of the data set (the folds
            are listed).
    """
    folds = folds_of(table, fold_column)
    if valid_fold is None or str(valid_fold).strip() not in folds:
        raise ValueError(
            f"Choose the validation fold among the folds of column {fold_column!r}: {folds} "
            f"(--valid-fold K, data.valid_fold). Received: valid_fold={valid_fold!r}")
    if len(folds) < 2:
        raise ValueError(f"The fold column {fold_column!r} names one fold only ({folds}): "
                         f"nothing would be left to train on. Received: valid_fold={valid_fold!r}")
    is_valid = table[fold_column].astype(str).str.strip() == str(valid_fold).strip()
    return table.assign(split=np.where(is_valid, "valid", "train").astype(object))


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def attach_folds(table: pd.DataFrame, root: Path, fold_column: str) -> pd.DataFrame:
    """Adds ``fold_column`` to a ``folders`` table from the CSV beside the class folders
    (the one CSV in ``root`` with ``filename`` and ``fold_column``; filenames relative to
    ``root``, as ``<class>/<file>``, or bare file names when they are unique).

    Raises:
        ValueError: no such CSV, or several.
    """
    candidates = [path for path in sorted(root.glob("*.csv"))
                  if {"filename", fold_column} <= set(pd.read_csv(path, nrows=0).columns)]
    if len(candidates) != 1:
        raise ValueError(
            f"A folder of class folders takes its folds from one CSV beside them with the "
            f"columns filename and {fold_column!r}; found {len(candidates)} in {root}: "
            f"{[p.name for p in candidates]}. Received: fold_column={fold_column!r}")
    folds = pd.read_csv(candidates[0], keep_default_na=False, dtype=str)
    by_path = dict(zip(folds["filename"].str.strip(), folds[fold_column]))
    by_name = dict(zip(folds["filename"].map(lambda f: Path(f).name), folds[fold_column]))
    return table.assign(**{fold_column: [
        by_path.get(name, by_name.get(Path(name).name, "")) for name in table["filename"]]})

"""The run-folder and export contract: what ``train`` writes and ``evaluate``, ``export`` and
``analyze`` read, named in one place.

A run folder (``runs/<timestamp>/``, ``make_run_dir``) holds ``model.keras``, ``config.yaml``
and ``labels.txt`` (``RUN_FILES``, checked by ``check_run_dir``), ``environment.json``
(``write_environment``), ``metrics.json`` (``write_metrics``) and ``training_log.csv``.
``evaluate`` adds ``thresholds.csv`` (``read_thresholds``).

An export version folder (``exports/<model_name>/<version>/``) holds a SavedModel whose
``serving_default`` signature takes ``waveform`` and returns ``probabilities`` (and
``framewise`` for the ``sed`` head), the TFLite files (``TFLITE_FILES``) and ``assets/``:
``labels.txt``, ``model_config.json`` (``model_contract``) and ``species.csv``.

This module imports neither TensorFlow nor the training code, so a reader of these files
(``analyze`` above all) runs without them.

Example:
    >>> from tfbird import config
    >>> contract = model_contract(config.Config(), ["sp00", "sp01"])
    >>> contract["input"], contract["output"], contract["num_classes"]
    ('waveform', 'probabilities', 2)
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import subprocess
from pathlib import Path

import pandas as pd

from tfbird import config

# --- Run folder ----------------------------------------------------------------------------

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
LABELS_FILE = "labels.txt"  # Also the records' and the export assets' class list.
ENVIRONMENT_FILE = "environment.json"
TRAINING_LOG_FILE = "training_log.csv"
THRESHOLDS_FILE = "thresholds.csv"  # evaluate's per-class thresholds, analyze --thresholds.
RUN_FILES = (MODEL_FILE, CONFIG_FILE, LABELS_FILE)  # What every finished run folder holds.
ENVIRONMENT_PACKAGES = ("tensorflow", "keras", "numpy", "librosa", "soundfile")

# --- Export: signatures, their inputs and outputs, files -----------------------------------

SIGNATURE = "serving_default"
INPUT_NAME = "waveform"
OUTPUT_NAME = "probabilities"
FRAMEWISE_NAME = "framewise"  # A second serving_default output, for models with the sed head.
EMBED_SIGNATURE = "embed"
HEAD_SIGNATURE = "head"  # A Perch export: the head alone, embedding -> probabilities.
EMBEDDING_NAME = "embedding"
LABELS_SIGNATURE = "labels"
LABELS_NAME = "labels"
SAVED_MODEL_FILE = "saved_model.pb"
TFLITE_FILE = "model.tflite"
# ``--quantize`` variants and their file names (``none`` is the float32 model).
TFLITE_FILES = {"none": TFLITE_FILE, "float16": "model_float16.tflite",
                "dynamic": "model_dynamic.tflite", "int8": "model_int8.tflite"}
QUANTIZATIONS = tuple(TFLITE_FILES)
BACKBONE_DIR = "backbone"  # A head's export: the pretrained backbone's own files.
ASSETS_DIR = "assets"
LABELS_ASSET = LABELS_FILE
CONTRACT_ASSET = "model_config.json"
SPECIES_ASSET = "species.csv"  # label,scientific_name,common_name (exporter.write_species)


def model_form(path: str | Path) -> str | None:
    """The form of a model path: ``"tflite"`` (a ``.tflite`` file), ``"saved_model"`` (a
    folder holding ``saved_model.pb``) or ``"run"`` (a run folder holding ``model.keras``),
    checked in that order; ``None`` for anything else. ``analyze`` and ``bench`` both ask
    this, so they accept the same paths."""
    path = Path(path)
    if path.is_file() and path.suffix == ".tflite":
        return "tflite"
    if (path / SAVED_MODEL_FILE).is_file():
        return "saved_model"
    if (path / MODEL_FILE).is_file():
        return "run"
    return None


def write_atomically(path: Path, text: str | bytes) -> None:
    """Writes ``path`` through a temporary file of this process (two processes writing the
    same output never share one), renamed over it: ``path`` is whole or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(text, bytes):
            temporary.write_bytes(text)
        else:
            temporary.write_text(text)
        os.replace(temporary, path)
    except OSError:  # E.g. a full disk: no part left behind, the previous file kept.
        temporary.unlink(missing_ok=True)
        raise


def make_run_dir(runs_dir: str | Path) -> Path:
    """A new folder ``runs_dir/<YYYYmmdd-HHMMSS>`` (with ``-1``, ``-2``, ... when taken)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(runs_dir) / stamp
    suffix = 1
    while run_dir.exists():
        run_dir = Path(runs_dir) / f"{stamp}-{suffix}"
        suffix += 1
    run_dir.mkdir(parents=True)
    return run_dir


def check_run_dir(run_dir: str | Path) -> Path:
    """``run_dir`` as a ``Path`` when it is a run folder that ``train`` finished.

    Raises:
        ValueError: a folder without ``model.keras``, ``config.yaml`` or ``labels.txt``.
    """
    run_dir = Path(run_dir)
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    if missing:
        raise ValueError(
            f"{run_dir} is not a run folder: it has no {', '.join(missing)}. A run folder is "
            f"what train writes (runs/<timestamp> by default): {', '.join(RUN_FILES)}, "
            f"{METRICS_FILE}, {TRAINING_LOG_FILE} and checkpoints/. "
            f"Received: run_dir={str(run_dir)!r}")
    return run_dir


def git_commit(folder: str | Path = Path(__file__).parent) -> str | None:
    """``git rev-parse HEAD`` in ``folder``, or ``None`` without git or a repository."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True,
                                text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def write_environment(path: Path) -> dict:
    """Writes the git commit, the Python version and the package versions as JSON."""
    versions = {}
    for name in ENVIRONMENT_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    environment = {"git_commit": git_commit(), "python": platform.python_version(),
                   "packages": versions}
    path.write_text(json.dumps(environment, indent=2))
    return environment


def write_metrics(scores: dict, path: Path) -> None:
    """JSON with ``null`` for an undefined score (NaN: e.g. no class with positives)."""
    plain = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in scores.items()}
    write_atomically(path, json.dumps(plain, indent=2))


def read_thresholds(path: str | Path) -> dict[str, float]:
    """``thresholds.csv`` as ``{label: threshold}``."""
    table = pd.read_csv(path, dtype={"label": str})
    return dict(zip(table["label"], table["threshold"].astype(float)))


def model_contract(cfg: config.Config, labels: list[str]) -> dict:
    """What a client must know to feed the model: saved as ``assets/model_config.json``."""
    dicts = config.to_dict(cfg)
    return {"input": INPUT_NAME, "output": OUTPUT_NAME,
            "signatures": {SIGNATURE: OUTPUT_NAME, EMBED_SIGNATURE: EMBEDDING_NAME,
                           LABELS_SIGNATURE: LABELS_NAME},
            "window_samples": cfg.audio.window_samples, "num_classes": len(labels),
            "audio": dicts["audio"], "frontend": dicts["frontend"]}

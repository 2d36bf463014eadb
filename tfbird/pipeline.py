"""The stages in order, as ``train.py`` runs them: corpus -> records -> trained run.

``prepare_and_train`` generates the synthetic corpus when the config says the data set is
synthetic and it is not on disk, ingests when the records are missing or were made with other
settings, and trains. Each step prints what it reuses or writes.

Example:
    >>> run_dir, scores = prepare_and_train(config.load("configs/demo.yaml"))
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tfbird import catalog, config, distribute, ingest, records, synth, training
from tfbird.waveform import load_waveform

log = logging.getLogger(__name__)


def prepare_and_train(cfg: config.Config, data_given: bool = False,
                      run_dir: str | Path | None = None, reingest: bool = False,
                      progress: bool = True, overwrite: bool = False) -> tuple[Path, dict]:
    """Synthesises (if needed), ingests (if needed) and trains; returns the run and scores.

    Args:
        cfg: the resolved config.
        data_given: the user named the data set; it is then never synthesised.
        run_dir: run folder; default a new timestamped one.
        reingest: rewrite the records even when they match.
        progress: progress bars.
        overwrite: train again in a ``run_dir`` that holds a finished run (else refused).
    """
    if run_dir is not None and not overwrite:  # Refused at once, not after ingesting.
        training.check_not_finished(Path(run_dir))
    # First: splitting the CPU for MirroredStrategy must precede any TensorFlow work (ingest).
    strategy = distribute.make_strategy(cfg.train)
    data = Path(cfg.data.path)
    if cfg.data.synthetic and not data_given:
        ensure_synthetic_corpus(data, cfg.synth, progress)
    records_dir = Path(cfg.data.records)
    if reingest or not records_match(records_dir, cfg):
        log.info("Ingesting %s into %s", data, records_dir)
        manifest = ingest.ingest(cfg, data, records_dir, progress=progress, resume=not reingest)
    else:
        manifest = records.read_manifest(records_dir)
        log.info("Reusing the records in %s (same data and settings; --reingest rewrites)",
                 records_dir)
    log.info("Records: %s", {s: v["examples"] for s, v in manifest["splits"].items()})
    return training.train(cfg, records_dir, run_dir=run_dir, progress=progress,
                          strategy=strategy, overwrite=overwrite)


def ensure_synthetic_corpus(data: Path, synth_cfg: config.SynthConfig, progress: bool) -> None:
    if (data / catalog.BIRDCLEF_METADATA).is_file():
        log.info("Using the synthetic corpus in %s", data)
        return
    log.info("Synthesising the demo corpus into %s", data)
    synth.synthesize_corpus(data, synth_cfg, progress=progress)


def records_match(records_dir: Path, cfg: config.Config) -> bool:
    """True when ``records_dir`` was ingested from ``cfg.data.path`` with ``cfg``'s settings."""
    try:
        manifest = records.read_manifest(records_dir)
    except ValueError:
        return False
    expected = ingest.build_manifest(cfg, cfg.data.path, manifest["labels"], {}, 0)
    return all(manifest.get(key) == expected.get(key)
               for key in ("schema_version", "source", "audio", "frontend", "feature",
                           "backbone", "split", "selection"))


def audio_files(folder: str | Path) -> list[Path]:
    """Audio files under ``folder`` (recursive, sorted); raises if there are none."""
    files = catalog.audio_files_under(Path(folder))
    if not files:
        raise ValueError(f"No audio files found. Received: folder={str(folder)!r}")
    return files


def check_windows(source: str | Path, audio: config.AudioConfig, count: int = 8) -> np.ndarray:
    """Up to ``count`` windows ``[n, window_samples]`` from recordings under ``source``.

    Takes the first window of each file (zero-padded if the file is shorter), then the
    second full window of each file, and so on, in sorted file order.
    """
    source = Path(source)
    files = [source] if source.is_file() else audio_files(source)
    size = audio.window_samples
    waveforms = [load_waveform(path, audio.sample_rate_hz) for path in files[:count]]
    windows = []
    for offset in range(0, max(len(w) for w in waveforms), size):
        for waveform in waveforms:
            window = waveform[offset:offset + size]
            if offset == 0 or len(window) == size:
                windows.append(np.pad(window, (0, size - len(window))))
    return np.stack(windows[:count]).astype(np.float32)


def record_windows(records_dir: str | Path, split: str, audio: config.AudioConfig,
                   limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The waveforms of the windows a split of the records was made from, with their targets.

    Records hold log-mels, not audio; each also names its recording and start time, so the
    window is cut again from the recording (found through the data set the manifest names).
    Used to calibrate the int8 TFLite model on training windows and to score the TFLite
    variants on validation windows.

    Args:
        records_dir: folder with ``manifest.json`` and the shards.
        split: ``"train"`` or ``"valid"``.
        audio: sample rate and window length of the model.
        limit: at most this many windows, spread evenly over the split; ``None`` takes all.

    Returns:
        ``(waveforms float32 [n, window_samples], targets float32 [n, classes])``.
    """
    import tensorflow as tf

    from tfbird import dataset

    manifest = records.read_manifest(records_dir)
    num_classes = len(manifest["labels"])
    description = {key: value for key, value in records.feature_description(num_classes).items()
                   if key in (records.FILENAME, records.START_S, records.LABELS)}
    shards = dataset.shard_paths(records_dir, manifest, split)
    rows = [tf.io.parse_single_example(serialized, description)
            for serialized in tf.data.TFRecordDataset(shards)]
    if not rows:
        raise ValueError(f"The {split!r} split of the records has no windows. "
                         f"Received: records={str(records_dir)!r}")
    if limit is not None and len(rows) > limit:
        rows = [rows[i] for i in np.linspace(0, len(rows) - 1, limit).round().astype(int)]
    # Read the data set as ingest did: its layout may not be the one auto-detection picks.
    table, _ = catalog.read_catalog(manifest["source"], manifest.get("layout", "auto"),
                                    manifest["selection"]["label_column"])
    path_of = dict(zip(table["filename"], table["path"]))
    size = audio.window_samples
    waveforms, targets, loaded = [], [], {}
    for row in rows:
        filename = row[records.FILENAME].numpy().decode("utf-8")
        if filename not in path_of:
            raise ValueError(f"A record names a recording missing from the data set "
                             f"{manifest['source']}. Received: filename={filename!r}")
        if filename not in loaded:
            loaded = {filename: load_waveform(path_of[filename], audio.sample_rate_hz)}
        start = int(round(float(row[records.START_S]) * audio.sample_rate_hz))
        window = loaded[filename][start:start + size]
        waveforms.append(np.pad(window, (0, size - len(window))))
        targets.append(row[records.LABELS].numpy())
    return np.stack(waveforms).astype(np.float32), np.stack(targets).astype(np.float32)

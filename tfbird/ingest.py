"""Recordings -> log-mel windows -> TFRecord shards and ``manifest.json``.

The work runs as one tf.data pipeline over the file list: decode and resample each file in
parallel (``tf.numpy_function`` around soundfile + soxr, which release the GIL), cut windows,
keep all, the first N or a seeded random N of them (``data.window_selection``), and compute
log-mels in-graph with the same ``LogMelSpectrogram`` layer the exported model carries, while
the previous file's windows are written.

Every input file ends up in exactly one of ``ingested.csv`` (with its window count) or
``failures.csv`` (with its reason): files the catalog refuses (a path outside the data root,
an unknown label) and files that cannot be decoded (missing, empty, unreadable, no audio,
all-NaN). A failure never stops the run; more failures than ``data.max_failures`` make it
raise ``TooManyFailures`` after everything is written.

Targets are per window: the recording's labels, or, for Raven tables, the labels of the boxes
each window overlaps (``catalog.window_targets``).

**Shards, resuming, workers.** Files of each split are grouped ``data.files_per_shard`` to a
shard in catalog order. Each shard is written atomically and then gets a small sidecar
``<shard>.json`` (its counts, ingested files and failures, and the fingerprint of the catalog
and settings). A shard whose sidecar has the current fingerprint is finished: rerunning the
same command skips it, so an interrupted run resumes. Sidecars and the manifest with another
fingerprint are stale and are deleted with their shards, as are shards outside the plan (another
shard count). ``workers=K, worker_index=I`` writes
only the shards at positions ``I, I + K, ...`` of the plan; whichever run finds all shards
finished writes ``manifest.json``, ``labels.txt``, ``failures.csv`` and ``ingested.csv``
(rerunning without workers does the same, writing any shard still missing).

Example:
    >>> manifest = ingest(cfg, data="data/demo", out_dir="records/demo")
    >>> manifest["splits"]["train"]["examples"]
    612
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
from tqdm.auto import tqdm

from tfbird import catalog, config, records
from tfbird import labels as labels_lib
from tfbird.frontend import build_frontend
from tfbird.waveform import cut_windows, decode_for_pipeline, failure_reason

MANIFEST = "manifest.json"
FAILURES = "failures.csv"
INGESTED = "ingested.csv"
LABELS_FILE = "labels.txt"
SIDECAR_SUFFIX = ".json"
SPLITS = ("train", "valid")
FAILURE_COLUMNS = ["path", "filename", "reason", "detail"]
INGESTED_COLUMNS = ["path", "filename", "split", "windows"]


class TooManyFailures(ValueError):
    """More files failed than ``data.max_failures`` allows; ``.manifest`` has the counts."""

    def __init__(self, message: str, manifest: dict):
        super().__init__(message)
        self.manifest = manifest


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """One shard to write: its split, file name and catalog rows."""

    split: str
    name: str
    rows: pd.DataFrame


def ingest(cfg: config.Config, data: str | Path, out_dir: str | Path, progress: bool = True,
           resume: bool = True, workers: int = 1, worker_index: int = 0) -> dict:
    """Ingests a data set into sharded TFRecords under ``out_dir``.

    Args:
        cfg: audio, front-end and data settings (``data.layout``, ``data.label_column``,
            ``data.min_overlap_s``, ``data.window_selection``, ...).
        data: a data set folder or CSV (see ``tfbird.catalog``).
        out_dir: output folder; receives the shards and their sidecars, ``manifest.json``,
            ``labels.txt``, ``failures.csv`` and ``ingested.csv``.
        progress: show a progress bar.
        resume: skip shards a previous run with the same catalog and settings finished;
            ``False`` rewrites this run's shards.
        workers: number of processes sharing the work (``--workers``).
        worker_index: which of them this is, ``0 <= worker_index < workers``.

    Returns:
        The manifest (also written to ``out_dir/manifest.json``), with ``complete: True``;
        or, when other workers' shards are still missing, a summary of this run with
        ``complete: False`` (nothing but shards and sidecars written yet).

    Raises:
        ValueError: unreadable data set or bad worker numbers.
        TooManyFailures: more failed files than ``data.max_failures`` (after writing).
    """
    started = time.perf_counter()
    if not (workers >= 1 and 0 <= worker_index < workers):
        raise ValueError(f"Need workers >= 1 and 0 <= worker_index < workers. "
                         f"Received: workers={workers}, worker_index={worker_index}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layout = cfg.data.layout if cfg.data.layout != "auto" else catalog.detect_layout(data)
    table, labels = catalog.read_catalog(data, layout, cfg.data.label_column)
    refused = table[table["error"] != ""]
    recordings = catalog.assign_split(table[table["error"] == ""].reset_index(drop=True),
                                      cfg.data.validation_fraction, cfg.data.seed)
    plan = plan_shards(recordings, cfg.data.files_per_shard)
    fingerprint = plan_fingerprint(cfg, layout, labels, recordings)
    remove_stale_outputs(out_dir, fingerprint, {shard.name for shard in plan})

    mine = plan[worker_index::workers]
    todo = [shard for shard in mine
            if not (resume and read_sidecar(out_dir, shard.name, fingerprint))]
    write_shards(cfg, todo, labels, out_dir, fingerprint, progress)

    sidecars = {shard.name: read_sidecar(out_dir, shard.name, fingerprint) for shard in plan}
    if not all(sidecars.values()):
        done = sum(1 for s in sidecars.values() if s)
        return {"complete": False, "shards_done": done, "shards_total": len(plan),
                "shards_written": len(todo), "worker_index": worker_index, "workers": workers,
                "seconds": round(time.perf_counter() - started, 1)}

    failures = refused_failures(refused) + [f for s in sidecars.values() for f in s["failures"]]
    ingested = [dict(i, split=s["split"]) for s in sidecars.values() for i in s["ingested"]]
    splits = {split: split_entry([sidecars[s.name] for s in plan if s.split == split],
                                 int((recordings["split"] == split).sum()), labels)
              for split in SPLITS}
    manifest = build_manifest(cfg, data, labels, splits, len(failures))
    manifest.update({
        "complete": True,
        "layout": layout,
        "fingerprint": fingerprint,
        "inputs": len(table),
        "ingested": {"count": len(ingested), "windows": sum(i["windows"] for i in ingested),
                     "file": INGESTED},
        "shards_written": len(todo),
        "seconds": round(time.perf_counter() - started, 1),
    })
    manifest["failures"]["by_reason"] = count_reasons(failures)
    labels_lib.write_labels(labels, out_dir / LABELS_FILE)
    write_csv_atomic(pd.DataFrame(failures, columns=FAILURE_COLUMNS), out_dir / FAILURES)
    write_csv_atomic(pd.DataFrame(ingested, columns=INGESTED_COLUMNS), out_dir / INGESTED)
    write_json_atomic(manifest, out_dir / MANIFEST)
    check_failures(len(failures), len(table), cfg.data.max_failures, out_dir / FAILURES,
                   manifest)
    return manifest


def plan_shards(recordings: pd.DataFrame, files_per_shard: int) -> list[ShardPlan]:
    """The shards of every split, in order: ``files_per_shard`` recordings each."""
    plan = []
    for split in SPLITS:
        rows = recordings[recordings["split"] == split]
        num_shards = max(1, -(-len(rows) // files_per_shard))
        for index in range(num_shards):
            plan.append(ShardPlan(split, records.shard_name(split, index, num_shards),
                                  rows.iloc[index * files_per_shard:(index + 1) * files_per_shard]))
    return plan


def plan_fingerprint(cfg: config.Config, layout: str, labels: list[str],
                     recordings: pd.DataFrame) -> str:
    """SHA-256 of everything that decides the shards' content: settings, labels and files."""
    settings = build_manifest(cfg, "", labels, {}, 0)
    content = {
        "settings": {k: settings[k] for k in ("schema_version", "audio", "frontend", "feature",
                                             "labels", "split", "selection")},
        "layout": layout,
        "files_per_shard": cfg.data.files_per_shard,
        "files": [[r.path, r.filename, r.split, r.primary_label, list(r.secondary_labels),
                   r.boxes] for r in recordings.itertuples()],
    }
    return hashlib.sha256(json.dumps(content, default=str).encode()).hexdigest()


def remove_stale_outputs(out_dir: Path, fingerprint: str, planned: set[str]) -> None:
    """Deletes what another catalog or other settings left in ``out_dir``: sidecars of another
    fingerprint with their shards, shards (finished or temporary) outside the ``planned``
    names, and a manifest of another fingerprint."""
    for sidecar in out_dir.glob("*.tfrecord" + SIDECAR_SUFFIX):
        if load_json(sidecar).get("fingerprint") != fingerprint:
            (out_dir / sidecar.name[: -len(SIDECAR_SUFFIX)]).unlink(missing_ok=True)
            sidecar.unlink(missing_ok=True)
    for shard in [*out_dir.glob("*.tfrecord"), *out_dir.glob("*.tfrecord.tmp")]:
        if shard.name.removesuffix(".tmp") not in planned:
            shard.unlink(missing_ok=True)
    manifest = out_dir / MANIFEST
    if manifest.is_file() and load_json(manifest).get("fingerprint") != fingerprint:
        manifest.unlink(missing_ok=True)


def read_sidecar(out_dir: Path, shard_name: str, fingerprint: str) -> dict | None:
    """The sidecar of a finished shard (shard on disk, same fingerprint), else ``None``."""
    sidecar = load_json(out_dir / (shard_name + SIDECAR_SUFFIX))
    if sidecar.get("fingerprint") == fingerprint and (out_dir / shard_name).is_file():
        return sidecar
    return None


def write_shards(cfg: config.Config, shards: list[ShardPlan], labels: list[str], out_dir: Path,
                 fingerprint: str, progress: bool) -> None:
    """Writes each shard, then its sidecar; both atomically, the shard first."""
    rows = pd.concat([s.rows for s in shards]) if shards else pd.DataFrame(
        columns=catalog.CATALOG_COLUMNS)
    results = iterate_windows(rows["path"].tolist(), cfg, rows["filename"].tolist())
    window_s = cfg.audio.window_s
    with tqdm(total=len(rows), unit="file", desc="ingest", disable=not progress) as bar:
        for shard in shards:
            ingested, failures = [], []
            class_counts = np.zeros(len(labels), np.int64)
            with records.ShardWriter(out_dir / shard.name) as writer:
                for row in shard.rows.itertuples():
                    logmels, start_s, error = next(results)
                    bar.update(1)
                    if error:
                        failures.append({"path": row.path, "filename": row.filename,
                                         "reason": failure_reason(error), "detail": error})
                        continue
                    recording = catalog.recording_target(row.primary_label,
                                                         row.secondary_labels, labels)
                    targets = catalog.window_targets(start_s, window_s, labels, recording,
                                                     row.boxes, cfg.data.min_overlap_s)
                    for logmel, start, target in zip(logmels, start_s, targets):
                        writer.write(records.to_example(logmel, target, row.filename,
                                                        float(start)))
                    class_counts += (targets > 0).sum(axis=0)
                    ingested.append({"path": row.path, "filename": row.filename,
                                     "windows": len(logmels)})
            write_json_atomic({
                "fingerprint": fingerprint, "file": shard.name, "split": shard.split,
                "examples": writer.num_examples, "files": len(shard.rows),
                "class_counts": class_counts.tolist(), "ingested": ingested,
                "failures": failures,
            }, out_dir / (shard.name + SIDECAR_SUFFIX))


def split_entry(sidecars: list[dict], num_recordings: int, labels: list[str]) -> dict:
    """A split's manifest entry from its shards' sidecars."""
    class_counts = np.sum([s["class_counts"] for s in sidecars], axis=0, dtype=np.int64)
    return {
        "shards": [{"file": s["file"], "examples": s["examples"], "files": s["files"]}
                   for s in sidecars],
        "recordings": num_recordings,
        "examples": sum(s["examples"] for s in sidecars),
        "class_counts": dict(zip(labels, np.broadcast_to(class_counts, len(labels)).tolist())),
    }


def refused_failures(refused: pd.DataFrame) -> list[dict]:
    """``failures.csv`` rows for the files the catalog refused."""
    return [{"path": r.path, "filename": r.filename, "reason": failure_reason(r.error),
             "detail": r.error} for r in refused.itertuples()]


def count_reasons(failures: list[dict]) -> dict[str, int]:
    """``{reason: number of failed files}``, sorted by reason."""
    reasons = pd.Series([f["reason"] for f in failures], dtype=object)
    return {str(k): int(v) for k, v in sorted(reasons.value_counts().items())}


def file_seed(seed: int, name: str) -> list[int]:
    """The stateless seed of one recording's random window choice: ``[seed, crc32(name)]``."""
    return [int(seed), zlib.crc32(name.encode("utf-8"))]


def select_windows(windows: tf.Tensor, start_s: tf.Tensor, data: config.DataConfig,
                   seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Keeps all windows, the first ``data.windows_per_recording``, or as many drawn at random
    without replacement (stateless, from ``seed``), in time order (graph code).

    Example:
        >>> select_windows(windows, start_s, DataConfig(window_selection="first"), [0, 0])
    """
    if data.window_selection == "all":
        return windows, start_s
    num_windows = tf.shape(windows)[0]
    count = tf.minimum(num_windows, data.windows_per_recording)
    if data.window_selection == "first":
        index = tf.range(count)
    else:
        shuffled = tf.random.experimental.stateless_shuffle(tf.range(num_windows), seed=seed)
        index = tf.sort(shuffled[:count])
    return tf.gather(windows, index), tf.gather(start_s, index)


def window_dataset(paths: list[str], cfg: config.Config,
                   names: list[str] | None = None) -> tf.data.Dataset:
    """tf.data pipeline: path -> ``(logmel [windows, frames, mels] float16, start_s, error)``.

    Elements come in the order of ``paths`` (``deterministic=True``) while files are decoded
    and transformed in parallel. A file that fails gives one window and its error message.
    ``names`` (default ``paths``) seed the random window choice of each file.
    """
    frontend = build_frontend(cfg.audio, cfg.frontend)
    sample_rate_hz = cfg.audio.sample_rate_hz
    seeds = [file_seed(cfg.data.seed, name) for name in (names or paths)]

    def decode(path, seed):
        waveform, error = tf.numpy_function(
            decode_for_pipeline, [path, sample_rate_hz], [tf.float32, tf.string],
            stateful=False)
        waveform.set_shape([None])
        error.set_shape([])
        return waveform, error, seed

    def to_logmels(waveform, error, seed):
        windows, start_s = cut_windows(waveform, cfg.audio)
        windows, start_s = select_windows(windows, start_s, cfg.data, seed)
        logmels = tf.cast(frontend(windows), tf.float16)
        return logmels, start_s, error

    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant(paths, tf.string), tf.constant(np.reshape(seeds, [-1, 2]), tf.int64)))
    dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.map(to_logmels, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def iterate_windows(paths: list[str], cfg: config.Config, names: list[str] | None = None):
    """Yields ``(logmels, start_s, error)`` per path as numpy values and a ``str`` error."""
    if not paths:
        return
    for logmels, start_s, error in window_dataset(paths, cfg, names).as_numpy_iterator():
        yield logmels, start_s, error.decode("utf-8")


def build_manifest(cfg: config.Config, data, labels: list[str], splits: dict,
                   num_failures: int) -> dict:
    frames = cfg.frontend.num_frames(cfg.audio.window_samples)
    return {
        "schema_version": records.SCHEMA_VERSION,
        "source": str(data),
        "audio": config.to_dict(cfg)["audio"],
        "frontend": config.to_dict(cfg)["frontend"],
        "feature": {"name": records.LOGMEL, "dtype": "float16",
                    "shape": [frames, cfg.frontend.n_mels]},
        "labels": labels,
        "split": {"validation_fraction": cfg.data.validation_fraction, "seed": cfg.data.seed,
                  "by": "recording, stratified by primary label"},
        "selection": {"layout": cfg.data.layout, "label_column": cfg.data.label_column,
                      "min_overlap_s": cfg.data.min_overlap_s,
                      "window_selection": cfg.data.window_selection,
                      "windows_per_recording": cfg.data.windows_per_recording},
        "splits": splits,
        "failures": {"count": num_failures, "file": FAILURES},
    }


def check_failures(num_failed: int, num_files: int, max_failures: float, report: Path,
                   manifest: dict | None = None) -> None:
    """Raises when failures exceed ``max_failures`` (a count, or a fraction if below 1)."""
    limit = max_failures * num_files if max_failures < 1 else max_failures
    if num_failed > limit:
        raise TooManyFailures(
            f"{num_failed} of {num_files} files failed, more than data.max_failures allows; "
            f"see {report}. Received: max_failures={max_failures}", manifest or {})


def read_manifest(records_dir: str | Path) -> dict:
    path = Path(records_dir) / MANIFEST
    if not path.is_file():
        raise ValueError(f"No {MANIFEST} in the records folder; run `tfbird ingest` first "
                         f"(with --workers, every worker must finish). "
                         f"Received: records={str(records_dir)!r}")
    return json.loads(path.read_text())


def load_json(path: Path) -> dict:
    """The JSON object in ``path``, or ``{}`` when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def write_json_atomic(value: dict, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(value, indent=2, default=str))
    os.replace(temporary, path)


def write_csv_atomic(table: pd.DataFrame, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    table.to_csv(temporary, index=False)
    os.replace(temporary, path)

"""Recordings -> log-mel windows -> TFRecord shards and ``manifest.json``.

The work runs as one tf.data pipeline over the file list: worker processes decode and
resample the files and cut windows (``decode_workers``, soundfile + soxr, one process per
core), in file order; the pipeline keeps all windows, the first N or a seeded random N of them
(``data.window_selection``), and computes log-mels in-graph with the same
``LogMelSpectrogram`` layer the exported model carries, while the previous file's windows are
written.

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
(rerunning without workers does the same, writing any shard still missing): the job-array
option, with no scheduler. ``dask_local=N`` or ``dask_scheduler="tcp://host:8786"`` instead
sends each unfinished shard as one task to Dask workers (the engine ``analyze`` uses), and
this process merges the manifest at the end. A shard holds its recordings in catalog order,
so it is the same whichever run or worker writes it: every way gives the single-process
output.

Example:
    >>> manifest = ingest(cfg, data="data/demo", out_dir="records/demo")
    >>> manifest["splits"]["train"]["examples"]
    612
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import hashlib
import json
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
from tqdm.auto import tqdm

from tfbird import catalog, config, decode_workers, distribute, records
from tfbird import labels as labels_lib
from tfbird.artifacts import LABELS_FILE, write_atomically
from tfbird.backbones import load_backbone
from tfbird.records import MANIFEST
from tfbird.records import read_manifest  # noqa: F401  (kept as ingest.read_manifest)
from tfbird.frontend import build_frontend
from tfbird.waveform import failure_reason

FAILURES = "failures.csv"
INGESTED = "ingested.csv"
SIDECAR_SUFFIX = ".json"
SPLITS = ("train", "valid")
FAILURE_COLUMNS = ["path", "filename", "reason", "detail"]
INGESTED_COLUMNS = ["path", "filename", "split", "windows"]
SPILL_SUFFIX = ".spill.tmp"  # A long recording's examples before it is known good.
PENDING_MEMORY_BYTES = 64 * 2**20  # A recording's examples held in memory before spilling.
# glibc's mallopt parameters (malloc.h) and the largest values its adaptive rule reaches.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
ADAPTIVE_MMAP_THRESHOLD_MAX_BYTES = 32 * 2**20


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
           resume: bool = True, workers: int = 1, worker_index: int = 0,
           dask_scheduler: str | None = None, dask_local: int = 0) -> dict:
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
        dask_scheduler: address of a running Dask scheduler (``tcp://host:8786``) whose
            workers write the shards (``write_shards_on_dask``); ``None``: not used.
        dask_local: start a local Dask cluster of this many worker processes instead; 0: not
            used. Neither goes with ``workers > 1``.

    Returns:
        The manifest (also written to ``out_dir/manifest.json``), with ``complete: True``;
        or, when other workers' shards are still missing, a summary of this run with
        ``complete: False`` (nothing but shards and sidecars written yet).

    Raises:
        ValueError: unreadable data set or bad worker numbers.
        TooManyFailures: more failed files than ``data.max_failures`` (after writing).
    """
    started = time.perf_counter()
    check_work_split(workers, worker_index, dask_scheduler, dask_local)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layout = cfg.data.layout if cfg.data.layout != "auto" else catalog.detect_layout(data)
    table, labels = catalog.read_catalog(data, layout, cfg.data.label_column,
                                         cfg.data.ignore_labels, cfg.data.fold_column)
    refused = table[table["error"] != ""]
    recordings = catalog.assign_split(table[table["error"] == ""].reset_index(drop=True),
                                      cfg.data.validation_fraction, cfg.data.seed,
                                      cfg.data.fold_column, cfg.data.valid_fold)
    plan = plan_shards(recordings, cfg.data.files_per_shard)
    fingerprint = plan_fingerprint(cfg, layout, labels, recordings)
    remove_stale_outputs(out_dir, fingerprint, {shard.name for shard in plan})

    mine = plan[worker_index::workers]
    todo = [shard for shard in mine
            if not (resume and read_sidecar(out_dir, shard.name, fingerprint))]
    if dask_scheduler or dask_local:
        write_shards_on_dask(cfg, todo, labels, out_dir, fingerprint, progress, dask_scheduler,
                             dask_local)
    else:
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
                                 sum(i["split"] == split for i in ingested), labels)
              for split in SPLITS}  # Recordings ingested: a failed file counts in no split.
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


def check_work_split(workers: int, worker_index: int, dask_scheduler: str | None,
                     dask_local: int) -> None:
    """Raises ValueError on bad worker numbers, or on more than one way to share the work."""
    if not (workers >= 1 and 0 <= worker_index < workers):
        raise ValueError(f"Need workers >= 1 and 0 <= worker_index < workers. "
                         f"Received: workers={workers}, worker_index={worker_index}")
    if dask_local < 0:
        raise ValueError(f"Need dask_local >= 0 (0: no local Dask cluster). "
                         f"Received: dask_local={dask_local}")
    given = {"workers": workers, "dask_scheduler": dask_scheduler, "dask_local": dask_local}
    if sum(bool(v) for v in (workers > 1, dask_scheduler, dask_local)) > 1:
        raise ValueError(f"Give one of workers > 1 (a job array), dask_scheduler and "
                         f"dask_local. Received: {given}")


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
                                             "backbone", "labels", "split", "selection")
                     if k in settings},
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
    for shard in [*out_dir.glob("*.tfrecord"), *out_dir.glob("*.tfrecord.tmp"),
                  *out_dir.glob("*.tfrecord" + SPILL_SUFFIX)]:
        if shard.name.removesuffix(SPILL_SUFFIX).removesuffix(".tmp") not in planned:
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
    """Writes each shard, then its sidecar; both atomically, the shard first.

    Recordings arrive one after the other in plan order (``window_dataset``), block by block.
    A recording's windows reach its shard only once all of it decoded: until then they are
    held by ``records.PendingExamples`` (in memory, or for a long recording in a spill file
    beside the shard) and dropped if it fails mid-stream. So a shard holds its recordings'
    records in catalog order, each recording's consecutive, and is the same whichever run or
    worker writes it. A shard is closed, and its sidecar written, when its last recording is
    done.
    """
    rows = pd.concat([s.rows for s in shards]) if shards else pd.DataFrame(
        columns=catalog.CATALOG_COLUMNS)
    shard_of = np.repeat(np.arange(len(shards)), [len(s.rows) for s in shards])
    state = ShardsInProgress(cfg, shards, labels, out_dir, fingerprint)
    try:
        for index in [i for i, count in enumerate(state.remaining) if count == 0]:
            state.finish_shard(index)
        blocks = iterate_windows(rows["path"].tolist(), cfg, rows["filename"].tolist())
        # disable=None: tqdm stays quiet when stderr is not a terminal (logs, cluster jobs).
        with tqdm(total=len(rows), unit="file", desc="ingest",
                  disable=None if progress else True) as bar:
            for position, features, start_s, block_audio_s, error, last in blocks:
                row, index = rows.iloc[position], shard_of[position]
                state.add_block(position, index, row, features, start_s, block_audio_s)
                if not last:
                    continue
                state.finish_recording(position, index, row, error)
                bar.set_postfix(audio_h=f"{state.audio_s / 3600:.2f}", refresh=False,
                                windows_per_s=state.windows_per_s())
                bar.update(1)
    except BaseException:
        state.abort()
        raise


class ShardsInProgress:
    """What ``write_shards`` holds while it writes: each shard's open writer, its result so
    far and its recordings still to finish, and each unfinished recording's examples.

    Args:
        cfg: the ingest settings (window length, label overlap, store).
        shards: the shards being written, in plan order.
        labels: the class list.
        out_dir: the records folder.
        fingerprint: the plan's fingerprint, written into each sidecar.
    """

    def __init__(self, cfg: config.Config, shards: list[ShardPlan], labels: list[str],
                 out_dir: Path, fingerprint: str):
        self.cfg, self.shards, self.labels = cfg, shards, labels
        self.out_dir, self.fingerprint = out_dir, fingerprint
        self.remaining = [len(s.rows) for s in shards]
        self.done = [{"ingested": [], "failures": [],
                      "class_counts": np.zeros(len(labels), np.int64)} for _ in shards]
        self.writers: dict[int, tuple[contextlib.ExitStack, records.ShardWriter]] = {}
        self.recordings: dict[int, tuple[records.PendingExamples, np.ndarray]] = {}
        self.started, self.audio_s, self.num_windows = time.perf_counter(), 0.0, 0

    def writer_of(self, index: int) -> records.ShardWriter:
        """Shard ``index``'s writer, opened on first use."""
        if index not in self.writers:
            stack = contextlib.ExitStack()
            self.writers[index] = stack, stack.enter_context(
                records.ShardWriter(self.out_dir / self.shards[index].name))
        return self.writers[index][1]

    def finish_shard(self, index: int) -> None:
        """Closes shard ``index`` (renamed into place), then writes its sidecar."""
        shard, result = self.shards[index], self.done[index]
        self.writer_of(index)  # A shard without ingested recordings is written empty.
        stack, writer = self.writers.pop(index)
        stack.close()  # Renames the shard into place.
        order = {path: k for k, path in enumerate(shard.rows["path"])}
        write_json_atomic({
            "fingerprint": self.fingerprint, "file": shard.name, "split": shard.split,
            "examples": writer.num_examples, "files": len(shard.rows),
            "class_counts": result["class_counts"].tolist(),
            "ingested": sorted(result["ingested"], key=lambda i: order[i["path"]]),
            "failures": sorted(result["failures"], key=lambda f: order[f["path"]]),
        }, self.out_dir / (shard.name + SIDECAR_SUFFIX))

    def add_block(self, position: int, index: int, row, features: np.ndarray,
                  start_s: np.ndarray, block_audio_s: float) -> None:
        """Holds one block's windows of recording ``position`` (of shard ``index``) as
        pending examples, with their targets."""
        if position not in self.recordings:
            spill = self.out_dir / f"{self.shards[index].name}.{position}{SPILL_SUFFIX}"
            self.recordings[position] = (records.PendingExamples(spill, PENDING_MEMORY_BYTES),
                                         np.zeros(len(self.labels), np.int64))
        pending, counts = self.recordings[position]
        self.audio_s += block_audio_s
        labels, cfg = self.labels, self.cfg
        recording = catalog.recording_target(row.primary_label, row.secondary_labels, labels)
        secondary = catalog.secondary_target(row.primary_label, row.secondary_labels, labels,
                                             row.boxes)
        targets = catalog.window_targets(start_s, cfg.audio.window_s, labels, recording,
                                         row.boxes, cfg.data.min_overlap_s)
        for feature, start, target in zip(features, start_s, targets):
            pending.add(records.to_example(feature, target, row.filename, float(start),
                                           cfg.data.store, secondary))
        counts += (targets > 0).sum(axis=0, dtype=np.int64)

    def finish_recording(self, position: int, index: int, row, error: str | None) -> None:
        """Recording ``position`` is done: its examples go into its shard (or, after an
        ``error``, are dropped and the failure noted); its shard is finished when it was
        the shard's last recording."""
        pending, counts = self.recordings.pop(position)
        result = self.done[index]
        if error:
            pending.discard()
            result["failures"].append({"path": row.path, "filename": row.filename,
                                       "reason": failure_reason(error), "detail": error})
        else:
            pending.commit(self.writer_of(index))
            result["class_counts"] += counts
            result["ingested"].append({"path": row.path, "filename": row.filename,
                                       "windows": pending.num_examples})
            self.num_windows += pending.num_examples
        self.remaining[index] -= 1
        if self.remaining[index] == 0:
            self.finish_shard(index)

    def windows_per_s(self) -> int:
        """Windows written per second since the start (the progress bar's rate)."""
        return round(self.num_windows / (time.perf_counter() - self.started))

    def abort(self) -> None:
        """After an exception (call it in the ``except`` block): deletes the unfinished
        shards' temporary files and the pending examples."""
        for stack, _ in self.writers.values():
            stack.__exit__(*sys.exc_info())
        for pending, _ in self.recordings.values():
            pending.discard()


def write_shards_on_dask(cfg: config.Config, shards: list[ShardPlan], labels: list[str],
                         out_dir: Path, fingerprint: str, progress: bool,
                         scheduler: str | None, local_workers: int) -> None:
    """Writes each shard, and then its sidecar, as one Dask task (``write_shard``).

    ``scheduler`` connects to a running scheduler, whose workers must see the recordings and
    ``out_dir`` at the same paths (a shared file system) and import this version of tfbird;
    ``local_workers`` starts a ``LocalCluster`` of that many single-threaded worker processes
    here, each with its share of the cores (``distribute.dask_client``). Every shard is written
    whole by one worker, so the output is the single-process one; the progress bar counts the
    files of the shards done. A task's error is raised here and the other tasks are dropped;
    the shards already written keep their sidecars, so a rerun resumes.
    """
    if not shards:  # Everything was written before: no cluster to start.
        return
    out_dir = out_dir.absolute()  # As the workers must see it, whatever their folder.
    token = hashlib.sha256(f"{out_dir}\n{fingerprint}".encode()).hexdigest()[:12]
    with distribute.dask_client(scheduler, local_workers) as client, tqdm(
            total=sum(len(s.rows) for s in shards), unit="file", desc="ingest",
            disable=None if progress else True) as bar:
        futures = {client.submit(write_shard, cfg, shard, labels, out_dir, fingerprint,
                                 key=f"ingest-{shard.name}-{token}"): shard for shard in shards}
        for done, future in enumerate(distribute.import_distributed().as_completed(futures), 1):
            future.result()
            bar.set_postfix(shards=f"{done}/{len(shards)}", refresh=False)
            bar.update(len(futures[future].rows))


def write_shard(cfg: config.Config, shard: ShardPlan, labels: list[str], out_dir: Path,
                fingerprint: str) -> str:
    """One Dask task of ``write_shards_on_dask``: writes ``shard`` and its sidecar on a
    worker (``write_shards``, no progress bar). Returns the shard's name."""
    # A Dask worker is one process with its share of the cores, beside the cluster's other
    # workers: it decodes in itself rather than start a decode worker per core of its own.
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, decode_workers=0))
    write_shards(cfg, [shard], labels, out_dir, fingerprint, progress=False)
    return shard.name


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


def random_window_index(num_windows: tf.Tensor, count: int, seed: tf.Tensor) -> tf.Tensor:
    """Indices of ``min(count, num_windows)`` windows drawn without replacement (stateless,
    from ``seed``), in time order (graph code): ``data.window_selection: random``.

    Example:
        >>> random_window_index(10, 3, [0, 7]).numpy().tolist()
        [1, 3, 9]
    """
    num_windows = tf.cast(num_windows, tf.int64)
    shuffled = tf.random.experimental.stateless_shuffle(tf.range(num_windows), seed=seed)
    return tf.sort(shuffled[:tf.minimum(num_windows, count)])


def window_dataset(paths: list[str], cfg: config.Config, names: list[str] | None = None
                   ) -> tf.data.Dataset:
    """tf.data pipeline: paths -> blocks ``(position, feature, start_s, audio_s, error, last)``.

    ``position`` is the recording's index in ``paths``. ``feature`` is ``[windows, frames,
    mels]`` float16 log-mels, or with ``data.store: pcm`` ``[windows, window_samples]`` int16
    PCM. Each recording gives one or more blocks (one per ``data.decode_block_s`` of audio);
    ``last`` marks its final block. A recording that fails ends with a block without windows
    whose ``error`` is the message (blocks before it, if any, must be dropped by the reader).

    Recordings are decoded in ``data.decode_workers`` worker processes
    (``decode_workers.ordered_elements``) and arrive one after the other in the order of
    ``paths``, whatever the number of workers; the log-mels are computed in-graph, several
    blocks at once, while the next recordings decode. ``names`` (default ``paths``) seed the
    random window choice of each file.
    """
    restore_malloc_thresholds()
    frontend = build_frontend(cfg.audio, cfg.frontend)
    seeds = tf.constant(np.reshape([file_seed(cfg.data.seed, name) for name in (names or paths)],
                                   [-1, 2]), tf.int64)
    signature = (tf.TensorSpec([], tf.int64),
                 tf.TensorSpec([None, cfg.audio.window_samples], tf.float32),
                 tf.TensorSpec([None], tf.float32), tf.TensorSpec([None], tf.int64),
                 tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.float32),
                 tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.bool))
    processes = decode_workers.resolve_processes(cfg.data.decode_workers)

    def to_features(position, windows, start_s, index, num_windows, audio_s, error, last):
        if cfg.data.window_selection == "random":
            # A failed recording's last element has num_windows -1 and no windows.
            chosen = random_window_index(tf.maximum(num_windows, 0),
                                         cfg.data.windows_per_recording, seeds[position])
            keep = tf.reduce_any(index[:, None] == chosen[None, :], axis=1)
            windows, start_s = tf.boolean_mask(windows, keep), tf.boolean_mask(start_s, keep)
        if cfg.data.store == records.PCM:
            feature = records.to_pcm16(windows)
        elif cfg.data.store == records.EMBEDDING:
            feature = windows  # Embedded by iterate_windows: the backbone is not graph code.
        else:
            feature = tf.cast(frontend(windows), tf.float16)
        return position, feature, start_s, audio_s, error, last

    elements = tf.data.Dataset.from_generator(
        lambda: decode_workers.ordered_elements(paths, cfg, processes),
        output_signature=signature)
    return elements.map(to_features, num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=True).prefetch(tf.data.AUTOTUNE)


def restore_malloc_thresholds() -> bool:
    """Undoes the allocator setting TensorFlow makes when a generator dataset first runs.

    The first ``tf.data.Dataset.from_generator`` of a process sets glibc's
    ``M_TRIM_THRESHOLD`` to 128 KB (the log's "Memory patch applied"), once. Setting it turns
    off glibc's adaptive mmap threshold, so from then on every allocation over 128 KB is a
    fresh ``mmap`` whose pages the kernel faults in and zeroes. Training in the same process
    as ingest (``train.py`` on new records, ``tfbird cv``) then spent 40 % of its CPU time in
    the kernel and took 1.7x as long per step. This runs an empty generator dataset, so the
    patch has happened, then sets the thresholds the adaptive rule would reach (32 MB mmap,
    64 MB trim). Returns False where there is no glibc (nothing to undo).
    """
    tf.data.Dataset.from_generator(lambda: iter(()), output_signature=tf.TensorSpec(
        [], tf.int32)).reduce(0, lambda total, _: total)
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name) if libc_name else None
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, ADAPTIVE_MMAP_THRESHOLD_MAX_BYTES)
                and libc.mallopt(M_TRIM_THRESHOLD, 2 * ADAPTIVE_MMAP_THRESHOLD_MAX_BYTES))


def iterate_windows(paths: list[str], cfg: config.Config, names: list[str] | None = None
                    ) -> Iterator[tuple[int, np.ndarray, np.ndarray, float, str, bool]]:
    """Yields the blocks of ``window_dataset`` as numpy values, with a ``str`` error. With
    ``data.store: embedding`` the windows are embedded here (float16 ``[windows, dim]``) by
    ``model.backbone``, while tf.data decodes the next recordings."""
    if not paths:
        return
    embed = (load_backbone(cfg.model).embed if cfg.data.store == records.EMBEDDING
             else None)
    for position, feature, start_s, audio_s, error, last in window_dataset(
            paths, cfg, names).as_numpy_iterator():
        if embed is not None:
            feature = embed(feature).astype(np.float16)
        yield int(position), feature, start_s, float(audio_s), error.decode("utf-8"), bool(last)


def build_manifest(cfg: config.Config, data, labels: list[str], splits: dict,
                   num_failures: int) -> dict:
    logmel_shape = [cfg.frontend.num_frames(cfg.audio.window_samples), cfg.frontend.n_mels]
    feature = {"name": records.LOGMEL, "dtype": "float16", "shape": logmel_shape}
    if cfg.data.store == records.PCM:
        feature = {"name": records.PCM, "dtype": "int16", "shape": [cfg.audio.window_samples]}
    backbone = {}
    if cfg.data.store == records.EMBEDDING:
        backbone = {"backbone": load_backbone(cfg.model).describe()}
        feature = {"name": records.EMBEDDING, "dtype": "float16",
                   "shape": [backbone["backbone"]["embedding_dim"]]}
    return {
        "schema_version": records.SCHEMA_VERSION,
        "source": str(data),
        "audio": config.to_dict(cfg)["audio"],
        "frontend": config.to_dict(cfg)["frontend"],
        "store": cfg.data.store,
        "feature": feature,
        **backbone,
        "logmel_shape": logmel_shape,
        "labels": labels,
        "split": split_description(cfg.data),
        "selection": {"layout": cfg.data.layout, "label_column": cfg.data.label_column,
                      "ignore_labels": list(cfg.data.ignore_labels),
                      "min_overlap_s": cfg.data.min_overlap_s,
                      "window_selection": cfg.data.window_selection,
                      "windows_per_recording": cfg.data.windows_per_recording},
        "splits": splits,
        "failures": {"count": num_failures, "file": FAILURES},
    }


def split_description(data_cfg: config.DataConfig) -> dict:
    """The manifest's ``split``: how recordings were assigned to train and valid."""
    if data_cfg.fold_column is not None:
        return {"fold_column": data_cfg.fold_column, "valid_fold": str(data_cfg.valid_fold),
                "by": "the data set's folds"}
    return {"validation_fraction": data_cfg.validation_fraction, "seed": data_cfg.seed,
            "by": "recording, stratified by primary label"}


def check_failures(num_failed: int, num_files: int, max_failures: float, report: Path,
                   manifest: dict | None = None) -> None:
    """Raises when failures exceed ``max_failures`` (a count, or a fraction if below 1)."""
    limit = max_failures * num_files if max_failures < 1 else max_failures
    if num_failed > limit:
        raise TooManyFailures(
            f"{num_failed} of {num_files} files failed, more than data.max_failures allows; "
            f"see {report}. Received: max_failures={max_failures}", manifest or {})


def load_json(path: Path) -> dict:
    """The JSON object in ``path``, or ``{}`` when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def write_json_atomic(value: dict, path: Path) -> None:
    """``value`` as indented JSON (``str`` of what JSON lacks), via ``write_atomically``."""
    write_atomically(path, json.dumps(value, indent=2, default=str))


def write_csv_atomic(table: pd.DataFrame, path: Path) -> None:
    """``table`` as CSV without its index, via ``write_atomically``."""
    write_atomically(path, table.to_csv(index=False))

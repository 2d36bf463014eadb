"""Agile modelling: embed recordings with a pretrained backbone, find windows like a query,
and cut the hits into clips to review.

``embed_recordings`` writes an embeddings folder (``tfbird embed``)::

    DB/db.json                    the backbone (name, version, licence, audio contract)
                                  and its model's path (Perch: the folder kagglehub gave)
    DB/parts/<recording>.parquet  one row per window: file, start_s, end_s, embedding
    DB/index.faiss, index.json    the search index over the parts (``tfbird.vector_index``)

Each recording's part is written whole (a temporary name, then renamed), so rerunning the
same command skips the recordings already embedded and a killed run resumes. Windows are
``analyze``'s (``analyze.stream_windows``: the model's window, ``overlap_s`` apart, the last
one aligned to the end of the recording).

``search`` ranks the stored windows by cosine similarity to a query window through a faiss
index over the parts (built on the first search and rebuilt when the parts changed; exact,
or approximate HNSW on request). Without faiss installed it compares the query with every
row in numpy (exact; a million windows of BirdNET's 1024 values are 4 GB of float32 in
memory). ``export_clips`` writes each
hit as a WAV snippet and ``review.csv`` with an empty ``label`` column: labelled, it is a
data set for ``train`` (CSV layout).

Example:
    >>> embed_recordings(["field/"], ModelConfig(backbone="birdnet"), "db", overlap_s=1.5)
    >>> search("db", "field/dawn.wav", start_s=12.0, top_k=5)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile
from tqdm.auto import tqdm

from tfbird import analyze, backbones, config, vector_index
from tfbird.waveform import stream_waveform

log = logging.getLogger(__name__)

DB_FILE = "db.json"
PARTS_DIR = "parts"
REVIEW_FILE = "review.csv"
COLUMNS = ["file", "start_s", "end_s", "embedding"]


def embed_recordings(inputs: list[str | Path], model_cfg: config.ModelConfig,
                     out_dir: str | Path, overlap_s: float = 0.0, block_s: float = 60.0,
                     progress: bool = True) -> dict:
    """Embeds every window of the recordings under ``inputs`` into ``out_dir``.

    Args:
        inputs: files, folders (recursive) and ``.txt`` lists, as ``analyze`` takes them.
        model_cfg: ``model.backbone`` (and ``backbone_path``) of the embedding model.
        out_dir: the embeddings folder; created, or resumed when it exists.
        overlap_s: overlap of consecutive windows, in seconds.
        block_s: audio decoded per step, in seconds (bounded memory).
        progress: a progress bar over the recordings.

    Returns:
        ``{"recordings", "embedded", "skipped", "failed", "windows"}``; failures are
        listed in ``out_dir/errors.csv``.

    Raises:
        ValueError: a folder made with another backbone or overlap.
    """
    out_dir = Path(out_dir)
    # The model's folder, not "the latest Perch on Kaggle": search embeds its queries with
    # the same model, offline too, and a resumed run with a newer Perch is refused.
    model_cfg = backbones.with_model_path(model_cfg)
    backbone = backbones.load_backbone(model_cfg)
    hop_samples = backbone.window_samples - int(round(overlap_s * backbone.sample_rate_hz))
    if not 0 < hop_samples <= backbone.window_samples:
        raise ValueError(f"The overlap must be shorter than the {backbone.name} window. "
                         f"Received: overlap_s={overlap_s}")
    settings = {"backbone": backbone.describe(), "overlap_s": overlap_s,
                "backbone_path": model_cfg.backbone_path}
    check_db_settings(out_dir, settings)
    (out_dir / PARTS_DIR).mkdir(parents=True, exist_ok=True)
    (out_dir / DB_FILE).write_text(json.dumps(settings, indent=2))

    recordings = analyze.collect_recordings(inputs)
    counts = {"recordings": len(recordings), "embedded": 0, "skipped": 0, "failed": 0,
              "windows": 0}
    errors = []
    for path, _ in tqdm(recordings, unit="file", desc="embed", disable=None if progress else True):
        part = part_path(out_dir, path)
        if part.is_file():
            counts["skipped"] += 1
            continue
        try:
            rows = embed_recording(path, backbone, hop_samples, block_s)
        except Exception as error:  # One bad recording must not stop a long run.
            errors.append({"file": str(path), "error": f"{type(error).__name__}: {error}"})
            counts["failed"] += 1
            continue
        temporary = part.with_name(f".{part.name}.{os.getpid()}.tmp")
        rows.to_parquet(temporary, index=False)
        os.replace(temporary, part)
        counts["embedded"] += 1
        counts["windows"] += len(rows)
    pd.DataFrame(errors, columns=["file", "error"]).to_csv(out_dir / "errors.csv", index=False)
    return counts


def check_db_settings(out_dir: Path, settings: dict) -> None:
    """Refuses to add windows of another backbone or overlap to an existing folder."""
    path = out_dir / DB_FILE
    if path.is_file() and json.loads(path.read_text()) != json.loads(json.dumps(settings)):
        raise ValueError(f"{out_dir} holds embeddings made with other settings "
                         f"({json.loads(path.read_text())}); use another --out. "
                         f"Received: {settings}")


def part_path(out_dir: Path, recording: Path) -> Path:
    """``parts/<stem>-<hash of the absolute path>.parquet``: one file per recording."""
    digest = hashlib.sha1(str(Path(recording).absolute()).encode("utf-8")).hexdigest()[:12]
    return out_dir / PARTS_DIR / f"{Path(recording).stem}-{digest}.parquet"


def embed_recording(path: str | Path, backbone: backbones.Backbone, hop_samples: int,
                    block_s: float = 60.0) -> pd.DataFrame:
    """One recording's windows as rows ``file, start_s, end_s, embedding`` (float32 list)."""
    blocks = stream_waveform(path, backbone.sample_rate_hz, block_s)
    windows = analyze.stream_windows(blocks, backbone.window_samples, hop_samples)
    starts, embeddings = [], []
    for batch_starts, batch in analyze.batched(windows, backbones.BATCH_WINDOWS):
        starts.append(batch_starts)
        embeddings.append(backbone.embed(batch))
    start_s = np.concatenate(starts) / backbone.sample_rate_hz
    window_s = backbone.window_samples / backbone.sample_rate_hz
    return pd.DataFrame({"file": str(path), "start_s": start_s, "end_s": start_s + window_s,
                         "embedding": list(np.concatenate(embeddings))})


def list_parts(db_dir: str | Path) -> list[Path]:
    """The folder's parts, sorted (the order of rows in ``read_db`` and in the index).

    Raises:
        ValueError: not an embeddings folder, or one without windows.
    """
    db_dir = Path(db_dir)
    if not (db_dir / DB_FILE).is_file():
        raise ValueError(f"Not an embeddings folder (no {DB_FILE}); make one with tfbird "
                         f"embed. Received: db={str(db_dir)!r}")
    parts = sorted((db_dir / PARTS_DIR).glob("*.parquet"))
    if not parts:
        raise ValueError(f"The embeddings folder has no windows. Received: db={str(db_dir)!r}")
    return parts


def read_db(db_dir: str | Path) -> tuple[dict, pd.DataFrame, np.ndarray]:
    """``(settings, rows without the embedding, embeddings float32 [rows, dim])``."""
    parts = list_parts(db_dir)
    table = pd.concat([pd.read_parquet(part) for part in parts], ignore_index=True)
    embeddings = np.stack(table.pop("embedding").to_numpy()).astype(np.float32)
    return read_settings(db_dir), table, embeddings


def read_settings(db_dir: str | Path) -> dict:
    """``db.json``: the backbone and overlap the folder was embedded with."""
    return json.loads((Path(db_dir) / DB_FILE).read_text())


def search(db_dir: str | Path, query: str | Path, start_s: float = 0.0,
           top_k: int = 10, index: str = "exact") -> pd.DataFrame:
    """The ``top_k`` stored windows most like the query window, best first.

    Args:
        db_dir: an embeddings folder from ``embed_recordings``.
        query: a recording; its window starting at ``start_s`` (one backbone window,
            zero-padded past the end) is the query.
        start_s: where the query window starts, in seconds.
        top_k: rows returned.
        index: ``exact`` or ``hnsw`` (approximate; ``tfbird.vector_index``); without faiss,
            exact in numpy either way.

    Returns:
        ``rank, file, start_s, end_s, similarity`` (cosine, in [-1, 1]).
    """
    list_parts(db_dir)  # An embeddings folder with windows, before loading the model.
    settings = read_settings(db_dir)
    backbone = backbones.load_backbone(config.ModelConfig(
        backbone=settings["backbone"]["name"], backbone_path=settings.get("backbone_path")))
    check_same_backbone(db_dir, settings["backbone"], backbone.describe())
    window = read_window(query, start_s, backbone.sample_rate_hz, backbone.window_samples)
    return nearest_windows(db_dir, backbone.embed(window[None])[0], top_k, index)


def check_same_backbone(db_dir: str | Path, stored: dict, loaded: dict) -> None:
    """Refuses to compare a query embedded by another model (the folder at ``backbone_path``
    replaced since) with the stored windows: the similarities would mean nothing."""
    if stored != loaded:
        raise ValueError(f"{db_dir} was embedded with {stored}, but its backbone_path now "
                         f"loads another model; embed again into another folder. Received: "
                         f"backbone={loaded}")


def nearest_windows(db_dir: str | Path, query_embedding: np.ndarray, top_k: int = 10,
                    index: str = "exact") -> pd.DataFrame:
    """The ``top_k`` stored windows nearest ``query_embedding`` by cosine similarity:
    through the faiss index when faiss is installed, else exactly in numpy.

    Returns:
        ``rank, file, start_s, end_s, similarity``, best first.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1. Received: top_k={top_k}")
    parts = list_parts(db_dir)
    if vector_index.faiss_module() is None:
        vector_index.check_kind(index)  # The same check of the argument either way.
        _, table, embeddings = read_db(db_dir)
        similarity = cosine_similarity(query_embedding, embeddings)
        best = np.argsort(-similarity, kind="stable")[:top_k]
        hits, similarity = table.iloc[best].reset_index(drop=True), similarity[best]
    else:
        faiss_index, fingerprint = vector_index.load_or_build_index(db_dir, parts, index)
        ids, similarity = vector_index.nearest_rows(faiss_index, query_embedding, top_k)
        hits = vector_index.rows_at(parts, fingerprint, ids)
    hits.insert(0, "rank", np.arange(1, len(hits) + 1))
    hits["similarity"] = np.asarray(similarity, np.float32)
    return hits


def read_window(path: str | Path, start_s: float, sample_rate_hz: int,
                window_samples: int) -> np.ndarray:
    """The window of ``window_samples`` at ``start_s`` of a recording, at the backbone's
    rate, zero-padded past its end.

    Raises:
        ValueError: ``start_s`` at or past the end of the recording.
    """
    start = int(round(start_s * sample_rate_hz))
    blocks, read = [], 0
    for block in stream_waveform(path, sample_rate_hz, 60.0):  # Up to the window's end only.
        blocks.append(block)
        read += len(block)
        if read >= start + window_samples:
            break
    if start_s < 0 or start >= read:
        raise ValueError(f"The query window must start within the recording "
                         f"({read / sample_rate_hz:.1f} s). Received: start_s={start_s}")
    window = np.concatenate(blocks)[start:start + window_samples]
    return np.pad(window, (0, window_samples - len(window))).astype(np.float32)


def cosine_similarity(query: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarity of one vector ``[dim]`` to each row of ``[rows, dim]``."""
    norms = np.linalg.norm(embeddings, axis=1) * np.linalg.norm(query)
    return embeddings @ query / np.maximum(norms, 1e-12)


def export_clips(hits: pd.DataFrame, out_dir: str | Path) -> Path:
    """Writes each hit as ``<rank>-<stem>-<start>s.wav`` (the recording's own rate) and
    ``review.csv``: the hits with the clip's ``filename`` and an empty ``label`` to fill in.
    Returns the CSV's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for hit in hits.itertuples():
        info = soundfile.info(hit.file)
        start, stop = (int(round(t * info.samplerate)) for t in (hit.start_s, hit.end_s))
        audio, rate = soundfile.read(hit.file, start=start, stop=min(stop, info.frames),
                                     dtype="float32", always_2d=True)
        name = f"{hit.rank:03d}-{Path(hit.file).stem}-{hit.start_s:.1f}s.wav"
        soundfile.write(out_dir / name, audio, rate)
        names.append(name)
    review = hits.assign(filename=names, label="")
    review.to_csv(out_dir / REVIEW_FILE, index=False)
    return out_dir / REVIEW_FILE

"""A faiss index over an embeddings folder's Parquet parts, so ``search`` does not read and
multiply every stored embedding for each query.

Layout, beside ``db.json`` and ``parts/`` (``tfbird.search``)::

    DB/index.faiss   the vectors, L2-normalised float32 (inner product = cosine similarity)
    DB/index.json    what the index holds: its kind and, in order, each part's name, rows,
                     bytes and modification time (ns)

The parts stay the store (resumable, one file per recording, written whole); the index is a
cache of them, built by ``load_or_build_index`` on the first search and whenever it is stale:
index row ``i`` is row ``i`` of the parts read in ``index.json``'s order, so mapping a hit back
to its ``file, start_s, end_s`` needs only the part row counts, and reads only the parts that
hold a hit. Stale means the sorted list of parts, or one's size or modification time, differs
from ``index.json`` (a part added by a later ``tfbird embed``, one deleted or rewritten), or
another kind was asked for; then the whole index is rebuilt (``embed`` never rewrites a part,
so appending would be possible, but a rebuild is one code path and the exact index adds a
million rows in seconds).

Written so that a killed run never leaves an index a rerun would trust: ``index.json`` is
removed first, the index is written under a temporary name and renamed (``os.replace``), and
``index.json`` is written last (also renamed into place). No ``index.json``, or one that does
not match the parts, means rebuild.

Kinds (``--index``):
    - ``exact``: ``IndexFlatIP``, every vector compared (the same ranking as numpy).
    - ``hnsw``: ``IndexHNSWFlat`` (32 neighbours per node, inner product), approximate: a
      query visits a small graph neighbourhood instead of every row; for large folders.
    - ``auto`` (default): ``exact`` up to ``HNSW_ABOVE_ROWS`` rows, ``hnsw`` beyond.

faiss is optional (``pip install 'tfbird[search]'``): without it ``search`` compares the query
with every row in numpy, as before, and says so once in the log.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
INDEX_MANIFEST = "index.json"
INDEX_KINDS = ("auto", "exact", "hnsw")
HNSW_ABOVE_ROWS = 1_000_000  # 4 GB of BirdNET's float32 embeddings: an exact scan is slow.
HNSW_NEIGHBOURS = 32  # Links per node (faiss' M): recall against memory, faiss' usual value.
HNSW_MIN_EF_SEARCH = 64  # Candidates a query keeps (at least top_k); more is closer to exact.
ROW_COLUMNS = ["file", "start_s", "end_s"]


@functools.lru_cache(maxsize=1)
def faiss_module():
    """The ``faiss`` module, or ``None`` (logged once per process) when it is not installed."""
    try:
        import faiss
    except ImportError:
        log.warning("faiss is not installed (pip install 'tfbird[search]'): search compares "
                    "the query with every stored window in numpy.")
        return None
    return faiss


def parts_fingerprint(parts: list[Path]) -> list[dict]:
    """Each part's name, rows, bytes and modification time: what an index was built from."""
    import pyarrow.parquet as pq  # Here: pyarrow is the parquet extra, read only with parts.

    fingerprint = []
    for part in parts:
        stat = part.stat()
        fingerprint.append({"name": part.name, "rows": pq.ParquetFile(part).metadata.num_rows,
                            "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return fingerprint


def resolve_kind(kind: str, rows: int) -> str:
    """``exact`` or ``hnsw``: ``auto`` picks ``hnsw`` above ``HNSW_ABOVE_ROWS`` rows."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"The index must be one of {list(INDEX_KINDS)}. Received: "
                         f"index={kind!r}")
    if kind == "auto":
        return "hnsw" if rows > HNSW_ABOVE_ROWS else "exact"
    return kind


def load_or_build_index(db_dir: str | Path, parts: list[Path], kind: str = "auto"):
    """``(index, fingerprint)``: the stored index when it matches ``parts`` and ``kind``,
    else a new one, built from the parts and stored."""
    db_dir = Path(db_dir)
    faiss = faiss_module()
    fingerprint = parts_fingerprint(parts)
    kind = resolve_kind(kind, sum(part["rows"] for part in fingerprint))
    index = read_index_if_current(db_dir, fingerprint, kind)
    if index is None:
        log.info("Building the %s search index over %d parts of %s", kind, len(parts), db_dir)
        index = build_index(parts, kind, faiss)
        write_index(db_dir, index, fingerprint, kind)
    return index, fingerprint


def read_index_if_current(db_dir: Path, fingerprint: list[dict], kind: str):
    """The stored index if ``index.json`` says it holds exactly these parts as ``kind``;
    ``None`` when it is missing, stale or unreadable (then it is rebuilt)."""
    manifest_path, index_path = db_dir / INDEX_MANIFEST, db_dir / INDEX_FILE
    if not (manifest_path.is_file() and index_path.is_file()):
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError:
        return None
    if manifest.get("kind") != kind or manifest.get("parts") != fingerprint:
        return None
    try:
        index = faiss_module().read_index(str(index_path))
    except RuntimeError as error:  # faiss reports a damaged file as a RuntimeError.
        log.warning("Rebuilding the search index of %s: %s", db_dir, error)
        return None
    return index if index.ntotal == sum(part["rows"] for part in fingerprint) else None


def build_index(parts: list[Path], kind: str, faiss):
    """An index of ``kind`` over the parts' embeddings, one part in memory at a time
    (besides the index itself)."""
    index = None
    for part in parts:
        embeddings = part_embeddings(part)
        if not len(embeddings):
            continue
        if index is None:
            index = new_index(embeddings.shape[1], kind, faiss)
        faiss.normalize_L2(embeddings)
        index.add(embeddings)
    return index


def new_index(dim: int, kind: str, faiss):
    """An empty inner-product index of ``dim`` values: ``IndexFlatIP`` or ``IndexHNSWFlat``."""
    if kind == "hnsw":
        return faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
    return faiss.IndexFlatIP(dim)


def part_embeddings(part: Path) -> np.ndarray:
    """One part's embeddings, float32 ``[rows, dim]``, C-contiguous (as faiss takes them)."""
    column = pd.read_parquet(part, columns=["embedding"])["embedding"].to_numpy()
    if not len(column):
        return np.zeros([0, 0], np.float32)
    return np.ascontiguousarray(np.stack(column), dtype=np.float32)


def write_index(db_dir: Path, index, fingerprint: list[dict], kind: str) -> None:
    """Stores the index and then its manifest, each under a temporary name then renamed; the
    old manifest goes first, so a run killed midway leaves no manifest to trust."""
    faiss = faiss_module()
    manifest_path, index_path = db_dir / INDEX_MANIFEST, db_dir / INDEX_FILE
    manifest_path.unlink(missing_ok=True)
    temporary = index_path.with_name(f".{INDEX_FILE}.{os.getpid()}.tmp")
    faiss.write_index(index, str(temporary))
    os.replace(temporary, index_path)
    temporary = manifest_path.with_name(f".{INDEX_MANIFEST}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"kind": kind, "parts": fingerprint}, indent=1))
    os.replace(temporary, manifest_path)


def nearest_rows(index, query_embedding: np.ndarray, top_k: int) -> tuple[np.ndarray,
                                                                          np.ndarray]:
    """``(row ids, cosine similarities)`` of the ``top_k`` rows nearest the query, best first
    (fewer when the index holds fewer rows)."""
    faiss = faiss_module()
    query = np.ascontiguousarray(query_embedding, dtype=np.float32).reshape(1, -1).copy()
    faiss.normalize_L2(query)
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = max(HNSW_MIN_EF_SEARCH, top_k)
    similarity, ids = index.search(query, top_k)
    found = ids[0] >= 0  # faiss pads with -1 past the rows it holds.
    return ids[0][found], similarity[0][found]


def rows_at(parts: list[Path], fingerprint: list[dict], ids: np.ndarray) -> pd.DataFrame:
    """``file, start_s, end_s`` of index rows ``ids``, in that order, reading only the parts
    that hold them (and not their embeddings)."""
    counts = np.array([part["rows"] for part in fingerprint])
    part_starts = np.cumsum(counts) - counts
    part_of_id = np.searchsorted(part_starts, ids, side="right") - 1
    pieces = [pd.DataFrame(columns=ROW_COLUMNS)] if not len(ids) else []
    for number in np.unique(part_of_id):
        wanted = np.flatnonzero(part_of_id == number)
        table = pd.read_parquet(parts[number], columns=ROW_COLUMNS)
        pieces.append(table.iloc[ids[wanted] - part_starts[number]].set_axis(wanted))
    return pd.concat(pieces).sort_index().reset_index(drop=True)

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
so appending would be possible, but a rebuild is one code path: about 5 s for an exact
index of 120,000 rows, mostly reading the parts). The index loaded last stays in memory for
the process's next search of the same parts (``forget_loaded_index`` frees it).

Written so that a killed run never leaves an index a rerun would trust: ``index.json`` is
removed first, the index is written under a temporary name and renamed (``os.replace``), and
``index.json`` is written last (also renamed into place). No ``index.json``, or one that does
not match the parts, means rebuild.

Kinds (``--index``):
    - ``exact`` (default): ``IndexFlatIP``, every vector compared: the same ranking and
      similarities as numpy, about 7 times faster per query (120,000 random rows of 1024
      values in 100 parts, measured once, niced, on this project's shared 2-core machine:
      0.5 s against 3.7 s to rank them, most of the 0.5 s reading the 0.5 GB index; the
      product itself is 0.09 s).
    - ``hnsw``: ``IndexHNSWFlat`` (32 links per node, inner product), approximate: a query
      visits a small neighbourhood of a graph instead of every row (1 ms instead of 0.09 s
      at 120,000 rows). It pays in a process that searches many times (the Python API keeps
      the loaded index), not per ``tfbird search`` command, which
      spends its time reading the index either way; and its build is slow (120,000 rows:
      about 3 minutes, against 5 s for ``exact``, niced on the same machine). Its recall
      depends on the data: on random Gaussian vectors of 1024 values, the worst case, 3 of
      the exact top 10 (``HNSW_MIN_EF_SEARCH`` candidates); clustered embeddings should fare
      better (not measured here).

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
INDEX_KINDS = ("exact", "hnsw")
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


def check_kind(kind: str) -> None:
    """Refuses an index kind other than ``exact`` and ``hnsw``."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"The index must be one of {list(INDEX_KINDS)}. Received: "
                         f"index={kind!r}")


# The last index loaded in this process, with what it was loaded for: a notebook's searches
# after the first skip reading the file (seconds for a million rows).
_loaded = {"key": None, "index": None}


def forget_loaded_index() -> None:
    """Frees the index this process keeps (the next search reads it from disk again)."""
    _loaded.update(key=None, index=None)


def load_or_build_index(db_dir: str | Path, parts: list[Path], kind: str = "exact"):
    """``(index, fingerprint)``: the index this process last loaded, or the stored one, when
    it holds exactly ``parts`` as ``kind``; else a new one, built from the parts and stored."""
    check_kind(kind)
    db_dir = Path(db_dir)
    fingerprint = parts_fingerprint(parts)
    key = json.dumps([str(db_dir.resolve()), kind, fingerprint])
    if _loaded["key"] == key:
        return _loaded["index"], fingerprint
    index = read_index_if_current(db_dir, fingerprint, kind)
    if index is None:
        log.info("Building the %s search index over %d parts of %s", kind, len(parts), db_dir)
        index = build_index(parts, kind, faiss_module())
        store_index(db_dir, index, fingerprint, kind)
    _loaded.update(key=key, index=index)
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
    if index is None:
        raise ValueError(f"The embeddings folder's parts hold no windows. Received: "
                         f"parts={len(parts)}")
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


def store_index(db_dir: Path, index, fingerprint: list[dict], kind: str) -> None:
    """``write_index``, or a warning when the folder cannot be written (a shared, read-only
    embeddings folder still searches, building the index in memory once per process)."""
    try:
        write_index(db_dir, index, fingerprint, kind)
    except (OSError, RuntimeError) as error:  # faiss reports a failed write as RuntimeError.
        log.warning("Could not store the search index in %s (%s); it is kept in memory only.",
                    db_dir, error)


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

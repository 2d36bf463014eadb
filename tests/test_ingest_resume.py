"""Resuming and workers: an ingest killed with SIGKILL and rerun, or split over two workers,
gives the same shards, examples and counts as one uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import soundfile
import tensorflow as tf
from conftest import REPO, tiny_config

from tfbird import cli, config, ingest

SR = 16000
NUM_FILES = 40


def write_corpus(root):
    """``NUM_FILES`` recordings of 2 species, 3-12 s, as a plain CSV."""
    rng = np.random.default_rng(0)
    lines = ["filename,label"]
    for i in range(NUM_FILES):
        seconds = 3 + (i * 7) % 10
        t = np.arange(seconds * SR) / SR
        audio = 0.2 * np.sin(2 * np.pi * (500 + 300 * (i % 2)) * t) + 0.01 * rng.normal(size=t.size)
        soundfile.write(root / f"{i:02d}.wav", audio, SR)
        lines.append(f"{i:02d}.wav,sp{i % 2}")
    (root / "list.csv").write_text("\n".join(lines) + "\n")
    return root / "list.csv"


def small_cfg(tmp_path):
    return tiny_config(tmp_path, data={"files_per_shard": 1, "validation_fraction": 0.25,
                                       "max_failures": 0})


def shard_contents(records_dir, manifest):
    """``{shard: [{feature key: serialised feature}]}``: equal when the examples are equal (a
    whole Example's bytes are not comparable across processes: protobuf maps are unordered)."""
    contents = {}
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            examples = tf.data.TFRecordDataset(str(records_dir / shard["file"]))
            contents[shard["file"]] = [
                {key: feature.SerializeToString() for key, feature in
                 tf.train.Example.FromString(e.numpy()).features.feature.items()}
                for e in examples]
    return contents


def comparable(manifest):
    return {k: manifest[k] for k in ("splits", "labels", "failures", "ingested", "fingerprint")}


def test_killed_ingest_resumes_to_the_uninterrupted_result(tmp_path):
    (tmp_path / "data").mkdir()
    data = write_corpus(tmp_path / "data")
    cfg = small_cfg(tmp_path)
    reference = ingest.ingest(cfg, data, tmp_path / "reference", progress=False)
    num_shards = sum(len(s["shards"]) for s in reference["splits"].values())
    assert num_shards == NUM_FILES

    config_path = tmp_path / "small.yaml"
    config.save(cfg, config_path)
    out = tmp_path / "killed"
    command = ["ingest", "--config", str(config_path), "--data", str(data), "--out", str(out),
               "--quiet"]
    process = subprocess.Popen([sys.executable, "-m", "tfbird", *command], cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("*.tfrecord.json")) and time.monotonic() < deadline:
            assert process.poll() is None, "the ingest ended before writing a shard"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    finished = len(list(out.glob("*.tfrecord.json")))
    assert 1 <= finished < num_shards, f"killed after {finished} of {num_shards} shards"
    assert not (out / "manifest.json").exists()

    assert cli.main(command) == 0  # The same command again: resumes.
    resumed = json.loads((out / "manifest.json").read_text())
    assert resumed["shards_written"] <= num_shards - finished
    assert comparable(resumed) == comparable(reference)
    assert shard_contents(out, resumed) == shard_contents(tmp_path / "reference", reference)
    assert (out / "ingested.csv").read_text() == (tmp_path / "reference" / "ingested.csv").read_text()
    assert not list(out.glob("*.tmp"))

    again = ingest.ingest(cfg, data, out, progress=False)  # Nothing left to do.
    assert again["shards_written"] == 0 and comparable(again) == comparable(reference)


def test_two_workers_write_disjoint_shards_and_the_last_one_merges(tmp_path):
    (tmp_path / "data").mkdir()
    data = write_corpus(tmp_path / "data")
    cfg = small_cfg(tmp_path)
    reference = ingest.ingest(cfg, data, tmp_path / "reference", progress=False)

    out = tmp_path / "workers"
    first = ingest.ingest(cfg, data, out, progress=False, workers=2, worker_index=1)
    assert first == {**first, "complete": False, "shards_done": NUM_FILES // 2,
                     "shards_total": NUM_FILES, "shards_written": NUM_FILES // 2}
    assert not (out / "manifest.json").exists()
    second = ingest.ingest(cfg, data, out, progress=False, workers=2, worker_index=0)
    assert second["complete"] and second["shards_written"] == NUM_FILES // 2
    assert comparable(second) == comparable(reference)
    assert shard_contents(out, second) == shard_contents(tmp_path / "reference", reference)


def test_other_settings_make_the_old_shards_stale(tmp_path):
    (tmp_path / "data").mkdir()
    data = write_corpus(tmp_path / "data")
    cfg = small_cfg(tmp_path)
    out = tmp_path / "records"
    first = ingest.ingest(cfg, data, out, progress=False)
    other = config.from_dict({**config.to_dict(cfg), "data": {
        **config.to_dict(cfg)["data"], "files_per_shard": 16}}).validate()
    second = ingest.ingest(other, data, out, progress=False)
    assert second["fingerprint"] != first["fingerprint"]
    assert second["shards_written"] == 3  # 30 train files -> 2 shards, 10 valid -> 1
    assert sorted(p.name for p in out.glob("*.tfrecord")) == sorted(
        s["file"] for split in second["splits"].values() for s in split["shards"])
    assert second["ingested"] == first["ingested"]


def test_workers_equal_one_run_when_recordings_span_several_blocks(tmp_path):
    """A shard's records follow the order its recordings finish decoding; with recordings of
    several blocks that order must not depend on the neighbouring shards' recordings."""
    (tmp_path / "data").mkdir()
    data = write_corpus(tmp_path / "data")
    cfg = tiny_config(tmp_path, data={"files_per_shard": 4, "validation_fraction": 0.25,
                                      "max_failures": 0, "decode_block_s": 1.0})
    reference = ingest.ingest(cfg, data, tmp_path / "reference", progress=False)
    out = tmp_path / "workers"
    ingest.ingest(cfg, data, out, progress=False, workers=2, worker_index=0)
    merged = ingest.ingest(cfg, data, out, progress=False, workers=2, worker_index=1)
    assert merged["complete"] and comparable(merged) == comparable(reference)
    contents = shard_contents(tmp_path / "reference", reference)
    assert len(contents) == 11 and shard_contents(out, merged) == contents

"""Decoding in worker processes: the records are those of decoding in tf.data's threads (the
path before worker processes), example for example; the workers load no TensorFlow."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import tensorflow as tf
from conftest import tiny_config

from tfbird import decoding, ingest

SR = 32000


def write_corpus(data):
    """Mixed rates, channels and formats; one file longer than the 4-s decode block (streamed
    in the tf.data thread), one that is not audio (a failure)."""
    rng = np.random.default_rng(0)
    files = [("a/mono16k.wav", 16000, 1, 6.0), ("a/stereo44k.flac", 44100, 2, 7.5),
             ("b/mono32k.wav", SR, 1, 2.0), ("b/long22k.ogg", 22050, 2, 13.0),
             ("a/short48k.wav", 48000, 1, 1.2)]
    for name, rate, channels, seconds in files:
        path = data / name
        path.parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(int(rate * seconds)) / rate
        tone = 0.3 * np.sin(2 * np.pi * (500 + 300 * len(name)) * t)
        audio = tone[:, None] + 0.05 * rng.standard_normal((len(t), channels))
        audio[::97] = -0.0  # -0.0 samples: the channel mean must turn them into +0.0
        soundfile.write(path, audio.astype(np.float32), rate)
    (data / "b" / "broken.wav").write_bytes(b"RIFF" + b"\x00" * 100)


def parsed_shards(records_dir):
    """``{shard: [feature dict of each example, in order]}``: compared after parsing, since
    protobuf may order a map's keys differently from one process to the next."""
    shards = {}
    for shard in sorted(records_dir.glob("*.tfrecord")):
        shards[shard.name] = [
            {key: list(getattr(feature, feature.WhichOneof("kind")).value)
             for key, feature in tf.train.Example.FromString(raw).features.feature.items()}
            for raw in tf.data.TFRecordDataset(str(shard)).as_numpy_iterator()]
    return shards


def sidecars(records_dir):
    return {p.name: {k: v for k, v in json.loads(p.read_text()).items() if k != "fingerprint"}
            for p in sorted(records_dir.glob("*.tfrecord.json"))}


@pytest.mark.parametrize("selection", ["all", "random"])
def test_worker_processes_write_the_records_of_thread_decoding(tmp_path, monkeypatch,
                                                               selection):
    write_corpus(tmp_path / "data")
    cfg = tiny_config(tmp_path, data={"decode_block_s": 4.0, "layout": "folders",
                                      "max_failures": 1, "files_per_shard": 3,
                                      "window_selection": selection,
                                      "windows_per_recording": 2})
    written = {}
    for processes in (0, 2):
        monkeypatch.setattr(decoding, "default_decode_processes", lambda n=processes: n)
        out = tmp_path / f"records-{processes}"
        manifest = ingest.ingest(cfg, tmp_path / "data", out, progress=False)
        assert manifest["failures"]["count"] == 1
        written[processes] = parsed_shards(out), sidecars(out)
    assert sum(len(examples) for examples in written[0][0].values()) >= 6
    assert written[2] == written[0]


def test_pool_streams_a_long_recording_and_decodes_a_short_one_whole(tmp_path):
    write_corpus(tmp_path / "data")
    cfg = tiny_config(tmp_path, data={"decode_block_s": 4.0})
    short, long = (str(tmp_path / "data" / name).encode()
                   for name in ("a/mono16k.wav", "b/long22k.ogg"))
    assert decoding.whole_recording_elements(long, cfg) is None
    with decoding.DecodePool(processes=1) as pool:
        for path in (short, long):
            pooled = list(pool.recording_elements(path, cfg))
            direct = list(decoding.recording_elements(path, cfg))
            assert len(pooled) == len(direct)
            assert (len(direct) > 1) == (path == long)
            for got, want in zip(pooled, direct):
                for a, b in zip(got, want):
                    np.testing.assert_array_equal(a, b)


def test_decode_workers_import_neither_tensorflow_nor_librosa():
    code = ("import sys, tfbird.decoding; "
            "print(sorted({'tensorflow', 'librosa', 'keras'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"


def test_pool_refuses_a_negative_process_count():
    with pytest.raises(ValueError, match="Received: processes=-1"):
        decoding.DecodePool(-1)

"""Decoding in worker processes (``tfbird.decode_workers``): the elements of the in-process
decode, in file order, whatever the number of workers; a worker that dies fails only its
recording; a caller's script needs no main guard."""

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import tiny_config

from tfbird import decode_workers
from tfbird.decode_workers import DecodeWorker, ordered_elements
from tfbird.waveform import failure_reason

RATE_HZ = 22050  # Not the model rate: every file is resampled.


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """``(paths, cfg)``: short, multi-block and stereo recordings, a broken and a missing
    file; decode blocks of 2 s so a recording gives several elements."""
    root = tmp_path_factory.mktemp("decode-workers")
    rng = np.random.default_rng(3)
    paths = []
    for k, (seconds, channels) in enumerate([(1.0, 1), (7.5, 2), (3.0, 1), (12.0, 1),
                                             (0.4, 1)]):
        path = root / f"rec{k}.flac"
        soundfile.write(path, rng.uniform(-0.5, 0.5, (int(seconds * RATE_HZ), channels)),
                        RATE_HZ)
        paths.append(str(path))
    (root / "broken.wav").write_bytes(b"RIFF not audio")
    paths.insert(2, str(root / "broken.wav"))
    paths.insert(4, str(root / "missing.ogg"))
    cfg = tiny_config(root, data={"decode_block_s": 2.0})
    return paths, cfg


def assert_same_elements(found, expected):
    assert len(found) == len(expected)
    for got, want in zip(found, expected):
        assert got[0] == want[0]  # position
        for a, b in zip(got[1:4], want[1:4]):  # windows, start_s, index
            np.testing.assert_array_equal(a, b)
            assert a.dtype == b.dtype
        assert got[4:] == want[4:]  # num_windows, audio_s, error, last


def test_workers_give_the_in_process_elements_in_file_order(recordings):
    paths, cfg = recordings
    expected = list(ordered_elements(paths, cfg, processes=0))
    positions = [element[0] for element in expected]
    assert positions == sorted(positions) and set(positions) == set(range(len(paths)))
    assert sum(element[-1] for element in expected) == len(paths)  # one last per file
    assert len(expected) > len(paths)  # some recordings span several blocks
    errors = {element[0]: failure_reason(element[6].decode()) for element in expected
              if element[6]}
    assert errors == {2: "unreadable", 4: "file missing"}
    for processes in (1, 2, 3):
        assert_same_elements(list(ordered_elements(paths, cfg, processes)), expected)


def test_a_worker_that_dies_fails_its_recording_and_a_new_one_takes_the_rest(recordings):
    paths, cfg = recordings
    expected = list(ordered_elements(paths, cfg, processes=0))
    worker = DecodeWorker(paths, cfg, [0, 1, 3])
    worker.process.kill()  # Before it wrote anything: it is still importing numpy.
    try:
        crashed = list(worker.elements_of(0))
        rest = list(worker.elements_of(1)) + list(worker.elements_of(3))
    finally:
        worker.stop()
    assert len(crashed) == 1 and crashed[0][0] == 0 and crashed[0][-1]
    message = crashed[0][6].decode()
    assert failure_reason(message) == "decoder crashed"
    assert paths[0] in message and "exit code -9" in message
    assert crashed[0][1].shape == (0, cfg.audio.window_samples)
    assert_same_elements(rest, [e for e in expected if e[0] in (1, 3)])


def test_one_worker_per_core_and_none_on_a_single_core(monkeypatch):
    monkeypatch.setattr(decode_workers, "available_cores", lambda: 4)
    assert decode_workers.resolve_processes(-1) == 4
    assert decode_workers.resolve_processes(0) == 0
    assert decode_workers.resolve_processes(3) == 3
    monkeypatch.setattr(decode_workers, "available_cores", lambda: 1)
    assert decode_workers.resolve_processes(-1) == 0


def test_a_script_without_a_main_guard_ingests_with_workers(tmp_path, recordings):
    paths, _ = recordings
    data = tmp_path / "data"
    (data / "sp0").mkdir(parents=True)
    (data / "sp1").mkdir()
    for k, path in enumerate(p for p in paths if p.endswith(".flac")):
        (data / f"sp{k % 2}" / f"{k}.flac").symlink_to(path)
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        from pathlib import Path
        from conftest import tiny_config
        from tfbird import ingest
        cfg = tiny_config(Path({str(tmp_path)!r}),
                          data={{"decode_workers": 2, "layout": "folders"}})
        manifest = ingest.ingest(cfg, {str(data)!r}, {str(tmp_path / "records")!r},
                                 progress=False)
        print("ingested", manifest["ingested"]["count"])
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ingested 5" in done.stdout


@pytest.mark.skipif(shutil.which("pgrep") is None or not Path("/proc/self").exists(),
                    reason="needs pgrep and /proc to find the worker processes")
def test_workers_exit_when_the_reader_is_killed(tmp_path, recordings):
    paths, _ = recordings
    long_paths = [p for p in paths if p.endswith(".flac")] * 40  # Keeps the workers busy.
    script = tmp_path / "reader.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from conftest import tiny_config
        from tfbird.decode_workers import ordered_elements
        cfg = tiny_config(Path({str(tmp_path)!r}), data={{"decode_block_s": 2.0}})
        for element in ordered_elements({long_paths!r}, cfg, processes=2):
            print("element", flush=True)
            time.sleep(60)  # A reader that stalls, then is killed.
    """))
    reader = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    try:
        assert reader.stdout.readline().strip() == "element"
        workers = subprocess.run(["pgrep", "-P", str(reader.pid)], capture_output=True,
                                 text=True).stdout.split()
        assert len(workers) == 2
    finally:
        reader.kill()
        reader.wait()
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "orphaned decode workers"

"""Ingest on Dask (``--dask-local N``, ``--dask-scheduler ADDRESS``): one task per shard gives
the single-process output (shard names, examples, counts, ``ingested.csv``, ``failures.csv``,
manifest), and a killed Dask ingest resumes to it."""

import importlib.util
import json
import sys
import time
import typing

import pytest
from conftest import tiny_config
from test_crash import kill_when, tfbird_command
from test_ingest_resume import comparable, shard_contents, write_corpus

from tfbird import cli, config, ingest

needs_distributed = pytest.mark.skipif(
    importlib.util.find_spec("distributed") is None,
    reason="Dask's distributed scheduler is not installed (pip install 'tfbird[dask]')")
OUTPUT_FILES = ("ingested.csv", "failures.csv", "labels.txt")
NUM_SHARDS = 6  # 30 train recordings -> 4 shards of 8, 11 valid (one broken) -> 2.


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """``(data, cfg, reference folder, reference manifest)``: 40 recordings of 1-s decode
    blocks (so a shard's record order depends on how its recordings interleave) and one
    broken file, ingested by one process."""
    root = tmp_path_factory.mktemp("dask-ingest")
    (root / "data").mkdir()
    data = write_corpus(root / "data")
    (root / "data" / "broken.wav").write_bytes(b"RIFF not audio")
    data.write_text(data.read_text() + "broken.wav,sp0\n")
    cfg = tiny_config(root, data={"files_per_shard": 8, "validation_fraction": 0.25,
                                  "max_failures": 0.1, "decode_block_s": 1.0})
    reference = ingest.ingest(cfg, data, root / "reference", progress=False)
    assert sum(len(s["shards"]) for s in reference["splits"].values()) == NUM_SHARDS
    assert reference["failures"]["count"] == 1 and reference["ingested"]["count"] == 40
    return data, cfg, root / "reference", reference


def assert_same_as_reference(out_dir, manifest, corpus):
    """The records folder equals the single-process one: manifest, shards' examples, CSVs."""
    _, _, reference_dir, reference = corpus
    assert manifest["complete"] and comparable(manifest) == comparable(reference)
    assert sorted(p.name for p in out_dir.glob("*.tfrecord")) == sorted(
        p.name for p in reference_dir.glob("*.tfrecord"))
    assert shard_contents(out_dir, manifest) == shard_contents(reference_dir, reference)
    for name in OUTPUT_FILES:
        assert (out_dir / name).read_text() == (reference_dir / name).read_text(), name
    assert json.loads((out_dir / "manifest.json").read_text())["splits"] == reference["splits"]
    assert not list(out_dir.glob("*.tmp")) and not list(out_dir.glob(".*.tmp"))


def dask_local_command(tmp_path, corpus, out_dir) -> list[str]:
    """``tfbird ingest ... --dask-local 2`` of the corpus into ``out_dir`` (its arguments)."""
    data, cfg, _, _ = corpus
    config_path = tmp_path / "cfg.yaml"
    config.save(cfg, config_path)
    return ["ingest", "--config", str(config_path), "--data", str(data), "--out", str(out_dir),
            "--dask-local", "2", "--quiet"]


@needs_distributed
def test_dask_local_ingest_equals_single_process_ingest(tmp_path, corpus):
    data, cfg, _, _ = corpus
    out = tmp_path / "dask"
    assert cli.main(dask_local_command(tmp_path, corpus, out)) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["shards_written"] == NUM_SHARDS
    assert_same_as_reference(out, manifest, corpus)
    assert "broken.wav" in (out / "failures.csv").read_text()

    again = ingest.ingest(cfg, data, out, progress=False, dask_local=2)  # Nothing to do:
    assert again["shards_written"] == 0  # no cluster started, the same manifest.
    assert comparable(again) == comparable(manifest)


class CountingBar:
    """A stand-in for ``tqdm``: keeps each bar's total, count and last postfix."""

    shown: typing.ClassVar[list] = []

    def __init__(self, total, disable=None, **kwargs):
        self.total, self.count, self.postfix = total, 0, {}
        if disable is not True:
            CountingBar.shown.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def set_postfix(self, refresh=True, **postfix):
        self.postfix = postfix

    def update(self, count):
        self.count += count


@needs_distributed
def test_dask_scheduler_ingest_equals_single_process_ingest(tmp_path, corpus, monkeypatch):
    import distributed

    data, cfg, _, _ = corpus
    monkeypatch.setattr(ingest, "tqdm", CountingBar)
    CountingBar.shown.clear()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster:  # Workers as threads.
        manifest = ingest.ingest(cfg, data, tmp_path / "dask", progress=True,
                                 dask_scheduler=cluster.scheduler_address)
    assert manifest["shards_written"] == NUM_SHARDS
    assert_same_as_reference(tmp_path / "dask", manifest, corpus)
    [bar] = CountingBar.shown  # The workers' bars are off; this one counts the shards' files.
    assert bar.total == bar.count == 41 and bar.postfix == {"shards": f"{NUM_SHARDS}/{NUM_SHARDS}"}


def wait_for_exit(pids: list[int], timeout_s: float = 30.0) -> list[int]:
    """The processes of ``pids`` still alive after up to ``timeout_s``."""
    import psutil  # A dependency of distributed.

    deadline = time.monotonic() + timeout_s
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in alive if psutil.pid_exists(pid)
                 and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    return alive


@needs_distributed
def test_killed_dask_ingest_resumes_to_the_single_process_result(tmp_path, corpus):
    import psutil

    out = tmp_path / "killed"
    command = dask_local_command(tmp_path, corpus, out)
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    processes = []  # The ingest and its Dask worker processes (not an earlier test's helpers).

    def first_shard_written() -> bool:
        if not list(out.glob("*.tfrecord.json")):
            return False
        processes.extend(child.pid for child in psutil.Process().children(recursive=True)
                         if child.pid not in before)
        return True

    assert kill_when(tfbird_command(*command), first_shard_written), "it ended before the kill"
    assert len(processes) >= 3  # The workers end with the killed ingest,
    assert wait_for_exit(processes) == []  # so none writes beside the rerun.
    finished = len(list(out.glob("*.tfrecord.json")))
    assert 1 <= finished < NUM_SHARDS, f"killed after {finished} of {NUM_SHARDS} shards"
    assert not (out / "manifest.json").exists()

    assert cli.main(command) == 0  # The same command again: resumes.
    resumed = json.loads((out / "manifest.json").read_text())
    assert resumed["shards_written"] == NUM_SHARDS - finished
    assert_same_as_reference(out, resumed, corpus)


def test_dask_options_need_the_extra_and_exclude_a_job_array(tmp_path, corpus, monkeypatch):
    data, cfg, _, _ = corpus
    with pytest.raises(ValueError, match=r"Give one of workers > 1 .* Received: .*'workers': 2"):
        ingest.ingest(cfg, data, tmp_path / "out", workers=2, dask_local=2)
    with pytest.raises(ValueError, match=r"Give one of .* 'dask_scheduler': 'tcp://h:8786'"):
        ingest.ingest(cfg, data, tmp_path / "out", dask_scheduler="tcp://h:8786", dask_local=2)
    with pytest.raises(ValueError, match=r"Received: dask_local=-1"):
        ingest.ingest(cfg, data, tmp_path / "out", dask_local=-1)
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    with pytest.raises(ValueError, match=r"pip install 'tfbird\[dask\]'"):
        ingest.ingest(cfg, data, tmp_path / "out", progress=False, dask_local=2)
    assert not list((tmp_path / "out").glob("*.tfrecord"))

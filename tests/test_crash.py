"""Crash consistency (issue #18): kill a long command at chosen moments, rerun it, and get
what an uninterrupted run gives.

Fast (default suite): ``train``'s resume is killed in process at every file operation of
a backup save (``KillingBackup``), at the end of ``fit`` and inside the log, on a tiny Dense
model; the rerun (``training.resume_state`` + ``fit``) must log each epoch once, with the
losses and final weights of an uninterrupted run. Disk full is injected as ``OSError``.

Slow (``pytest -m slow``): ``tfbird train`` as a subprocess, SIGKILLed at seeded moments
(``kill_moments``), then rerun with the same command.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from tfbird import training

EPOCHS = 3


class Killed(BaseException):
    """Stands for SIGKILL: not an ``Exception``, so nothing in Keras handles it."""


def truncate_to_half(path: Path) -> None:
    """What a kill while writing ``path`` leaves: its first half."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


class KillingBackup(training.RunBackup):
    """``RunBackup`` that performs ``BackupAndRestore._save_model``'s file operations one by
    one (as Keras 3 does with ``double_checkpoint=True``) and is killed at one of them:
    before operation ``kill_step // 2``, or (odd steps) while writing it. Step
    ``2 * len(operations)`` kills after the save."""

    def __init__(self, backup_dir, kill_after_epochs: int, kill_step: int):
        super().__init__(backup_dir, double_checkpoint=True, delete_checkpoint=False)
        self.kill_after_epochs, self.kill_step = kill_after_epochs, kill_step

    def save_operations(self):
        weights, metadata = Path(self._weights_path), Path(self._training_metadata_path)
        previous_weights = Path(self._prev_weights_path)
        previous_metadata = Path(self._prev_training_metadata_path)

        def copy_if_exists(source, target):
            if source.is_file():
                shutil.copy(source, target)

        def write_metadata():
            metadata.write_text(json.dumps({"epoch": self._current_epoch, "batch": 0}))

        return [
            (previous_weights, lambda: copy_if_exists(weights, previous_weights)),
            (previous_metadata, lambda: copy_if_exists(metadata, previous_metadata)),
            (weights, lambda: self.model.save_weights(weights, overwrite=True)),
            (metadata, write_metadata),
        ]

    def _save_model(self):
        Path(self.backup_dir).mkdir(parents=True, exist_ok=True)
        killing = self._current_epoch == self.kill_after_epochs
        for step, (target, operation) in enumerate(self.save_operations()):
            if killing and self.kill_step == 2 * step:
                raise Killed(f"before writing {target.name}")
            operation()
            if killing and self.kill_step == 2 * step + 1:
                if target.is_file():
                    truncate_to_half(target)
                raise Killed(f"while writing {target.name}")
        if killing:
            raise Killed("after the backup")


class SlowEpochs(keras.callbacks.Callback):
    """Epochs of a few milliseconds, as long as the file clock's tick at least: real
    epochs take seconds, and ``training.read_backup_epoch`` compares modification times."""

    def on_epoch_begin(self, epoch, logs=None):
        time.sleep(0.02)


def tiny_data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(16, 4)).astype("float32"), rng.normal(size=(16, 1)).astype("float32")


def tiny_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(0.05), "mse")
    return model


def fit_tiny(run_dir: Path, backup: keras.callbacks.Callback, resumed: bool,
             stop: keras.callbacks.Callback | None = None) -> keras.Model:
    """One ``fit`` as ``training.fit_in_phases`` runs it: CSV log, (early) ``stop``, then the
    backup, last."""
    model = tiny_model()
    x, y = tiny_data()
    log = keras.callbacks.CSVLogger(run_dir / training.TRAINING_LOG_FILE, append=resumed)
    model.fit(x, y, batch_size=16, epochs=EPOCHS, shuffle=False, verbose=0,
              callbacks=[SlowEpochs(), log, *([stop] if stop else []), backup])
    return model


class StopAfterTwoEpochs(keras.callbacks.Callback):
    """What ``EarlyStopping`` does when it stops: ``stop_training`` at an epoch's end."""

    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = epoch == 1


def rerun(run_dir: Path) -> keras.Model:
    """The same command again: ``train``'s resume, then a ``fit`` that deletes its backup."""
    epochs_done, _ = training.resume_state(run_dir)
    return fit_tiny(run_dir, training.RunBackup(run_dir / training.BACKUP_DIR,
                                                double_checkpoint=True), epochs_done > 0)


def log_rows(run_dir: Path) -> list[dict]:
    with (run_dir / training.TRAINING_LOG_FILE).open(newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """``(log rows, final weights)`` of a run that nothing killed."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    model = fit_tiny(run_dir, training.RunBackup(run_dir / training.BACKUP_DIR,
                                                 double_checkpoint=True), resumed=False)
    return log_rows(run_dir), model.get_weights()


def assert_same_as_uninterrupted(run_dir: Path, model: keras.Model, uninterrupted) -> None:
    rows, weights = uninterrupted
    assert [row["epoch"] for row in log_rows(run_dir)] == [str(e) for e in range(EPOCHS)]
    np.testing.assert_allclose([float(row["loss"]) for row in log_rows(run_dir)],
                               [float(row["loss"]) for row in rows], rtol=1e-5)
    for resumed, expected in zip(model.get_weights(), weights):
        np.testing.assert_allclose(resumed, expected, rtol=1e-5, atol=1e-7)
    assert not (run_dir / training.BACKUP_DIR).exists()


# Kill moments: after epoch 1's log row (the first save), in the middle (2), inside the last
# epoch's save (3); at each of the save's 4 file operations, before it and while writing it,
# and after the save: 3 x 9 = 27 kills.
@pytest.mark.parametrize("kill_after_epochs", [1, 2, 3])
@pytest.mark.parametrize("kill_step", range(9))
def test_train_killed_while_backing_up_resumes_like_an_uninterrupted_run(
        tmp_path, uninterrupted, kill_after_epochs, kill_step):
    with pytest.raises(Killed):
        fit_tiny(tmp_path, KillingBackup(tmp_path / training.BACKUP_DIR, kill_after_epochs,
                                         kill_step), resumed=False)
    assert len(log_rows(tmp_path)) == kill_after_epochs  # The row is written before the save.
    assert_same_as_uninterrupted(tmp_path, rerun(tmp_path), uninterrupted)


def test_restorable_backup_epoch_takes_the_previous_state_when_the_latest_is_cut(tmp_path):
    with pytest.raises(Killed):  # Killed while writing the weights of epoch 3 (index 2).
        fit_tiny(tmp_path, KillingBackup(tmp_path / training.BACKUP_DIR, 3, 5), resumed=False)
    backup_dir = tmp_path / training.BACKUP_DIR
    assert training.restorable_backup_epoch(backup_dir) == 2
    assert json.loads((backup_dir / training.BACKUP_METADATA).read_text())["epoch"] == 2
    assert training.read_backup_epoch(backup_dir / training.BACKUP_WEIGHTS,
                                      backup_dir / training.BACKUP_METADATA) == 2


def test_a_cut_first_backup_is_removed_and_training_starts_again(tmp_path):
    with pytest.raises(Killed):  # Killed while writing the first epoch count.
        fit_tiny(tmp_path, KillingBackup(tmp_path / training.BACKUP_DIR, 1, 7), resumed=False)
    assert training.resume_state(tmp_path) == (0, None)
    assert not (tmp_path / training.TRAINING_LOG_FILE).exists()
    assert not any((tmp_path / training.BACKUP_DIR).iterdir())


def write_events(path: Path, wall_times_and_steps: list[tuple[float, int]]) -> None:
    """An event file as a killed run leaves it: a header event, then one scalar per epoch."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(event_pb2.Event(wall_time=1.0, file_version="brain.Event:2")
                     .SerializeToString())
        for wall_time, step in wall_times_and_steps:
            event = event_pb2.Event(wall_time=wall_time, step=step)
            event.summary.value.add(tag="epoch_loss", simple_value=float(step))
            writer.write(event.SerializeToString())


def scalar_steps(logs_dir: Path, tag: str = "epoch_loss") -> list[int]:
    """The steps of ``tag``'s summaries in all event files under ``logs_dir``, sorted."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    steps = []
    for path in logs_dir.rglob("events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            event = event_pb2.Event.FromString(record)
            steps += [event.step for value in event.summary.value if value.tag == tag]
    return sorted(steps)


def test_summaries_after_the_backup_are_dropped_so_rerun_epochs_show_once(tmp_path):
    logs = tmp_path / "logs"
    killed_run = logs / "train" / "events.out.tfevents.1.host.1.v2"
    write_events(killed_run, [(100.0, 0), (200.0, 1), (300.0, 2)])  # Backed up after 1 and 2.
    earlier_run = logs / "validation" / "events.out.tfevents.0.host.1.v2"
    write_events(earlier_run, [(100.0, 0)])
    os.utime(earlier_run, (150.0, 150.0))  # Older than the backup: left as it is.
    before = earlier_run.read_bytes()
    with killed_run.open("ab") as stream:  # A record cut by the kill: its first bytes only.
        stream.write(b"\x1a\x00\x00\x00\x00")
    (logs / "train" / (killed_run.name + ".trim.tmp")).write_bytes(b"")  # A killed trim's.
    assert training.drop_summaries_after(logs, backed_up_at_s=250.0) == 1
    assert scalar_steps(logs / "train") == [0, 1]
    assert earlier_run.read_bytes() == before
    assert sorted(p.name for p in logs.rglob("*")) == sorted(
        ["train", "validation", killed_run.name, earlier_run.name])  # No temporary left.


def test_a_kill_while_deleting_the_backup_leaves_it_whole_or_gone(tmp_path, uninterrupted):
    fit_tiny(tmp_path, training.RunBackup(tmp_path / training.BACKUP_DIR, double_checkpoint=True,
                                          delete_checkpoint=False), resumed=False)
    backup_dir = tmp_path / training.BACKUP_DIR
    real_rmtree = shutil.rmtree

    def killed_rmtree(path, *args, **kwargs):
        if Path(path).exists():
            raise Killed(f"while deleting {path}")
        return real_rmtree(path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shutil, "rmtree", killed_rmtree)
        with pytest.raises(Killed):
            training.remove_backup(backup_dir)
    assert not backup_dir.exists() and (tmp_path / training.DELETED_BACKUP_DIR).is_dir()
    assert training.resume_state(tmp_path) == (0, None)  # Gone: nothing half-restored.
    assert not (tmp_path / training.DELETED_BACKUP_DIR).exists()


def test_a_finished_fit_killed_before_its_scores_resumes_with_no_epoch_to_train(
        tmp_path, uninterrupted):
    fit_tiny(tmp_path, training.RunBackup(tmp_path / training.BACKUP_DIR, double_checkpoint=True,
                                          delete_checkpoint=False), resumed=False)
    assert training.resume_state(tmp_path)[0] == EPOCHS
    assert_same_as_uninterrupted(tmp_path, rerun(tmp_path), uninterrupted)


def test_an_early_stopped_fit_killed_before_its_scores_does_not_train_on(tmp_path):
    stopped = fit_tiny(tmp_path, training.RunBackup(tmp_path / training.BACKUP_DIR,
                                                    double_checkpoint=True,
                                                    delete_checkpoint=False),
                       resumed=False, stop=StopAfterTwoEpochs())
    assert training.resume_state(tmp_path)[0] == EPOCHS  # Nothing left to train.
    resumed = rerun(tmp_path)
    assert [row["epoch"] for row in log_rows(tmp_path)] == ["0", "1"]
    for after, before in zip(resumed.get_weights(), stopped.get_weights()):
        np.testing.assert_array_equal(after, before)


def test_a_log_row_cut_by_a_kill_is_dropped(tmp_path):
    with pytest.raises(Killed):  # Killed after backing up 2 epochs.
        fit_tiny(tmp_path, KillingBackup(tmp_path / training.BACKUP_DIR, 2, 8), resumed=False)
    with (tmp_path / training.TRAINING_LOG_FILE).open("a") as stream:
        stream.write("1")  # A row "1x,..." of a longer run, cut after its first character.
    assert training.resume_state(tmp_path)[0] == 2
    assert [row["epoch"] for row in log_rows(tmp_path)] == ["0", "1"]


def test_rewriting_the_log_on_a_full_disk_keeps_the_old_log(tmp_path, monkeypatch):
    with pytest.raises(Killed):
        fit_tiny(tmp_path, KillingBackup(tmp_path / training.BACKUP_DIR, 2, 8), resumed=False)
    before = (tmp_path / training.TRAINING_LOG_FILE).read_text()

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(csv.DictWriter, "writerows", full_disk)
    with pytest.raises(OSError, match="No space left") as error:
        training.resume_state(tmp_path)
    assert error.value.errno == errno.ENOSPC
    assert (tmp_path / training.TRAINING_LOG_FILE).read_text() == before


def test_saving_model_keras_on_a_full_disk_keeps_the_previous_model(tmp_path, monkeypatch):
    model = tiny_model()
    path = tmp_path / training.MODEL_FILE
    training.save_model_atomically(model, path)
    before = path.read_bytes()

    def full_disk(self, filepath, *args, **kwargs):
        Path(filepath).write_bytes(b"PK\x03\x04 cut")
        raise OSError(errno.ENOSPC, "No space left on device", str(filepath))

    monkeypatch.setattr(keras.Model, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        training.save_model_atomically(model, path)
    assert path.read_bytes() == before  # The cut file is model.partial.keras, not trusted.


def fake_run_dir(tmp_path: Path) -> Path:
    """A folder ``check_run_dir`` accepts: config, labels and a (dummy) ``model.keras``."""
    from conftest import tiny_config
    from tfbird import config, labels

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config.save(tiny_config(tmp_path), run_dir / training.CONFIG_FILE)
    labels.write_labels(["a", "b"], run_dir / training.LABELS_FILE)
    (run_dir / training.MODEL_FILE).write_bytes(b"dummy")
    return run_dir


def test_a_killed_export_leaves_no_version_folder_and_the_rerun_writes_it(tmp_path,
                                                                         monkeypatch):
    from tfbird import exporter

    run_dir, exports_dir = fake_run_dir(tmp_path), tmp_path / "exports"

    def write_then_die(cfg, run_dir, labels, version_dir, *args):
        version_dir.mkdir(parents=True)
        (version_dir / "saved_model.pb").write_bytes(b"half")
        raise Killed("while writing the SavedModel")

    def write_whole(cfg, run_dir, labels, version_dir, tflite, *args):
        version_dir.mkdir(parents=True, exist_ok=True)
        (version_dir / "saved_model.pb").write_bytes(b"whole")
        tflite_path = version_dir / exporter.TFLITE_FILE
        tflite_path.write_bytes(b"tflite")
        return exporter.ExportResult(version_dir, {"none": tflite_path}, None, None, labels)

    monkeypatch.setattr(exporter, "write_export", write_then_die)
    with pytest.raises(Killed):
        exporter.export_run(run_dir, exports_dir, model_name="m", tflite=True)
    assert [p.name for p in (exports_dir / "m").iterdir()] == [".1.partial"]
    assert exporter.next_version(exports_dir / "m") == 1  # The part is no version.

    monkeypatch.setattr(exporter, "write_export", write_whole)
    result = exporter.export_run(run_dir, exports_dir, model_name="m", tflite=True)
    assert result.saved_model_dir == exports_dir / "m" / "1"
    assert sorted(p.name for p in (exports_dir / "m").iterdir()) == ["1"]
    assert (result.saved_model_dir / "saved_model.pb").read_bytes() == b"whole"
    assert result.tflite_paths["none"] == result.saved_model_dir / exporter.TFLITE_FILE
    assert result.tflite_paths["none"].read_bytes() == b"tflite"


PARENT_WITH_A_WORKER = """
import concurrent.futures, multiprocessing, sys, time
from tfbird import analyze

def worker_pid():
    import os
    return os.getpid()

if __name__ == "__main__":
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context,
                                                initializer=analyze.exit_when_parent_dies,
                                                initargs=(0.05,)) as pool:
        print(pool.submit(worker_pid).result(), flush=True)
        time.sleep(600)
"""


def process_alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its new parent to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_analyze_workers_end_when_analyze_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT_WITH_A_WORKER)
    parent = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, env={**os.environ,
                                                           "PYTHONPATH": str(Path(__file__).parents[1])})
    worker = int(parent.stdout.readline())
    assert process_alive(worker)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while process_alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(worker), f"worker {worker} outlived its killed parent"


def test_two_processes_writing_one_output_never_share_a_temporary_file(tmp_path, monkeypatch):
    from tfbird import artifacts

    path = tmp_path / "rec.csv"
    seen = []
    real_replace = os.replace

    def recording_replace(source, target):
        seen.append(Path(source).name)
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", recording_replace)
    artifacts.write_atomically(path, "a\n")
    monkeypatch.setattr(os, "getpid", lambda: 12345)
    artifacts.write_atomically(path, "b\n")
    assert seen[1] == "rec.csv.12345.tmp" and seen[0] != seen[1]
    assert path.read_text() == "b\n" and not list(tmp_path.glob("*.tmp"))


def test_errors_csv_on_a_full_disk_is_never_left_half_written(tmp_path, monkeypatch):
    from tfbird import artifacts

    path = tmp_path / "errors.csv"
    artifacts.write_atomically(path, "file,reason\nold.wav,unreadable\n")
    real_write_text = Path.write_text

    def full_disk(self, text, *args, **kwargs):
        real_write_text(self, text[:5], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError, match="No space left"):
        artifacts.write_atomically(path, "file,reason\nnew.wav,unreadable\n")
    assert path.read_text() == "file,reason\nold.wav,unreadable\n"
    assert not list(tmp_path.glob("*.tmp"))  # The cut temporary file is removed.


# --- Slow: the commands as subprocesses, SIGKILLed at seeded moments, then rerun -----------

REPO = Path(__file__).resolve().parents[1]
SEED = 18  # The issue's number: the kill moments' random delays.


def command_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}


def tfbird_command(*args) -> list[str]:
    return [sys.executable, "-m", "tfbird", *map(str, args)]


def kill_when(command: list[str], ready, delay_s: float = 0.0, timeout_s: float = 600) -> bool:
    """Starts ``command``, waits until ``ready()`` (or its end), then ``delay_s`` more, and
    SIGKILLs it. Returns whether it was killed (``False``: it finished first)."""
    process = subprocess.Popen(command, cwd=REPO, env=command_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout_s
        while not ready() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay_s)
        if process.poll() is not None:
            return False
        os.kill(process.pid, signal.SIGKILL)
        return True
    finally:
        process.wait(timeout=60)


def run_to_the_end(command: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=REPO, env=command_env(), capture_output=True,
                          text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def kill_moments(ready_checks: dict, seed: int = SEED) -> list[tuple[str, object, float]]:
    """``(name, ready, delay_s)`` for each named check, plus a seeded random delay after it
    (0-1.5 s), and two seeded start-up kills (0.2-4 s after the start)."""
    rng = random.Random(seed)
    moments = [(f"start-up +{delay:.2f}s", lambda: True, delay)
               for delay in (rng.uniform(0.2, 1.0), rng.uniform(1.0, 4.0))]
    return moments + [(name, ready, rng.uniform(0.0, 1.5)) for name, ready in ready_checks.items()]


def kill_and_rerun(command: list[str], moments) -> list[str]:
    """Kills ``command`` at each moment in turn (each a rerun of the same folder), then runs
    it to its end. Returns the moments at which it was killed."""
    killed = [name for name, ready, delay_s in moments if kill_when(command, ready, delay_s)]
    run_to_the_end(command)
    return killed


def count_files(folder: Path, pattern: str) -> int:
    return len(list(folder.glob(pattern))) if folder.is_dir() else 0


@pytest.mark.slow  # ~7 ingest starts of TensorFlow: ~2 min on 2 cores.
def test_ingest_killed_at_seeded_moments_ends_like_an_uninterrupted_run(tmp_path):
    from test_ingest_resume import comparable, shard_contents, write_corpus
    from conftest import tiny_config
    from tfbird import config, ingest

    data = write_corpus(tmp_path)
    (tmp_path / "broken.wav").write_bytes(b"RIFF not audio")
    data.write_text(data.read_text() + "broken.wav,sp0\n")  # One failure for failures.csv.
    cfg = tiny_config(tmp_path, data={"files_per_shard": 1, "validation_fraction": 0.25,
                                      "max_failures": 0.1})
    reference = ingest.ingest(cfg, data, tmp_path / "reference", progress=False)
    config_path = tmp_path / "cfg.yaml"
    config.save(cfg, config_path)
    out = tmp_path / "killed"
    command = tfbird_command("ingest", "--config", config_path, "--data", data, "--out", out,
                             "--quiet")
    killed = kill_and_rerun(command, kill_moments({
        "shard rename (a .tmp shard)": lambda: count_files(out, "*.tfrecord.tmp") > 0,
        "after 8 shards": lambda: count_files(out, "*.tfrecord.json") >= 8,
        "after 24 shards": lambda: count_files(out, "*.tfrecord.json") >= 24,
        "final merge (all sidecars)": lambda: count_files(out, "*.tfrecord.json") >= 40,
    }))
    print(f"killed at {len(killed)} moments: {killed}")
    assert len(killed) >= 4, killed
    resumed = json.loads((out / "manifest.json").read_text())
    assert comparable(resumed) == comparable(reference)
    assert resumed["failures"] and shard_contents(out, resumed) == shard_contents(
        tmp_path / "reference", reference)
    for name in ("ingested.csv", "failures.csv", "labels.txt"):
        assert (out / name).read_text() == (tmp_path / "reference" / name).read_text(), name
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def training_log_rows(run_dir: Path) -> int:
    path = run_dir / training.TRAINING_LOG_FILE
    return len(path.read_text().splitlines()) - 1 if path.is_file() else 0


def backed_up_epochs(run_dir: Path) -> int:
    path = run_dir / training.BACKUP_DIR / training.BACKUP_METADATA
    try:
        return json.loads(path.read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow  # ~7 trainings per variant of ResNet50 at 32x32: ~6 min each on 2 cores.
@pytest.mark.parametrize("strategy,freeze_epochs", [("default", 0), ("mirrored", 0),
                                                    ("default", 1)])
def test_train_killed_at_seeded_moments_logs_each_epoch_once(tiny_config_file, tiny_records,
                                                              tmp_path, strategy, freeze_epochs):
    run_dir = tmp_path / "run"
    command = tfbird_command(
        "train", "--config", tiny_config_file, "--run-dir", run_dir, "--epochs", 3, "--quiet",
        "--strategy", strategy, "--set", f"train.freeze_backbone_epochs={freeze_epochs}")
    killed = kill_and_rerun(command, kill_moments({
        "between epochs 1 and 2": lambda: training_log_rows(run_dir) >= 1,
        "inside the last epoch": lambda: backed_up_epochs(run_dir) >= 2,
        "during the final save and scoring": lambda: backed_up_epochs(run_dir) >= 3,
    }))
    print(f"killed at {len(killed)} moments: {killed}")
    assert len(killed) >= 3, killed
    with (run_dir / training.TRAINING_LOG_FILE).open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2]
    for phase in ("train", "validation"):  # TensorBoard's scalars: each epoch once too.
        assert scalar_steps(run_dir / training.LOGS_DIR / phase) == [0, 1, 2], phase
    assert not (run_dir / training.BACKUP_DIR).exists()
    best = keras.models.load_model(run_dir / training.MODEL_FILE, compile=False)
    assert best.count_params() > 0 and (run_dir / training.METRICS_FILE).is_file()
    again = subprocess.run(command, cwd=REPO, env=command_env(), capture_output=True, text=True)
    assert again.returncode != 0 and "holds a finished run" in again.stderr  # Not restarted.
    assert [int(r["epoch"]) for r in csv.DictReader(
        (run_dir / training.TRAINING_LOG_FILE).open())] == [0, 1, 2]


def analysis_outputs(out_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(out_dir)): p.read_text() for p in sorted(out_dir.rglob("*"))
            if p.is_file() and p.suffix in (".csv", ".json", ".txt")}


@pytest.mark.slow
def test_analyze_killed_at_seeded_moments_gives_the_uninterrupted_detections(
        trained_run, tiny_corpus, tmp_path):
    inputs = tiny_corpus / "train_audio"
    reference, out = tmp_path / "reference", tmp_path / "killed"
    arguments = [inputs, "--model", trained_run, "--min-conf", 0.0, "--jobs", 2, "--quiet"]
    run_to_the_end(tfbird_command("analyze", *arguments, "--out", reference))
    command = tfbird_command("analyze", *arguments, "--out", out)
    killed = kill_and_rerun(command, kill_moments({
        "first recording written": lambda: count_files(out, "**/*.csv") >= 1,
        "a temporary output": lambda: count_files(out, "**/*.tmp") >= 1,
        "half the recordings": lambda: count_files(out, "**/*.csv") >= 4,
    }))
    print(f"killed at {len(killed)} moments: {killed}")
    assert len(killed) >= 3, killed
    assert (out / "detections.csv").read_text() == (reference / "detections.csv").read_text()
    expected = analysis_outputs(reference)
    assert analysis_outputs(out) == expected
    assert not list(out.rglob("*.tmp"))


@pytest.mark.slow
def test_export_killed_at_seeded_moments_leaves_only_whole_versions(trained_run, tmp_path):
    from conftest import tiny_config
    from tfbird import config, exporter

    config_path = tmp_path / "cfg.yaml"
    config.save(tiny_config(tmp_path), config_path)
    model_dir = tmp_path / "exports" / "tfbird"
    command = tfbird_command("export", "--config", config_path, "--run-dir", trained_run,
                             "--quantize", "none", "float16", "dynamic", "--eval-windows", 0)
    killed = kill_and_rerun(command, kill_moments({
        "while the SavedModel is written": lambda: count_files(model_dir, ".*.partial") >= 1,
        "while the TFLite files are written": lambda: count_files(
            model_dir, f".*.partial/{exporter.TFLITE_FILES['none']}") >= 1,
    }))
    print(f"killed at {len(killed)} moments: {killed}")
    assert len(killed) >= 2, killed
    versions = sorted(p.name for p in model_dir.iterdir())
    assert versions == ["1"], versions  # Killed exports left no version and no part.
    for variant in ("none", "float16", "dynamic"):
        assert (model_dir / "1" / exporter.TFLITE_FILES[variant]).stat().st_size > 0
    assert (model_dir / "1" / "saved_model.pb").is_file()


@pytest.mark.parametrize("code,reason", [(errno.ENOSPC, "No space left on device"),
                                         (errno.EROFS, "Read-only file system")])
def test_a_full_disk_or_read_only_folder_is_one_message_naming_the_path(monkeypatch, capsys,
                                                                       code, reason):
    import argparse

    from tfbird import cli

    def refused_write(args):
        raise OSError(code, reason, "/data/runs/r1/model.partial.keras")

    class Parser:
        def parse_args(self, argv):
            return argparse.Namespace(command=refused_write)

    monkeypatch.setattr(cli, "build_parser", Parser)
    assert cli.main(["train"]) == cli.EXIT_WRITE_FAILED
    message = capsys.readouterr().err
    assert message.startswith("error: could not write /data/runs/r1/model.partial.keras: ")
    assert reason in message and "rerun the same command" in message

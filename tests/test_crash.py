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


def fit_tiny(run_dir: Path, backup: keras.callbacks.Callback, resumed: bool) -> keras.Model:
    """One ``fit`` as ``training.fit_in_phases`` runs it: CSV log, then the backup, last."""
    model = tiny_model()
    x, y = tiny_data()
    log = keras.callbacks.CSVLogger(run_dir / training.TRAINING_LOG_FILE, append=resumed)
    model.fit(x, y, batch_size=16, epochs=EPOCHS, shuffle=False, verbose=0,
              callbacks=[SlowEpochs(), log, backup])
    return model


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
    from tfbird import detections

    path = tmp_path / "rec.csv"
    seen = []
    real_replace = os.replace

    def recording_replace(source, target):
        seen.append(Path(source).name)
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", recording_replace)
    detections.write_atomically(path, "a\n")
    monkeypatch.setattr(os, "getpid", lambda: 12345)
    detections.write_atomically(path, "b\n")
    assert seen[1] == "rec.csv.12345.tmp" and seen[0] != seen[1]
    assert path.read_text() == "b\n" and not list(tmp_path.glob("*.tmp"))


def test_errors_csv_on_a_full_disk_is_never_left_half_written(tmp_path, monkeypatch):
    from tfbird import detections

    path = tmp_path / "errors.csv"
    detections.write_atomically(path, "file,reason\nold.wav,unreadable\n")
    real_write_text = Path.write_text

    def full_disk(self, text, *args, **kwargs):
        real_write_text(self, text[:5], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError, match="No space left"):
        detections.write_atomically(path, "file,reason\nnew.wav,unreadable\n")
    assert path.read_text() == "file,reason\nold.wav,unreadable\n"
    assert not list(tmp_path.glob("*.tmp"))  # The cut temporary file is removed.

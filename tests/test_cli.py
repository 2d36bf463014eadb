"""The command line: features, errors as one line with exit status 2, export, and the demo."""

import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import keras
import librosa
import numpy as np
import pytest
import soundfile
from conftest import REPO

from tfbird import cli


def test_features_writes_the_whole_recording_logmel(tmp_path):
    sr = 44100
    t = np.arange(int(2.5 * sr)) / sr
    stereo = np.stack([np.sin(2 * np.pi * 2000 * t), 0.5 * np.sin(2 * np.pi * 3000 * t)], 1)
    soundfile.write(tmp_path / "call.flac", 0.3 * stereo, sr)
    assert cli.main(["features", str(tmp_path / "call.flac"), "--out",
                     str(tmp_path / "call.npy")]) == 0
    logmel = np.load(tmp_path / "call.npy")
    y, _ = librosa.load(tmp_path / "call.flac", sr=32000)
    reference = librosa.power_to_db(librosa.feature.melspectrogram(
        y=y, sr=32000, n_fft=1024, hop_length=320, n_mels=128, fmin=20, fmax=16000),
        amin=1e-10, top_db=80).T
    assert logmel.dtype == np.float32 and logmel.shape == (1 + 80000 // 320, 128)
    assert np.abs(logmel - reference).max() < 0.05


def test_commands_hide_tensorflow_start_up_lines_and_the_library_does_not(tmp_path):
    soundfile.write(tmp_path / "call.wav", np.zeros(16000), 16000)
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(REPO)
    command = subprocess.run(
        [sys.executable, "-m", "tfbird", "features", str(tmp_path / "call.wav"), "--out",
         str(tmp_path / "call.npy")], env=env, capture_output=True, text=True, check=True)
    assert command.stdout.startswith("Log-mel 101 frames x 128 mels")  # 1 s at 32 kHz
    assert command.stderr == ""  # no "I0000 ... oneDNN", "E0000 ... cuInit", absl lines
    library = subprocess.run(
        [sys.executable, "-c", "import os, tfbird.cli, tfbird.analyze; "
                               "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))"],
        env=env, capture_output=True, text=True, check=True)
    assert library.stdout.strip() == "None"


def test_help_is_written_for_users_with_examples(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert "Train bird-sound classifiers on your recordings" in text
    assert "parse arguments" not in text and "library function" not in text
    assert "python -m tfbird analyze recordings/ --model exports/tfbird/1 --out" in text
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for layout in ("birdclef", "birdclef2025", "cornell", "folders", "raven", "csv"):
        assert f"{layout} (" in text, layout
    assert "default with --data: records/<data set name>[-fold<K>]" in text


def test_bad_input_is_one_line_and_status_2(tmp_path, capsys):
    assert cli.main(["ingest", "--data", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "error: Data path does not exist" in capsys.readouterr().err
    assert cli.main(["train", "--set", "train.epoch=2"]) == 2
    assert "Unknown config key train.epoch" in capsys.readouterr().err
    assert cli.main(["features", str(tmp_path / "x.wav"), "--out", str(tmp_path / "x.npy")]) == 2
    assert "file missing" in capsys.readouterr().err


def test_export_of_a_folder_that_is_not_a_run_says_what_a_run_holds(tmp_path, capsys):
    assert cli.main(["export", "--run-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {tmp_path} is not a run folder: it has no model.keras, "
                            f"config.yaml, labels.txt. A run folder is what train writes")
    assert "Config file not found" not in error


def test_train_cli_wrote_the_run(trained_run):
    scores = json.loads((trained_run / "metrics.json").read_text())
    assert {"macro_roc_auc", "padded_cmap", "row_f1"} <= set(scores)


def saved_groups(keras_file):
    """Top-level groups of a ``.keras`` file's weights (``layers``, ``optimizer``, ...)."""
    import h5py

    with zipfile.ZipFile(keras_file) as archive, archive.open("model.weights.h5") as stream:
        with h5py.File(io.BytesIO(stream.read()), "r") as weights:
            return sorted(weights)


def test_run_folder_models_hold_no_optimizer_state(trained_run):
    model = keras.models.load_model(trained_run / "model.keras", compile=False)
    weights_bytes = 4 * sum(int(np.prod(w.shape)) for w in model.weights)  # float32
    assert weights_bytes > 90e6  # ResNet50: 23.6 M values
    for path in (trained_run / "model.keras", trained_run / "checkpoints" / "last.keras"):
        assert "optimizer" not in saved_groups(path)
        # With AdamW's two moments the file was 3 times the weights (282 MB).
        assert weights_bytes < path.stat().st_size < 1.02 * weights_bytes, path


def test_export_cli_checks_agreement(trained_run, tiny_config_file, tiny_corpus, tmp_path, capsys):
    assert cli.main(["export", "--config", str(tiny_config_file), "--run-dir", str(trained_run),
                     "--model-name", "cli", "--version", "7",
                     "--set", f"export.exports_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    version_dir = tmp_path / "cli" / "7"
    size_mb = sum(p.stat().st_size for p in version_dir.rglob("*") if p.is_file()) / 1e6
    assert f"SavedModel: {version_dir} ({size_mb:.1f} MB, inference weights only)" in out
    # ResNet50's 23.6 M float32 weights and a 7-MB graph; 290 MB with AdamW's moments.
    assert 90 < size_mb < 105
    assert re.search(r"Agreement on 8 5-s windows .* saved_model \d\.\d\de[-+]\d\d", out), out


@pytest.mark.slow
def test_demo_quickstart_end_to_end(tmp_path):
    """The README's demo as a user runs it: synthesis, ingest, training, export (minutes)."""
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, str(REPO / "train.py"), "--strategy", "mirrored", "--quiet"],
                   cwd=tmp_path, env=env, check=True)
    run_dir, = (tmp_path / "runs").iterdir()
    scores = json.loads((run_dir / "metrics.json").read_text())
    assert scores["macro_roc_auc"] >= 0.90, scores
    subprocess.run([sys.executable, str(REPO / "export.py"), "--tflite"], cwd=tmp_path, env=env,
                   check=True)
    assert (tmp_path / "exports" / "tfbird" / "1" / "model.tflite").is_file()

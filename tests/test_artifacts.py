"""The run-folder and export contract: its writers, and that its readers need no training code."""

import json
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf

from tfbird import artifacts


def test_analyze_reads_a_run_folder_without_the_training_code(tmp_path):
    """``analyze`` runs the exported artefact: importing it, reading a run folder's contract
    and a thresholds file load neither ``training`` (Keras training, distribution) nor
    ``evaluation``."""
    from tfbird import config, labels

    config.save(config.Config(), tmp_path / artifacts.CONFIG_FILE)
    labels.write_labels(["sp00", "sp01"], tmp_path / artifacts.LABELS_FILE)
    (tmp_path / artifacts.MODEL_FILE).write_bytes(b"not read here")
    (tmp_path / artifacts.THRESHOLDS_FILE).write_text("label,threshold\nsp00,0.3\n")
    code = f"""
import sys
from tfbird import analyze, serving_client
from tfbird.config import AnalyzeConfig
info = analyze.read_model_info({str(tmp_path)!r})
cfg = AnalyzeConfig(thresholds={str(tmp_path / artifacts.THRESHOLDS_FILE)!r})
print(info.labels, analyze.class_thresholds(info.labels, cfg).tolist())
print(sorted(m for m in ("tfbird.training", "tfbird.evaluation") if m in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=120)
    contract, loaded = result.stdout.strip().splitlines()
    assert contract.startswith("('sp00', 'sp01') [0.30000001")
    assert loaded == "[]"


def test_environment_json_names_the_commit_and_package_versions(tmp_path):
    environment = artifacts.write_environment(tmp_path / artifacts.ENVIRONMENT_FILE)
    assert json.loads((tmp_path / artifacts.ENVIRONMENT_FILE).read_text()) == environment
    assert environment["packages"]["tensorflow"] == tf.__version__
    assert environment["packages"]["keras"] == keras.__version__
    assert environment["packages"]["numpy"] == np.__version__
    assert set(environment["packages"]) == set(artifacts.ENVIRONMENT_PACKAGES)
    commit = environment["git_commit"]
    assert commit is None or (len(commit) == 40 and int(commit, 16) >= 0)
    assert artifacts.git_commit(tmp_path) is None  # not a repository


def test_model_form_names_each_model_path(tmp_path):
    from tfbird.artifacts import model_form

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.keras").write_bytes(b"x")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "saved_model.pb").write_bytes(b"x")
    (tmp_path / "export" / "model.tflite").write_bytes(b"x")
    assert model_form(tmp_path / "run") == "run"
    assert model_form(tmp_path / "export") == "saved_model"
    assert model_form(tmp_path / "export" / "model.tflite") == "tflite"
    assert model_form(tmp_path) is None and model_form(tmp_path / "missing.tflite") is None

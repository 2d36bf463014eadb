"""Export: TF Serving layout, the serving signature, TFLite with builtin ops and a dynamic
batch, and agreement of Keras, SavedModel and TFLite."""

import json

import numpy as np
import pytest
import tensorflow as tf

from conftest import SHARED_AUDIO, requires_shared_audio
from tfbird import exporter, pipeline
from tfbird.config import AudioConfig


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports")
    return exporter.export_run(trained_run, exports_dir=out, model_name="birds", tflite=True)


def test_tf_serving_layout_and_assets(exported):
    version_dir = exported.saved_model_dir
    assert version_dir.name == "1" and version_dir.parent.name == "birds"
    assert (version_dir / "saved_model.pb").is_file()
    assert (version_dir / "variables").is_dir()
    assert (version_dir / "assets" / "labels.txt").read_text() == "sp00\nsp01\n"
    contract = json.loads((version_dir / "assets" / "model_config.json").read_text())
    assert contract["window_samples"] == 160000 and contract["audio"]["sample_rate_hz"] == 32000
    assert exported.tflite_path == version_dir / "model.tflite"


def test_next_export_gets_the_next_version(trained_run, exported):
    again = exporter.export_run(trained_run, exports_dir=exported.saved_model_dir.parents[1],
                                model_name="birds")
    assert again.saved_model_dir.name == "2"
    with pytest.raises(ValueError, match="already exists"):
        exporter.export_run(trained_run, exports_dir=exported.saved_model_dir.parents[1],
                            model_name="birds", version=1)


def test_serving_signature(exported):
    signature = tf.saved_model.load(str(exported.saved_model_dir)).signatures["serving_default"]
    inputs = signature.structured_input_signature[1]
    assert list(inputs) == ["waveform"]
    assert inputs["waveform"].shape.as_list() == [None, 160000]
    assert inputs["waveform"].dtype == tf.float32
    outputs = signature.structured_outputs
    assert list(outputs) == ["probabilities"] and outputs["probabilities"].shape.as_list() == [None, 2]
    probabilities = signature(waveform=tf.zeros([3, 160000]))["probabilities"].numpy()
    assert probabilities.shape == (3, 2) and np.all((probabilities >= 0) & (probabilities <= 1))


def test_tflite_uses_builtin_ops_and_a_dynamic_batch(exported):
    interpreter = tf.lite.Interpreter(model_path=str(exported.tflite_path))
    details = interpreter.get_signature_runner("serving_default").get_input_details()
    assert list(details["waveform"]["shape_signature"]) == [-1, 160000]
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert not any(name.startswith("Flex") for name in ops), ops
    assert "RFFT2D" in ops  # the front end is inside the model
    waves = np.random.default_rng(0).normal(scale=0.1, size=(4, 160000)).astype(np.float32)
    for batch in (1, 4):
        assert exporter.run_tflite(exported.tflite_path, waves[:batch]).shape == (batch, 2)


def synthetic_windows(count=8):
    rng = np.random.default_rng(0)
    t = np.arange(160000) / 32000
    return np.stack([0.3 * np.sin(2 * np.pi * (1000 + 500 * i) * t) + 0.05 * rng.normal(size=t.size)
                     for i in range(count)]).astype(np.float32)


def test_keras_saved_model_and_tflite_agree_on_synthetic_clips(exported):
    differences = exporter.compare_outputs(exported, synthetic_windows())
    assert set(differences) == {"saved_model", "tflite"}
    assert differences["saved_model"] < 1e-4 and differences["tflite"] < 1e-4


@requires_shared_audio
def test_keras_saved_model_and_tflite_agree_on_real_clips(exported):
    waveforms = pipeline.check_windows(SHARED_AUDIO, AudioConfig(), count=8)
    assert waveforms.shape == (8, 160000)
    assert np.std(waveforms, axis=1).min() > 0  # real audio, not padding
    differences = exporter.compare_outputs(exported, waveforms)
    assert differences["saved_model"] < 1e-4 and differences["tflite"] < 1e-4


def test_newest_run_and_missing_run(trained_run, tmp_path):
    assert exporter.newest_run(trained_run.parent) == trained_run
    with pytest.raises(ValueError, match="No trained run"):
        exporter.newest_run(tmp_path)

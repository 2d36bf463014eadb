"""Export: TF Serving layout, the serving signature, TFLite with builtin ops and a dynamic
batch, and agreement of Keras, SavedModel and TFLite."""

import json

import numpy as np
import pandas as pd
import pytest
import soundfile
import tensorflow as tf
from conftest import SHARED_AUDIO, requires_shared_audio

from tfbird import analyze, config, exporter, pipeline
from tfbird.config import AnalyzeConfig, AudioConfig


@pytest.fixture(scope="module")
def calibration(trained_run):
    run_cfg = config.load(trained_run / "config.yaml")
    return pipeline.record_windows(run_cfg.data.records, "train", run_cfg.audio, limit=4)


@pytest.fixture(scope="module")
def exported(trained_run, calibration, tmp_path_factory):
    """One export with all four TFLite variants (the only TFLite conversions of the module)."""
    out = tmp_path_factory.mktemp("exports")
    return exporter.export_run(trained_run, exports_dir=out, model_name="birds", tflite=True,
                               quantize=exporter.QUANTIZATIONS,
                               calibration_waveforms=calibration[0])


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
    assert set(differences) == {"saved_model", "tf_serving_request", "tflite", "tflite_float16",
                                "tflite_dynamic", "tflite_int8"}
    assert differences["saved_model"] < 1e-4 and differences["tflite"] < 1e-4
    assert differences["tf_serving_request"] < 1e-4
    assert differences["tflite_float16"] < 1e-2
    assert differences["tflite_dynamic"] < 0.1 and differences["tflite_int8"] < 0.1


def test_embed_and_labels_signatures(exported):
    signatures = tf.saved_model.load(str(exported.saved_model_dir)).signatures
    assert set(signatures) == {"serving_default", "embed", "labels"}
    embed = signatures["embed"]
    assert embed.structured_input_signature[1]["waveform"].shape.as_list() == [None, 160000]
    assert embed.structured_outputs["embedding"].shape.as_list() == [None, 2048]
    waves = synthetic_windows(3)
    embedding = embed(waveform=tf.constant(waves))["embedding"].numpy()
    assert embedding.shape == (3, 2048)
    # The embedding is what the classifier's logits layer reads: logits = W e + b.
    logits_layer = exported.serving_model.get_layer("tfbird_classifier").get_layer("logits")
    kernel, bias = (w.numpy() for w in logits_layer.weights)
    probabilities = 1 / (1 + np.exp(-(embedding @ kernel + bias)))
    np.testing.assert_allclose(probabilities, exported.serving_model.predict(waves, verbose=0),
                               atol=1e-4)
    labels = signatures["labels"]
    assert labels.structured_input_signature == ((), {})
    assert [x.decode() for x in labels()["labels"].numpy()] == ["sp00", "sp01"]


def test_tf_serving_predict_request_path(exported):
    assert exporter.serving_api_available()
    waves = synthetic_windows(4)
    request = exporter.predict_request(waves, model_name="birds")
    assert request.model_spec.name == "birds"
    assert request.inputs["waveform"].tensor_shape.dim[0].size == 4
    response = exporter.serve_predict_request(exported.saved_model_dir, request)
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    assert probabilities.shape == (4, 2) and response.model_spec.signature_name == "serving_default"
    np.testing.assert_allclose(probabilities, exported.serving_model.predict(waves, verbose=0),
                               atol=1e-4)
    embed = exporter.serve_predict_request(exported.saved_model_dir,
                                           exporter.predict_request(waves, signature_name="embed"))
    assert tf.make_ndarray(embed.outputs["embedding"]).shape == (4, 2048)
    labels = exporter.serve_predict_request(exported.saved_model_dir,
                                            exporter.predict_request(None, signature_name="labels"))
    assert tf.make_ndarray(labels.outputs["labels"]).tolist() == [b"sp00", b"sp01"]
    wrong = exporter.predict_request(waves, signature_name="labels")
    wrong.inputs["waveform"].CopyFrom(tf.make_tensor_proto(waves))
    with pytest.raises(ValueError, match=r"Received: inputs=\['waveform'\]"):
        exporter.serve_predict_request(exported.saved_model_dir, wrong)


def test_calibration_windows_come_from_the_training_records(calibration):
    waveforms, targets = calibration
    assert waveforms.shape == (4, 160000) and waveforms.dtype == np.float32
    assert targets.shape == (4, 2) and set(np.unique(targets)) <= {0.0, 1.0}
    assert np.std(waveforms, axis=1).min() > 0


@pytest.mark.parametrize("variant", exporter.QUANTIZATIONS)
def test_each_tflite_variant_runs_with_batch_1_and_4(exported, variant):
    path = exported.tflite_paths[variant]
    assert path.name == exporter.TFLITE_FILES[variant]
    interpreter = tf.lite.Interpreter(model_path=str(path))
    details = interpreter.get_signature_runner("serving_default").get_input_details()
    assert list(details["waveform"]["shape_signature"]) == [-1, 160000]
    assert not any(op["op_name"].startswith("Flex") for op in interpreter._get_ops_details())
    waves = synthetic_windows(4)
    expected = exported.serving_model.predict(waves, verbose=0)
    tolerance = {"none": 1e-4, "float16": 1e-2, "dynamic": 0.1, "int8": 0.1}[variant]
    for batch in (1, 4):
        probabilities = exporter.run_tflite(path, waves[:batch])
        assert probabilities.shape == (batch, 2)
        assert np.abs(probabilities - expected[:batch]).max() < tolerance


def test_quantized_files_are_smaller_and_int8_keeps_the_front_end_float(exported):
    sizes = {v: p.stat().st_size for v, p in exported.tflite_paths.items()}
    assert sizes["float16"] < 0.6 * sizes["none"]
    assert sizes["dynamic"] < 0.35 * sizes["none"] and sizes["int8"] < 0.35 * sizes["none"]
    interpreter = tf.lite.Interpreter(model_path=str(exported.tflite_paths["int8"]))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    dtype_in = lambda op: tensors[op["inputs"][0]]["dtype"]
    (rfft,) = [op for op in ops if op["op_name"] == "RFFT2D"]
    assert dtype_in(rfft) == np.float32
    assert dtype_in(next(op for op in ops if op["op_name"] == "LOG")) == np.float32
    convolutions = [op for op in ops if op["op_name"] == "CONV_2D"]
    assert len(convolutions) == 53 and all(dtype_in(op) == np.int8 for op in convolutions)


def test_tflite_variants_scored_on_labelled_windows(exported, calibration):
    waveforms, targets = calibration
    table = exporter.evaluate_tflite_variants(exported, waveforms, targets)
    assert table["variant"].tolist() == list(exporter.QUANTIZATIONS)
    assert table.loc[0, "max_abs_diff"] < 1e-4
    assert (table["size_mb"] > 0).all() and table["max_abs_diff"].between(0, 1).all()
    assert set(table.columns) >= {"roc_auc", "roc_auc_change", "mean_abs_diff"}


def test_analyze_runs_the_tflite_file(exported, tmp_path):
    waves = synthetic_windows(2).reshape(-1)  # 10 s: two back-to-back windows
    soundfile.write(tmp_path / "clip.wav", waves, 32000, subtype="FLOAT")
    cfg = AnalyzeConfig(min_conf=0.0, out_dir=str(tmp_path / "out"))
    summary = analyze.analyze([tmp_path / "clip.wav"], exported.tflite_path, cfg, progress=False)
    assert summary.analysed == 1
    rows = pd.read_csv(tmp_path / "out" / "clip.wav.csv")
    got = rows.pivot(index="start_s", columns="label", values="confidence").to_numpy()
    np.testing.assert_allclose(got, exporter.run_saved_model(exported.saved_model_dir,
                                                             synthetic_windows(2)), atol=1e-4)


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

"""Export: TF Serving layout, the serving signature, TFLite with builtin ops and a dynamic
batch, and agreement of Keras, SavedModel and TFLite."""

import contextlib
import io
import json
import re
import warnings
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import soundfile
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from conftest import SHARED_AUDIO, requires_shared_audio

from tfbird import analyze, config, detections, exporter, pipeline
from tfbird.config import AnalyzeConfig, AudioConfig, FrontendConfig
from tfbird.frontend import build_frontend


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


def test_saved_model_holds_the_inference_weights_only(exported):
    variables = tf.train.list_variables(str(exported.saved_model_dir / "variables" / "variables"))
    assert not [name for name, _ in variables if "optimizer" in name]
    saved_values = sum(int(np.prod(shape)) for name, shape in variables
                       if name != "_CHECKPOINTABLE_OBJECT_GRAPH")
    model_values = sum(int(np.prod(w.shape)) for w in exported.serving_model.weights)
    assert saved_values == model_values  # 23.6 M; with AdamW's moments 70.7 M more
    variables_bytes = sum(p.stat().st_size
                          for p in (exported.saved_model_dir / "variables").iterdir())
    assert 4 * model_values < variables_bytes < 1.01 * 4 * model_values
    graph_bytes = (exported.saved_model_dir / "saved_model.pb").stat().st_size  # 7 MB
    assert variables_bytes + graph_bytes < exported.saved_model_bytes < (
        variables_bytes + graph_bytes + 1e5)  # + assets/ and fingerprint.pb, no .tflite


def test_tflite_runs_on_litert_and_no_tf_lite_interpreter_is_left():
    package = Path(exporter.__file__).parent
    left = [f"{path.name}:{number}" for path in sorted(package.glob("*.py"))
            for number, line in enumerate(path.read_text().splitlines(), 1)
            if re.search(r"lite\.Interpreter\s*\(", line)]
    assert left == []
    assert exporter.Interpreter.__module__ == "ai_edge_litert.interpreter"


def test_converting_and_running_tflite_prints_no_interpreter_deprecation(tmp_path):
    waveform = keras.Input(shape=(160000,), name="waveform")
    logmel = build_frontend(AudioConfig(), FrontendConfig())(waveform)
    model = keras.Model(waveform, keras.layers.Dense(2)(keras.layers.Flatten()(logmel)))
    waves = synthetic_windows(2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (tmp_path / "m.tflite").write_bytes(exporter.convert_to_tflite(model, "int8", waves))
        assert exporter.run_tflite(tmp_path / "m.tflite", waves).shape == (2, 2)
    assert [str(w.message) for w in caught if "Interpreter is deprecated" in str(w.message)] == []


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
    interpreter = Interpreter(model_path=str(exported.tflite_path))
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
    assert differences["tflite_float16"] < 1e-2 and differences["tflite_dynamic"] < 1e-2
    assert differences["tflite_int8"] < 0.1


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
    interpreter = Interpreter(model_path=str(path))
    details = interpreter.get_signature_runner("serving_default").get_input_details()
    assert list(details["waveform"]["shape_signature"]) == [-1, 160000]
    assert not any(op["op_name"].startswith("Flex") for op in interpreter._get_ops_details())
    waves = synthetic_windows(4)
    expected = exported.serving_model.predict(waves, verbose=0)
    tolerance = {"none": 1e-4, "float16": 1e-2, "dynamic": 1e-2, "int8": 0.1}[variant]
    for batch in (1, 4):
        probabilities = exporter.run_tflite(path, waves[:batch])
        assert probabilities.shape == (batch, 2)
        assert np.abs(probabilities - expected[:batch]).max() < tolerance


def test_quantized_files_are_smaller_and_int8_keeps_the_front_end_float(exported):
    sizes = {v: p.stat().st_size for v, p in exported.tflite_paths.items()}
    assert sizes["float16"] < 0.6 * sizes["none"]
    assert sizes["dynamic"] < 0.35 * sizes["none"] and sizes["int8"] < 0.35 * sizes["none"]
    interpreter = Interpreter(model_path=str(exported.tflite_paths["int8"]))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    dtype_in = lambda op: tensors[op["inputs"][0]]["dtype"]
    (rfft,) = [op for op in ops if op["op_name"] == "RFFT2D"]
    assert dtype_in(rfft) == np.float32
    assert dtype_in(next(op for op in ops if op["op_name"] == "LOG")) == np.float32
    convolutions = [op for op in ops if op["op_name"] == "CONV_2D"]
    assert len(convolutions) == 53 and all(dtype_in(op) == np.int8 for op in convolutions)


def test_dynamic_variant_keeps_the_mel_filterbank_float_and_the_convolutions_int8(exported):
    interpreter = Interpreter(model_path=str(exported.tflite_paths["dynamic"]))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    weights = lambda op: tensors[op["inputs"][1]]
    ops = interpreter._get_ops_details()
    (mel,) = [op for op in ops if op["op_name"] == "FULLY_CONNECTED"
              and "log_mel_spectrogram" in weights(op)["name"]]
    assert weights(mel)["dtype"] == np.float32 and weights(mel)["shape"].tolist() == [128, 513]
    convolutions = [op for op in ops if op["op_name"] == "CONV_2D"]
    assert len(convolutions) == 53 and all(weights(op)["dtype"] == np.int8 for op in convolutions)


def front_end_model():
    waveform = keras.Input(shape=(160000,), name="waveform")
    return keras.Model(waveform, build_frontend(AudioConfig(), FrontendConfig())(waveform))


def run_tflite_bytes(model_bytes, waveforms):
    runner = Interpreter(model_content=model_bytes).get_signature_runner()
    return next(iter(runner(waveform=waveforms).values()))


def test_dynamic_range_front_end_matches_keras_only_with_the_float_filterbank():
    model = front_end_model()
    waves = synthetic_windows(3)
    expected = model.predict(waves, verbose=0)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    with contextlib.redirect_stdout(io.StringIO()):
        plain = converter.convert()
    # The cause: int8 filterbank -> hybrid kernel -> the power spectrum quantized to int8.
    assert np.abs(run_tflite_bytes(plain, waves) - expected).max() > 10.0  # dB
    fixed = exporter.convert_to_tflite(model, "dynamic")
    np.testing.assert_allclose(run_tflite_bytes(fixed, waves), expected, atol=1e-2)
    with pytest.raises(ValueError, match="No int8 mel filterbank"):
        exporter.keep_front_end_float(fixed, model)


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


@pytest.fixture(scope="module")
def sed_export(tmp_path_factory):
    """An untrained ``sed`` run (no training needed for shapes and agreement), exported."""
    from conftest import tiny_config

    from tfbird import labels as labels_lib
    from tfbird.model import build_classifier

    workspace = tmp_path_factory.mktemp("sed")
    cfg = tiny_config(workspace, model={"head": "sed", "image_size": [64, 32]})
    run_dir = workspace / "run"
    run_dir.mkdir()
    config.save(cfg, run_dir / "config.yaml")
    labels_lib.write_labels(["sp00", "sp01"], run_dir / "labels.txt")
    build_classifier(cfg.model, 2, (501, 128)).save(run_dir / "model.keras")
    return exporter.export_run(run_dir, exports_dir=workspace / "exports", model_name="sed")


@pytest.mark.slow  # Builds and exports a ResNet50 (~2 min on 2 busy cores).
def test_sed_serving_signature_also_returns_framewise_scores(sed_export):
    signature = tf.saved_model.load(str(sed_export.saved_model_dir)).signatures["serving_default"]
    outputs = signature.structured_outputs
    assert set(outputs) == {"probabilities", "framewise"}
    assert outputs["framewise"].shape.as_list() == [None, 501, 2]
    waves = synthetic_windows(3)
    served = signature(waveform=tf.constant(waves))
    np.testing.assert_allclose(served["framewise"].numpy(),
                               sed_export.framewise_model.predict(waves, verbose=0), atol=1e-5)
    np.testing.assert_allclose(served["probabilities"].numpy(),
                               sed_export.serving_model.predict(waves, verbose=0), atol=1e-5)
    # The clip score is an attention-weighted mean of the framewise scores.
    framewise = served["framewise"].numpy()
    assert np.all(served["probabilities"].numpy() <= framewise.max(axis=1) + 1e-5)


@pytest.mark.slow  # Builds and exports a ResNet50 (~2 min on 2 busy cores).
def test_analyze_takes_sed_detection_times_from_the_framewise_scores(sed_export, tmp_path):
    waves = synthetic_windows(2)
    soundfile.write(tmp_path / "clip.wav", waves.reshape(-1), 32000, subtype="FLOAT")
    framewise = sed_export.framewise_model.predict(waves, verbose=0)
    threshold = float(np.median(framewise))  # some frames above, some below
    cfg = AnalyzeConfig(min_conf=threshold, out_dir=str(tmp_path / "out"))
    analyze.analyze([tmp_path / "clip.wav"], sed_export.saved_model_dir, cfg, progress=False)
    rows = pd.read_csv(tmp_path / "out" / "clip.wav.csv")
    assert len(rows)
    spans = detections.framewise_spans(framewise, np.full(2, threshold), 5.0)
    for row in rows.itertuples():
        window, label = int(row.start_s // 5.0), ["sp00", "sp01"].index(row.label)
        begin, end = spans[window, label] + 5.0 * window
        assert (row.start_s, row.end_s) == (pytest.approx(begin, abs=1e-3),
                                            pytest.approx(end, abs=1e-3))


def test_multiclass_serving_model_outputs_the_softmax():
    cfg = config.from_dict({"model": {"task": "multiclass"}}).validate()
    frames = cfg.frontend.num_frames(cfg.audio.window_samples)
    inputs = keras.Input((frames, cfg.frontend.n_mels))
    x = keras.layers.GlobalAveragePooling1D()(inputs)
    classifier = keras.Model(inputs, keras.layers.Dense(4, name="logits")(x))
    serving = exporter.build_serving_model(cfg, classifier)
    assert serving.output_names == [exporter.OUTPUT_NAME] == ["probabilities"]
    waveform = np.random.default_rng(0).normal(0, 0.1, (2, cfg.audio.window_samples))
    probabilities = serving.predict(waveform.astype("float32"), verbose=0)
    logits = classifier.predict(build_frontend(cfg.audio, cfg.frontend)(
        waveform.astype("float32")), verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(probabilities, tf.nn.softmax(logits).numpy(), atol=1e-5)

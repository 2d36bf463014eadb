"""The log-mel statistics regression fused into the classifier (model.statistics_weight)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import scipy.special
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tfbird import dataset, statistics_head
from tfbird.config import ModelConfig
from tfbird.model import LogMelStatistics, StatisticsFusion, build_classifier
from tfbird.records import read_manifest


def test_logmel_statistics_are_the_per_mel_mean_then_std_over_time():
    logmel = np.random.default_rng(0).normal(-40.0, 12.0, [3, 50, 8]).astype("float32")
    got = np.asarray(LogMelStatistics()(logmel))
    expected = np.concatenate([logmel.mean(1), logmel.std(1)], axis=1)
    assert got.shape == (3, 16)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_logmel_statistics_add_the_spread_of_the_differences_and_the_maximum():
    logmel = np.random.default_rng(6).normal(-40.0, 12.0, [2, 50, 8]).astype("float32")
    layer = LogMelStatistics(("mean", "std", "delta_std", "max"))
    got = np.asarray(layer(logmel))
    expected = np.concatenate([logmel.mean(1), logmel.std(1), np.diff(logmel, axis=1).std(1),
                               logmel.max(1)], axis=1)
    assert got.shape == (2, 32) and layer.compute_output_shape((2, 50, 8)) == (2, 32)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    # A band rising by 1 dB per frame: its differences do not spread, its max is the last frame.
    ramp = np.tile(np.arange(50, dtype="float32")[None, :, None], [1, 1, 8])
    ramp_stats = np.asarray(LogMelStatistics(("delta_std", "max"))(ramp))
    np.testing.assert_allclose(ramp_stats, [[0.0] * 8 + [49.0] * 8], atol=1e-5)
    with pytest.raises(ValueError, match="features"):
        LogMelStatistics(("mean", "median"))


def test_fusion_of_multiclass_logits_is_the_weighted_geometric_mean_of_probabilities():
    rng = np.random.default_rng(1)
    network, statistics = rng.normal(size=[4, 5]), rng.normal(size=[4, 5])
    fused = np.asarray(StatisticsFusion(0.3, "multiclass")(
        [network.astype("float32"), statistics.astype("float32")]))
    p, q = scipy.special.softmax(network, -1), scipy.special.softmax(statistics, -1)
    geometric = p ** 0.7 * q ** 0.3
    np.testing.assert_allclose(scipy.special.softmax(fused, -1),
                               geometric / geometric.sum(1, keepdims=True), rtol=1e-5)
    multilabel = np.asarray(StatisticsFusion(0.3, "multilabel")(
        [network.astype("float32"), statistics.astype("float32")]))
    np.testing.assert_allclose(multilabel, 0.7 * network + 0.3 * statistics, rtol=1e-5)


def separable_features(rng, num_classes=3, per_class=20, dim=6):
    centres = rng.normal(0.0, 3.0, [num_classes, dim])
    y = np.repeat(np.arange(num_classes), per_class)
    x = centres[y] * np.array([1, 10, 100, 1, 1, 1])[:dim] + rng.normal(size=[len(y), dim])
    return x, y


def test_folded_regression_gives_sklearns_probabilities_multiclass():
    x, y = separable_features(np.random.default_rng(2))
    targets = np.eye(4)[y]  # Class 3 never occurs in training.
    kernel, bias = statistics_head.fit_logistic_regression(x, targets, "multiclass")
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000)).fit(
        x, y)
    probabilities = scipy.special.softmax(x @ kernel + bias, -1)
    np.testing.assert_allclose(probabilities[:, :3], reference.predict_proba(x), atol=1e-5)
    assert probabilities[:, 3].max() < 1e-12


def test_multiclass_regression_leaves_out_windows_without_a_class():
    x, y = separable_features(np.random.default_rng(5))
    targets = np.eye(3)[y]
    targets[::4] = 0.0  # Windows of no class (multiclass targets of an unlabelled window).
    kernel, bias = statistics_head.fit_logistic_regression(x, targets, "multiclass")
    labelled = targets.max(1) > 0
    scaler = StandardScaler().fit(x)  # The standardisation still sees every window.
    reference = LogisticRegression(C=0.1, max_iter=5000).fit(scaler.transform(x)[labelled],
                                                             y[labelled])
    np.testing.assert_allclose(scipy.special.softmax(x @ kernel + bias, -1),
                               reference.predict_proba(scaler.transform(x)), atol=1e-5)
    with pytest.raises(ValueError, match="at least 2 classes"):
        statistics_head.fit_logistic_regression(x, np.eye(3)[np.zeros(len(y), int)],
                                                "multiclass")


def test_folded_regression_of_two_classes_gives_sklearns_probabilities():
    x, y = separable_features(np.random.default_rng(3), num_classes=2)
    kernel, bias = statistics_head.fit_logistic_regression(x, np.eye(2)[y], "multiclass")
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000)).fit(
        x, y)
    np.testing.assert_allclose(scipy.special.softmax(x @ kernel + bias, -1),
                               reference.predict_proba(x), atol=1e-5)


def test_folded_regression_multilabel_is_one_binary_regression_per_class():
    rng = np.random.default_rng(4)
    x, y = separable_features(rng)
    targets = np.stack([y == 0, y != 2, np.zeros_like(y, bool)], 1).astype("float32")
    kernel, bias = statistics_head.fit_logistic_regression(x, targets, "multilabel")
    logits = x @ kernel + bias
    for k in (0, 1):
        reference = make_pipeline(StandardScaler(),
                                  LogisticRegression(C=0.1, max_iter=5000)).fit(x, targets[:, k])
        np.testing.assert_allclose(scipy.special.expit(logits[:, k]),
                                   reference.predict_proba(x)[:, 1], atol=1e-5)
    assert np.all(logits[:, 2] == statistics_head.ABSENT_CLASS_LOGIT)  # Never present.


def records_logmels(records_dir, manifest, split):
    logmels, targets = [], []
    for x, y in dataset.make_dataset(records_dir, manifest, split, 8,
                                     dataset.ReadSpec(task="multiclass")):
        logmels.append(x.numpy())
        targets.append(y.numpy())
    return np.concatenate(logmels), np.concatenate(targets)


def test_fused_classifier_equals_the_geometric_mean_of_network_and_sklearn(tiny_records,
                                                                          tmp_path):
    manifest = read_manifest(tiny_records)
    classifier = build_classifier(ModelConfig(image_size=(32, 32), task="multiclass"), 2,
                                  dataset.input_shape(manifest))
    fused = statistics_head.add_statistics_head(classifier, tiny_records, manifest, 0.5,
                                                "multiclass")
    assert statistics_head.has_statistics_head(fused)
    assert not statistics_head.has_statistics_head(classifier)

    x_train, y_train = records_logmels(tiny_records, manifest, "train")
    x_valid, _ = records_logmels(tiny_records, manifest, "valid")
    features = lambda x: np.concatenate([x.mean(1), x.std(1)], 1).astype(np.float64)
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000)).fit(
        features(x_train), y_train.argmax(1))
    p_network = scipy.special.softmax(np.asarray(classifier.predict_on_batch(x_valid)), -1)
    q_statistics = reference.predict_proba(features(x_valid))
    geometric = np.sqrt(p_network * q_statistics)
    got = scipy.special.softmax(np.asarray(fused.predict_on_batch(x_valid)), -1)
    np.testing.assert_allclose(got, geometric / geometric.sum(1, keepdims=True), atol=2e-3)

    fused.save(tmp_path / "fused.keras")
    reloaded = keras.models.load_model(tmp_path / "fused.keras", compile=False)
    np.testing.assert_allclose(np.asarray(reloaded.predict_on_batch(x_valid)),
                               np.asarray(fused.predict_on_batch(x_valid)), atol=1e-5)


def test_fused_classifier_reads_the_configured_statistics(tiny_records, tmp_path):
    manifest = read_manifest(tiny_records)
    classifier = build_classifier(ModelConfig(image_size=(32, 32), task="multiclass"), 2,
                                  dataset.input_shape(manifest))
    names = ("mean", "std", "delta_std", "max")
    fused = statistics_head.add_statistics_head(classifier, tiny_records, manifest, 0.5,
                                                "multiclass", feature_names=names)
    x_train, y_train = records_logmels(tiny_records, manifest, "train")
    x_valid, _ = records_logmels(tiny_records, manifest, "valid")
    features = lambda x: np.concatenate([x.mean(1), x.std(1), np.diff(x, axis=1).std(1),
                                         x.max(1)], 1).astype(np.float64)
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000)).fit(
        features(x_train), y_train.argmax(1))
    statistics_logits = keras.Model(fused.input, fused.get_layer("statistics_logits").output)
    got = scipy.special.softmax(np.asarray(statistics_logits.predict_on_batch(x_valid)), -1)
    np.testing.assert_allclose(got, reference.predict_proba(features(x_valid)), atol=2e-3)
    fused.save(tmp_path / "fused.keras")
    reloaded = keras.models.load_model(tmp_path / "fused.keras", compile=False)
    assert reloaded.get_layer("logmel_statistics").features == names


def test_statistics_features_are_checked():
    assert ModelConfig(statistics_features=("mean", "std", "delta_std", "max")).validate() is None
    for bad in [(), ("mean", "mean"), ("mean", "median")]:
        with pytest.raises(ValueError, match="model.statistics_features"):
            ModelConfig(statistics_features=bad).validate()


def test_statistics_weight_must_be_below_one_and_needs_an_image_backbone():
    with pytest.raises(ValueError, match="model.statistics_weight"):
        ModelConfig(statistics_weight=1.0).validate()
    with pytest.raises(ValueError, match="model.statistics_weight"):
        ModelConfig(backbone="birdnet", statistics_weight=0.5).validate()
    ModelConfig(statistics_weight=0.5).validate()


def test_training_fuses_the_regression_and_the_export_carries_it(tiny_cfg, tiny_records,
                                                                 tmp_path):
    from tfbird import config, exporter, pipeline, training

    raw = config.to_dict(tiny_cfg)
    raw["model"].update(task="multiclass", statistics_weight=0.5)
    raw["train"].update(strategy="default")
    cfg = config.from_dict(raw).validate()
    run_dir, scores = training.train(cfg, tiny_records, run_dir=tmp_path / "run", progress=False)
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    assert statistics_head.has_statistics_head(model)
    assert model.get_layer("statistics_fusion").weight == 0.5
    assert np.abs(model.get_layer("statistics_logits").get_weights()[0]).max() > 0  # Fitted.

    result = exporter.export_run(run_dir, exports_dir=tmp_path / "exports", tflite=True)
    waveforms, _ = pipeline.record_windows(tiny_records, "valid", cfg.audio, limit=3)
    differences = exporter.compare_outputs(result, waveforms)
    assert max(differences.values()) < 1e-4, differences
    manifest = read_manifest(tiny_records)
    x_valid, _ = records_logmels(tiny_records, manifest, "valid")
    _, y_score = training.predict_split(model, tiny_records, manifest, "valid", 4, "multiclass")
    np.testing.assert_allclose(y_score, scipy.special.softmax(
        np.asarray(model.predict_on_batch(x_valid)), -1), atol=1e-5)

"""The ResNet50 classifier: shapes, logits, weights from a file, and the offline ImageNet error."""

import keras
import numpy as np
import pytest

from tfbird import model as model_lib
from tfbird.config import ModelConfig


def test_classifier_outputs_one_logit_per_class_at_the_configured_image_size():
    classifier = model_lib.build_classifier(ModelConfig(image_size=(32, 64), dropout=0.1),
                                            num_classes=3, input_shape=(101, 40))
    assert classifier.input_shape == (None, 101, 40)
    assert classifier.output_shape == (None, 3)
    assert classifier.get_layer("resnet50").input_shape == (None, 32, 64, 3)
    assert classifier.get_layer("logits").activation is keras.activations.linear
    assert classifier.get_layer("logits").dtype_policy.compute_dtype == "float32"
    logits = classifier(np.random.default_rng(0).normal(size=(2, 101, 40)).astype("float32"))
    assert logits.shape == (2, 3)
    assert np.all(np.isfinite(logits))


def test_input_is_standardised_so_gain_does_not_matter():
    classifier = model_lib.build_classifier(ModelConfig(image_size=(32, 32)), 2, (40, 32))
    x = np.random.default_rng(1).normal(size=(1, 40, 32)).astype("float32")
    np.testing.assert_allclose(classifier(x - 30.0), classifier(x), atol=1e-4)


def test_from_scratch_every_residual_branch_starts_at_zero():
    backbone = model_lib.build_classifier(ModelConfig(image_size=(32, 32)), 2,
                                          (40, 32)).get_layer("resnet50")
    norms = [layer for layer in backbone.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    last_in_branch = [layer for layer in norms if layer.name.endswith("_3_bn")]
    assert len(last_in_branch) == 16  # ResNet50: 3 + 4 + 6 + 3 bottleneck blocks
    for layer in norms:
        expected = 0.0 if layer in last_in_branch else 1.0
        np.testing.assert_array_equal(layer.gamma.numpy(), expected, err_msg=layer.name)


def test_weights_from_a_file(tmp_path):
    backbone = keras.applications.ResNet50(include_top=False, weights=None,
                                           input_shape=(32, 32, 3), pooling="avg")
    path = tmp_path / "resnet50_notop.weights.h5"
    backbone.save_weights(path)
    classifier = model_lib.build_classifier(ModelConfig(weights=str(path), image_size=(32, 32)),
                                            2, (40, 32))
    for loaded, saved in zip(classifier.get_layer("resnet50").weights, backbone.weights):
        np.testing.assert_array_equal(loaded.numpy(), saved.numpy())


def test_bad_weights_value_is_named():
    with pytest.raises(ValueError, match="Received: weights='no/such/file.h5'"):
        model_lib.build_backbone("no/such/file.h5", (32, 32, 3))


def test_imagenet_offline_names_the_local_file_alternative(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(keras.src.applications.resnet.file_utils, "get_file", offline)
    with pytest.raises(ValueError) as error:
        model_lib.build_backbone("imagenet", (32, 32, 3))
    message = str(error.value)
    assert "--weights PATH" in message
    assert model_lib.IMAGENET_NOTOP_FILE in message
    assert "URL fetch failure" in message


def test_shrinking_keeps_short_events_wherever_they_are():
    """A one-frame call must survive the 501 -> 64 shrink at every position (plain bilinear
    resizing skips most frames)."""
    inputs = keras.Input((501, 128, 1))
    shrink = keras.Model(inputs, model_lib.resize_image(inputs, (501, 128), (64, 64)))
    impulses = np.zeros((501, 501, 128, 1), "float32")
    impulses[np.arange(501), np.arange(501)] = 1.0
    out = shrink.predict(impulses, batch_size=128, verbose=0)
    assert out.shape == (501, 64, 64, 1)
    assert out.reshape(501, -1).max(axis=1).min() > 0.005


def sed_classifier(**overrides):
    cfg = ModelConfig(image_size=(96, 32), head="sed", dropout=0.0, **overrides)
    return model_lib.build_classifier(cfg, num_classes=3, input_shape=(101, 40))


def randomize_attention(classifier, seed=0):
    """Gives ``sed_att`` a random kernel (it starts at zero: uniform attention)."""
    kernel = classifier.get_layer("sed_att").kernel
    kernel.assign(np.random.default_rng(seed).normal(scale=0.2, size=kernel.shape))


def test_sed_attention_starts_uniform_so_logit_pooling_starts_as_the_mean_step_logit():
    classifier = sed_classifier(sed_clip_pooling="logit")
    x = np.random.default_rng(5).normal(size=(2, 101, 40)).astype("float32")
    probe = keras.Model(classifier.input, [classifier.get_layer(name).output for name in
                                           ("sed_cla", "sed_att_softmax", "logits")])
    cla, attention, logits = (np.asarray(t) for t in probe(x))
    np.testing.assert_allclose(attention, 1 / 3, atol=1e-7)  # 3 time steps
    np.testing.assert_allclose(logits, cla.mean(axis=1), rtol=1e-5, atol=1e-6)


def test_sed_head_outputs_clip_logits_and_framewise_probabilities_per_input_frame():
    classifier = sed_classifier(sed_gru_units=4)
    assert classifier.output_shape == (None, 3)
    assert classifier.get_layer("resnet50").output.shape == (None, 3, 1, 2048)  # time, freq
    assert classifier.get_layer("sed_gru").output.shape == (None, 3, 8)  # 2 directions x 4
    assert classifier.get_layer("sed_cla").output.shape == (None, 3, 3)
    assert classifier.get_layer("sed_att").output.shape == (None, 3, 3)
    x = np.random.default_rng(2).normal(size=(2, 101, 40)).astype("float32")
    probe = keras.Model(classifier.input, classifier.get_layer("sed_framewise").output)
    steps = probe(x).numpy()  # [2, 3 steps, 3 classes]
    framewise = model_lib.framewise_model(classifier)(x).numpy()
    assert framewise.shape == (2, 101, 3)
    assert np.all((framewise > 0) & (framewise < 1))
    # Each frame takes the step whose span (101 / 3 frames) holds the frame's centre.
    step_of_frame = np.floor((np.arange(101) + 0.5) * 3 / 101).astype(int)
    np.testing.assert_array_equal(framewise, steps[:, step_of_frame])
    gap = model_lib.build_classifier(ModelConfig(image_size=(32, 32)), 2, (40, 32))
    with pytest.raises(ValueError, match="sed head"):
        model_lib.framewise_model(gap)
    assert model_lib.embedding_features(gap) is gap.get_layer("dropout").input


def test_sed_clip_score_is_the_attention_weighted_framewise_score(tmp_path):
    classifier = sed_classifier()
    randomize_attention(classifier)
    x = np.random.default_rng(3).normal(size=(4, 101, 40)).astype("float32")
    probe = keras.Model(classifier.input, [classifier.get_layer(name).output for name in
                                           ("sed_cla", "sed_att", "logits")])
    cla, att_tanh, logits = (np.asarray(t, np.float64) for t in probe(x))  # sed_att has tanh
    assert np.ptp(att_tanh, axis=1).max() > 0.1  # the attention is not uniform
    attention = np.exp(att_tanh)
    attention /= attention.sum(axis=1, keepdims=True)  # softmax over time
    clip = (attention / (1 + np.exp(-cla))).sum(axis=1)
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), clip, atol=1e-5)
    assert np.abs(logits).max() < 16.2  # log((1 - 1e-7) / 1e-7) bounds the logits

    path = tmp_path / "sed.keras"
    classifier.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(x), logits, atol=1e-5)
    assert model_lib.framewise_model(loaded)(x).shape == (4, 101, 3)

    embedding = keras.Model(loaded.input, model_lib.embedding_features(loaded))
    sequence = keras.Model(loaded.input, loaded.get_layer("sed_dropout").input)(x)
    assert embedding.output_shape == (None, 2048)
    np.testing.assert_allclose(embedding(x), np.mean(sequence, axis=1), rtol=1e-5, atol=1e-6)


def test_sed_head_averages_the_feature_map_over_frequency():
    feature_map = keras.Input((3, 2, 8))  # [time, freq, channels]
    head = keras.Model(feature_map, model_lib.sed_head(feature_map, 3, dropout=0.0))
    sequence = keras.Model(head.input, head.get_layer("sed_dropout").input)
    x = np.random.default_rng(4).uniform(size=(2, 3, 2, 8)).astype("float32")
    np.testing.assert_allclose(sequence(x), x.mean(axis=2), rtol=1e-6)


def test_sed_logit_pooling_gives_the_attention_weighted_step_logits():
    classifier = sed_classifier(sed_clip_pooling="logit")
    randomize_attention(classifier)
    x = np.random.default_rng(4).normal(size=(4, 101, 40)).astype("float32")
    probe = keras.Model(classifier.input, [classifier.get_layer(name).output for name in
                                           ("sed_cla", "sed_att", "logits")])
    cla, att_tanh, logits = (np.asarray(t, np.float64) for t in probe(x))
    assert np.ptp(att_tanh, axis=1).max() > 0.1
    attention = np.exp(att_tanh) / np.exp(att_tanh).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(logits, (attention * cla).sum(axis=1), rtol=1e-5, atol=1e-5)
    framewise = model_lib.framewise_model(classifier)(x).numpy()
    step_of_frame = np.floor((np.arange(101) + 0.5) * 3 / 101).astype(int)
    np.testing.assert_allclose(framewise, 1 / (1 + np.exp(-cla[:, step_of_frame])), atol=1e-6)
    with pytest.raises(ValueError, match="sed_clip_pooling"):
        ModelConfig(head="sed", sed_clip_pooling="max").validate()


def test_probability_to_logit_is_the_inverse_sigmoid_and_clips():
    p = np.array([0.0, 1e-9, 0.25, 0.5, 0.9, 1.0], "float32")
    logits = keras.ops.convert_to_numpy(model_lib.probability_to_logit(p))
    np.testing.assert_allclose(logits[2:5], np.log(p[2:5] / (1 - p[2:5])), atol=1e-5)
    np.testing.assert_allclose(logits[:2], np.log(1e-7 / (1 - 1e-7)), rtol=1e-4)
    assert np.isfinite(logits).all() and 15.0 < logits[-1] < 16.2


@pytest.mark.parametrize("backbone", ["mobilenetv3small", "efficientnetv2b0"])
def test_a_smaller_keras_application_is_the_backbone_without_its_pixel_rescaling(backbone):
    classifier = model_lib.build_classifier(ModelConfig(backbone=backbone, image_size=(32, 32)),
                                            3, (40, 32))
    network = model_lib.backbone_of(classifier)
    assert network.name.lower().replace("-", "") == backbone  # Keras' own model name
    assert network.input_shape == (None, 32, 32, 3)
    # include_preprocessing=False: no Rescaling of 0-255 pixels inside the network.
    assert not any(isinstance(layer, keras.layers.Rescaling) for layer in network.layers)
    logits = classifier(np.random.default_rng(2).normal(size=(2, 40, 32)).astype("float32"))
    assert logits.shape == (2, 3)
    assert np.all(np.isfinite(logits))


def test_every_configurable_image_backbone_has_a_constructor():
    from tfbird import config

    assert tuple(model_lib.IMAGE_BACKBONES) == config.IMAGE_BACKBONES
    with pytest.raises(ValueError, match="Received: backbone='birdnet'"):
        model_lib.build_backbone("none", (32, 32, 3), name="birdnet")


def test_clip_statistics_are_the_per_mel_mean_and_mean_square_of_the_standardised_log_mel():
    classifier = model_lib.build_classifier(
        ModelConfig(image_size=(32, 32), clip_statistics=True), 3, (40, 32))
    x = np.random.default_rng(3).normal(5.0, 2.0, size=(2, 40, 32)).astype("float32")
    stats = keras.Model(classifier.input, classifier.get_layer("statistics").output)(x)
    standardized = (x - x.mean(axis=(1, 2), keepdims=True)) / x.std(axis=(1, 2), keepdims=True)
    expected = np.concatenate([standardized.mean(axis=1), (standardized ** 2).mean(axis=1)], 1)
    np.testing.assert_allclose(stats, expected, atol=1e-3)
    # Beside the backbone's 2048 pooled features, into the logits.
    assert classifier.get_layer("logits").input.shape == (None, 2048 + 2 * 32)
    assert classifier(x).shape == (2, 3)


def test_clip_statistics_need_the_gap_head():
    with pytest.raises(ValueError, match="model.clip_statistics"):
        ModelConfig(head="sed", clip_statistics=True).validate()

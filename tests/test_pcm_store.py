"""Records holding int16 PCM (``--store pcm``): the reader gives the log-mels logmel records
give; a model with the front end inside trains on them and exports waveform in,
probabilities out."""

import json

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from tfbird import cli, config, dataset, exporter, ingest, records
from tfbird.config import AugmentConfig


@pytest.fixture(scope="module")
def pcm_records(tiny_cfg, tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("pcm") / "records"
    status = cli.main(["ingest", "--data", str(tiny_corpus), "--out", str(out), "--store",
                       "pcm", "--quiet"] + [f"--set=data.{k}={json.dumps(v)}" for k, v in {
                           "validation_fraction": tiny_cfg.data.validation_fraction,
                           "files_per_shard": tiny_cfg.data.files_per_shard}.items()])
    assert status == 0
    return out


def batches(records_dir, split, **kwargs):
    manifest = ingest.read_manifest(records_dir)
    data = dataset.make_dataset(records_dir, manifest, split, batch_size=4,
                                spec=dataset.ReadSpec(**kwargs))
    x, y = zip(*data.as_numpy_iterator())
    return np.concatenate(x), np.concatenate(y)


def test_manifest_names_the_store_and_the_records_hold_pcm(pcm_records, tiny_records):
    manifest = ingest.read_manifest(pcm_records)
    assert manifest["store"] == "pcm" and manifest["logmel_shape"] == [501, 128]
    assert manifest["feature"] == {"name": "pcm", "dtype": "int16", "shape": [160000]}
    assert ingest.read_manifest(tiny_records)["store"] == "logmel"
    shard = manifest["splits"]["train"]["shards"][0]["file"]
    serialized = next(iter(tf.data.TFRecordDataset(str(pcm_records / shard))))
    example = records.parse_example(serialized, 2, (160000,), "pcm")
    pcm = example["pcm"].numpy() * 32768
    assert np.abs(pcm).max() > 1000 and np.all(pcm == np.round(pcm))  # int16 steps


def test_logmel_and_pcm_records_give_the_same_logmel_batches(pcm_records, tiny_records):
    for split in ("train", "valid"):
        from_logmel, y_logmel = batches(tiny_records, split)
        from_pcm, y_pcm = batches(pcm_records, split)
        assert from_pcm.shape == from_logmel.shape == (len(y_logmel), 501, 128)
        np.testing.assert_array_equal(y_pcm, y_logmel)
        difference = np.abs(from_pcm - from_logmel)
        # float16 rounding of the logmel records (<= 0.03 dB at |x| < 64 dB) and int16
        # quantisation of the waveform (only near the -80 dB floor).
        assert np.median(difference) < 0.02 and np.quantile(difference, 0.999) < 0.1


def test_reader_gives_waveforms_for_a_model_with_the_front_end(pcm_records, tiny_records):
    waveforms, _ = batches(pcm_records, "valid", frontend_in_model=True)
    assert waveforms.shape[1:] == (160000,) and waveforms.dtype == np.float32
    with pytest.raises(ValueError, match="--store pcm"):
        batches(tiny_records, "valid", frontend_in_model=True)


def test_waveform_augmentation_in_the_pipeline(pcm_records):
    manifest = ingest.read_manifest(pcm_records)
    cfg = AugmentConfig(mixup_alpha=0.4, mixup_targets="union", background_dir=str(pcm_records),
                        background_probability=1.0, background_snr_db=(10.0, 10.0))
    x, y = next(iter(dataset.make_dataset(pcm_records, manifest, "train", batch_size=4,
                                          spec=dataset.ReadSpec(training=True, augment=cfg,
                                                                frontend_in_model=True))))
    assert x.shape == (4, 160000) and set(np.unique(y.numpy())) <= {0.0, 1.0}


@pytest.mark.slow
def test_training_with_the_front_end_in_the_model_then_export(pcm_records, tmp_path):
    cfg = tiny_config(tmp_path, data={"records": str(pcm_records), "store": "pcm"},
                      model={"frontend_in_model": True},
                      augment={"time_mask_frames": 20, "freq_mask_mels": 8,
                               "freq_shift_mels": 4, "noise_probability": 0.5,
                               "mixup_alpha": 0.4})
    config_file = tmp_path / "pcm.yaml"
    config.save(cfg, config_file)
    run_dir = tmp_path / "run"
    assert cli.main(["train", "--config", str(config_file), "--run-dir", str(run_dir),
                     "--quiet"]) == 0
    scores = json.loads((run_dir / "metrics.json").read_text())
    assert scores["examples"] == ingest.read_manifest(pcm_records)["splits"]["valid"]["examples"]
    import keras

    trained = keras.models.load_model(run_dir / "model.keras")
    assert trained.input_shape == (None, 160000)
    assert "log_mel_augmentation" in [layer.name for layer in trained.layers]

    result = exporter.export_run(run_dir, exports_dir=tmp_path / "exports")
    serve = tf.saved_model.load(str(result.saved_model_dir)).signatures["serving_default"]
    waveforms, _ = batches(pcm_records, "valid", frontend_in_model=True)
    probabilities = serve(waveform=tf.constant(waveforms[:3]))["probabilities"].numpy()
    expected = tf.sigmoid(trained(waveforms[:3], training=False)).numpy()
    assert probabilities.shape == (3, 2)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)


def test_the_statistics_regression_fuses_into_a_model_with_the_front_end(pcm_records,
                                                                         tmp_path):
    import keras

    from tfbird import statistics_head, training
    from tfbird.model import logmel_classifier

    cfg = tiny_config(tmp_path, data={"records": str(pcm_records), "store": "pcm"},
                      model={"frontend_in_model": True, "statistics_weight": 0.5},
                      train={"strategy": "default"})
    run_dir, _ = training.train(cfg, pcm_records, run_dir=tmp_path / "run", progress=False)
    trained = keras.models.load_model(run_dir / "model.keras", compile=False)
    assert trained.input_shape == (None, 160000)
    classifier = logmel_classifier(trained)
    assert statistics_head.has_statistics_head(classifier)
    assert np.abs(classifier.get_layer("statistics_logits").get_weights()[0]).max() > 0

    result = exporter.export_run(run_dir, exports_dir=tmp_path / "exports")
    serve = tf.saved_model.load(str(result.saved_model_dir)).signatures["serving_default"]
    waveforms, _ = batches(pcm_records, "valid", frontend_in_model=True)
    probabilities = serve(waveform=tf.constant(waveforms[:3]))["probabilities"].numpy()
    expected = tf.sigmoid(trained(waveforms[:3], training=False)).numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)

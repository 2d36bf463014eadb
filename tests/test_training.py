"""Training under MirroredStrategy with 2 replicas writes a complete run folder."""

import csv
import json

import keras
import numpy as np
import pytest

from tfbird import config, dataset, ingest, training


def test_run_folder_is_complete(trained_run, tiny_cfg):
    for name in ["config.yaml", "labels.txt", "model.keras", "metrics.json",
                 "training_log.csv", "checkpoints/last.keras"]:
        assert (trained_run / name).is_file(), name
    assert any((trained_run / "logs").rglob("events.out.tfevents.*"))
    assert (trained_run / "labels.txt").read_text() == "sp00\nsp01\n"
    assert config.load(trained_run / "config.yaml").train.strategy == "mirrored"
    with (trained_run / "training_log.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == tiny_cfg.train.epochs
    assert np.isfinite(float(rows[0]["loss"])) and "val_roc_auc" in rows[0]


def test_metrics_json_holds_the_validation_scores(trained_run, tiny_records, tiny_cfg):
    scores = json.loads((trained_run / "metrics.json").read_text())
    assert set(scores) == {"macro_roc_auc", "padded_cmap", "row_f1", "examples"}
    manifest = ingest.read_manifest(tiny_records)
    assert scores["examples"] == manifest["splits"]["valid"]["examples"]
    for key in ("macro_roc_auc", "padded_cmap", "row_f1"):
        assert 0.0 <= scores[key] <= 1.0
    # The file holds what the saved model scores now.
    model = keras.models.load_model(trained_run / "model.keras")
    again = training.evaluate(model, tiny_records, manifest, batch_size=4)
    assert again == pytest.approx(scores, abs=1e-6)


def test_mirrored_strategy_on_cpu_has_two_replicas():
    strategy = training.make_strategy(config.TrainConfig(strategy="mirrored", cpu_replicas=2))
    assert strategy.num_replicas_in_sync == 2


def test_batch_size_must_divide_among_replicas(tiny_cfg, tiny_records, tmp_path):
    cfg = config.from_dict({**config.to_dict(tiny_cfg), "train": {
        "strategy": "mirrored", "global_batch_size": 3}}).validate()
    with pytest.raises(ValueError, match="divisible by the 2 replicas"):
        training.train(cfg, tiny_records, run_dir=tmp_path / "run")


def test_training_input_is_shuffled_batched_and_repeated(tiny_records):
    manifest = ingest.read_manifest(tiny_records)
    data = dataset.make_dataset(tiny_records, manifest, "train", batch_size=2, training=True)
    batches = list(data.take(20).as_numpy_iterator())
    assert len(batches) == 20  # repeats beyond one pass
    x, y = batches[0]
    assert x.shape == (2, 501, 128) and y.shape == (2, 2)
    valid = dataset.make_dataset(tiny_records, manifest, "valid", batch_size=64, training=False)
    (x, y), = list(valid.as_numpy_iterator())
    assert len(x) == manifest["splits"]["valid"]["examples"]

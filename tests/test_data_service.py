"""``train.data_service``: the training input through an in-process tf.data service."""

import numpy as np
import pytest

from tfbird import cli, config, data_service, dataset, ingest


@pytest.fixture(scope="module")
def service():
    dispatcher = data_service.start_dispatcher(port=0)
    worker = data_service.start_worker(dispatcher.target, host="localhost", port=0)
    yield dispatcher.target
    worker.stop()
    dispatcher.stop()


def examples(batches):
    """Each example of some batches as (log-mel sum, targets), sorted: a multiset."""
    return sorted((round(float(x.sum()), 1), tuple(y.tolist()))
                  for xs, ys in batches for x, y in zip(xs, ys))


def test_the_service_serves_the_same_examples_as_the_plain_pipeline(tiny_records, service):
    manifest = ingest.read_manifest(tiny_records)
    read = dict(records_dir=tiny_records, manifest=manifest, split="valid", batch_size=2)
    plain = list(dataset.make_dataset(**read).as_numpy_iterator())
    served = list(dataset.make_dataset(**read, spec=dataset.ReadSpec(data_service=service))
                  .as_numpy_iterator())
    assert len(served) == len(plain) == np.ceil(manifest["splits"]["valid"]["examples"] / 2)
    assert examples(served) == examples(plain)
    assert len(examples(served)) == manifest["splits"]["valid"]["examples"]


def test_training_batches_from_the_service_are_the_training_examples(tiny_records, service):
    manifest = ingest.read_manifest(tiny_records)
    read = dict(records_dir=tiny_records, manifest=manifest, split="train", batch_size=2)
    everything = examples(dataset.make_dataset(**read).as_numpy_iterator())
    # No example shuffle buffer: 2 passes over the files fit in 7 batches of 2.
    served = list(dataset.make_dataset(**read, spec=dataset.ReadSpec(
        training=True, data_service=service, shuffle_buffer_size=1)).take(7).as_numpy_iterator())
    assert [x.shape for x, _ in served] == [(2, 501, 128)] * 7  # repeats, full batches
    assert len(everything) == 7 and set(examples(served)) == set(everything)


def test_train_flag_and_config_key(monkeypatch, tiny_config_file, tmp_path):
    from tfbird import pipeline

    seen = {}
    monkeypatch.setattr(pipeline, "prepare_and_train",
                        lambda cfg, **kwargs: (seen.update(cfg=cfg), (tmp_path, {"a": 1}))[1])
    assert cli.main(["train", "--config", str(tiny_config_file),
                     "--data-service", "grpc://cpu-box:5050"]) == 0
    assert seen["cfg"].train.data_service == "grpc://cpu-box:5050"
    with pytest.raises(ValueError, match="Received: train.data_service='cpu-box:5050'"):
        config.TrainConfig(data_service="cpu-box:5050").validate()

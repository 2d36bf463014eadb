"""``train.strategy: multiworker`` (TF_CONFIG checks, per-worker input, 2 localhost workers)
and ``tpu`` (a clear error without a TPU).

A process can hold one ``MultiWorkerMirroredStrategy`` and must create it before other
TensorFlow work, so the workers run as subprocesses on free localhost ports.
"""

import csv
import json
import os
import socket
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfbird import cli, config, dataset, distribute, ingest, training

# One worker of the fast test: 2 steps of a small dense model (no batch norm) on a fixed
# global batch of 8, each worker feeding its half; writes what it saw as JSON.
WORKER_SCRIPT = textwrap.dedent("""
    import json, sys
    import keras, numpy as np, tensorflow as tf
    from tfbird import config, distribute, training

    train_cfg = config.TrainConfig(strategy="multiworker", warmup_epochs=0.0,
                                   learning_rate=0.1)
    strategy = distribute.make_strategy(train_cfg)
    x, y = np.load(sys.argv[1])["x"], np.load(sys.argv[1])["y"]

    def dataset_fn(context):
        batch_size = context.get_per_replica_batch_size(8)
        data = tf.data.Dataset.from_tensor_slices((x, y))
        return data.shard(context.num_input_pipelines, context.input_pipeline_id).batch(
            batch_size)

    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="relu"),
                                  keras.layers.Dense(3)])
        training.compile_classifier(model, train_cfg, steps_per_epoch=10)
    history = model.fit(strategy.distribute_datasets_from_function(dataset_fn), epochs=1,
                        verbose=0)
    with open(sys.argv[2], "w") as stream:
        json.dump({"loss": history.history["loss"][0],
                   "replicas": strategy.num_replicas_in_sync,
                   "chief": bool(strategy.extended.should_checkpoint),
                   "index": distribute.worker_index(strategy),
                   "weights": [w.numpy().tolist() for w in model.weights]}, stream)
""")


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def tf_config(ports, index):
    return json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def run_workers(commands, cwd, timeout_s):
    """Starts one process per command with its TF_CONFIG; returns their completed results."""
    ports = free_ports(len(commands))
    processes = [subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": tf_config(ports, index)})
        for index, command in enumerate(commands)]
    try:
        outputs = [process.communicate(timeout=timeout_s) for process in processes]
    finally:
        for process in processes:  # One failed worker leaves the other waiting: end it.
            if process.poll() is None:
                process.kill()
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    return outputs


def test_two_localhost_workers_take_the_same_steps_as_one_process(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6)).astype("float32")
    y = (rng.random((16, 3)) > 0.5).astype("float32")
    np.savez(tmp_path / "data.npz", x=x, y=y)
    (tmp_path / "worker.py").write_text(WORKER_SCRIPT)
    run_workers([[sys.executable, "worker.py", "data.npz", f"out{i}.json"] for i in range(2)],
                cwd=tmp_path, timeout_s=300)
    results = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2)]
    assert [(r["replicas"], r["chief"], r["index"]) for r in results] == [(2, True, 0),
                                                                        (2, False, 1)]

    # The same 2 steps in this process on the whole global batch of 8.
    train_cfg = config.TrainConfig(warmup_epochs=0.0, learning_rate=0.1)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="relu"),
                              keras.layers.Dense(3)])
    start = [w.numpy() for w in model.weights]
    training.compile_classifier(model, train_cfg, steps_per_epoch=10)
    history = model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=1,
                        verbose=0)
    for result in results:
        assert result["loss"] == pytest.approx(history.history["loss"][0], abs=1e-5)
        for got, expected, before in zip(result["weights"], model.weights, start):
            assert np.abs(expected.numpy() - before).max() > 1e-3  # the steps moved it
            np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)


@pytest.mark.parametrize("value, message", [
    (None, "TF_CONFIG environment variable, which is not set"),
    ("{not json", "must be JSON"),
    ('{"cluster": {"worker": ["localhost:1"]}}', "must be JSON"),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 1}}',
     r"task.index in 0..0"),
])
def test_multiworker_without_a_valid_tf_config_names_it(monkeypatch, value, message):
    if value is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(ValueError, match=message) as error:
        distribute.make_strategy(config.TrainConfig(strategy="multiworker"))
    assert "TF_CONFIG" in str(error.value)


def test_a_tf_config_naming_this_worker_is_accepted(monkeypatch):
    value = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(value))
    assert distribute.read_tf_config() == value
    assert distribute.worker_index(tf.distribute.get_strategy()) == 0


def test_tpu_strategy_without_a_tpu_is_a_clear_error(tiny_config_file, capsys):
    with pytest.raises(ValueError, match="found no TPU at 'local'.*Received: tpu='local'"):
        distribute.make_strategy(config.TrainConfig(strategy="tpu"))
    assert cli.main(["train", "--config", str(tiny_config_file), "--strategy", "tpu",
                     "--set", "train.tpu=local"]) == 2
    assert "train.strategy tpu found no TPU" in capsys.readouterr().err


def split_examples(tiny_records, pipelines, split="train"):
    """Each input pipeline's examples of one pass (as log-mel sums), when reading ``split``
    as ``pipelines`` workers do."""
    manifest = ingest.read_manifest(tiny_records)
    seen = []
    for pipeline_id in range(pipelines):
        context = tf.distribute.InputContext(num_input_pipelines=pipelines,
                                             input_pipeline_id=pipeline_id)
        data = dataset.make_dataset(tiny_records, manifest, split, batch_size=1,
                                    input_context=context)
        seen.append(sorted(round(float(x.sum()), 2) for x, _ in data.as_numpy_iterator()))
    return seen


@pytest.mark.parametrize("pipelines", [2, 3])  # 2: one file each; 3: fewer files than workers
def test_each_worker_reads_its_own_share_of_the_examples(tiny_records, pipelines):
    manifest = ingest.read_manifest(tiny_records)
    files = dataset.shard_paths(tiny_records, manifest, "train")
    assert len(files) == 2
    everything, = split_examples(tiny_records, 1)
    shares = split_examples(tiny_records, pipelines)
    assert all(shares) and sorted(sum(shares, [])) == everything  # disjoint, complete
    assert len(everything) == manifest["splits"]["train"]["examples"]


def test_the_global_batch_is_divided_among_replicas(tiny_records):
    manifest = ingest.read_manifest(tiny_records)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    data = dataset.distributed_dataset(strategy, tiny_records, manifest, "train",
                                       global_batch_size=4,
                                       spec=dataset.ReadSpec(training=True))
    x, y = next(iter(data))
    assert [len(part) for part in strategy.experimental_local_results(x)] == [2, 2]
    assert [len(part) for part in strategy.experimental_local_results(y)] == [2, 2]


def training_log(run_dir):
    with (run_dir / training.TRAINING_LOG_FILE).open() as stream:
        return list(csv.DictReader(stream))


@pytest.mark.slow  # 3 processes trace ResNet50's train step: ~3 min on 2 cores.
def test_train_py_on_two_localhost_workers(tiny_config_file, tiny_records, tmp_path):
    """``python -m tfbird train --strategy multiworker`` on 2 workers: only the chief writes
    the run folder; its loss is on the scale of a single process's."""
    run_dirs = [tmp_path / "chief-run", tmp_path / "worker-run"]
    command = [sys.executable, "-m", "tfbird", "train", "--config", str(tiny_config_file),
               "--quiet", "--deterministic", "--set", "train.global_batch_size=2"]
    outputs = run_workers([command + ["--strategy", "multiworker", "--run-dir", str(run_dir)]
                           for run_dir in run_dirs], cwd=tmp_path, timeout_s=900)
    assert "the chief (task index 0) writes the run folder" in outputs[1][0]
    assert not run_dirs[1].exists() or not any(run_dirs[1].iterdir())
    for name in ["config.yaml", "labels.txt", "model.keras", "metrics.json",
                 "checkpoints/last.keras"]:
        assert (run_dirs[0] / name).is_file(), name
    assert config.load(run_dirs[0] / "config.yaml").train.strategy == "multiworker"
    assert not list(tmp_path.glob("*/backup*"))  # backups removed at the end

    single = subprocess.run(command + ["--run-dir", str(tmp_path / "single")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=900)
    assert single.returncode == 0, single.stderr[-3000:]
    loss_two = float(training_log(run_dirs[0])[0]["loss"])
    loss_one = float(training_log(tmp_path / "single")[0]["loss"])
    assert np.isfinite(loss_two) and loss_two == pytest.approx(loss_one, rel=0.5)

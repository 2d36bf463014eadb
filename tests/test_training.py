"""Training under MirroredStrategy with 2 replicas writes a complete run folder."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfbird import cli, config, dataset, distribute, ingest, metrics, training
from tfbird.model import build_classifier


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
    strategy = distribute.make_strategy(config.TrainConfig(strategy="mirrored", cpu_replicas=2))
    assert strategy.num_replicas_in_sync == 2


def test_batch_size_must_divide_among_replicas(tiny_cfg, tiny_records, tmp_path):
    cfg = config.from_dict({**config.to_dict(tiny_cfg), "train": {
        "strategy": "mirrored", "global_batch_size": 3}}).validate()
    with pytest.raises(ValueError, match="divisible by the 2 replicas"):
        training.train(cfg, tiny_records, run_dir=tmp_path / "run")


def test_training_input_is_shuffled_batched_and_repeated(tiny_records):
    manifest = ingest.read_manifest(tiny_records)
    data = dataset.make_dataset(tiny_records, manifest, "train", batch_size=2,
                                spec=dataset.ReadSpec(training=True))
    batches = list(data.take(20).as_numpy_iterator())
    assert len(batches) == 20  # repeats beyond one pass
    x, y = batches[0]
    assert x.shape == (2, 501, 128) and y.shape == (2, 2)
    valid = dataset.make_dataset(tiny_records, manifest, "valid", batch_size=64)
    (x, y), = list(valid.as_numpy_iterator())
    assert len(x) == manifest["splits"]["valid"]["examples"]


def dense_model():
    """Two Dense layers and no batch norm: a step depends only on the global batch."""
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="relu"),
                             keras.layers.Dense(3)])


def first_step_weights(strategy, train_cfg, x, y):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = dense_model()
        training.compile_classifier(model, train_cfg, steps_per_epoch=10)
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(len(x)), epochs=1, verbose=0,
              shuffle=False)
    return [w.numpy() for w in model.weights]


def test_two_replicas_take_the_same_first_step_as_one_on_the_same_global_batch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 6)).astype("float32")
    y = (rng.random((8, 3)) > 0.5).astype("float32")
    for loss in ("bce", "focal"):
        train_cfg = config.TrainConfig(warmup_epochs=0.0, learning_rate=0.1, loss=loss)
        one = first_step_weights(tf.distribute.get_strategy(), train_cfg, x, y)
        two = first_step_weights(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
                                 train_cfg, x, y)
        keras.utils.set_random_seed(0)
        start = [w.numpy() for w in dense_model().weights]
        for a, b, w0 in zip(one, two, start):
            assert np.abs(a - w0).max() > 1e-3  # the step moved the weights
            np.testing.assert_allclose(a, b, atol=1e-5)


def test_clipnorm_is_passed_to_adamw_and_refused_with_several_replicas():
    optimizer = training.build_optimizer(config.TrainConfig(clipnorm=0.5), steps_per_epoch=10)
    assert isinstance(optimizer, keras.optimizers.AdamW) and optimizer.clipnorm == 0.5
    assert training.build_optimizer(config.TrainConfig(), 10).clipnorm is None
    # Keras clips each replica's gradient before the sum: not the single-device step.
    with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
        with pytest.raises(ValueError, match="Received: clipnorm=0.5"):
            training.build_optimizer(config.TrainConfig(clipnorm=0.5), 10)


def test_focal_loss_down_weights_easy_examples():
    y_true = np.array([[1.0, 0.0]], "float32")
    logits = np.array([[2.0, -1.0]], "float32")
    focal = training.build_loss(config.TrainConfig(loss="focal", focal_gamma=2.0))
    bce = training.build_loss(config.TrainConfig())
    assert isinstance(focal, keras.losses.BinaryFocalCrossentropy) and focal.from_logits
    p = 1 / (1 + np.exp(-logits[0]))
    p_true = np.array([p[0], 1 - p[1]])  # probability given to the true value
    expected_bce = np.mean(-np.log(p_true))
    expected_focal = np.mean(-(1 - p_true) ** 2 * np.log(p_true))
    assert float(bce(y_true, logits)) == pytest.approx(expected_bce, rel=1e-5)
    assert float(focal(y_true, logits)) == pytest.approx(expected_focal, rel=1e-5)


def test_callbacks_profile_log_the_learning_rate_and_stop_early(tmp_path):
    train_cfg = config.TrainConfig(profile_batch=(2, 3), early_stopping_patience=1,
                                   warmup_epochs=0.0)
    callbacks = training.training_callbacks(tmp_path, train_cfg)
    stopping, = [c for c in callbacks if isinstance(c, keras.callbacks.EarlyStopping)]
    assert (stopping.monitor, stopping.patience, stopping.mode) == ("val_roc_auc", 1, "max")
    assert isinstance(callbacks[-1], keras.callbacks.BackupAndRestore)
    assert not any(isinstance(c, keras.callbacks.EarlyStopping)
                   for c in training.training_callbacks(tmp_path, config.TrainConfig()))

    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = np.stack([x[:, 0] > 0, x[:, 1] > 0, x[:, 2] > 0], axis=1).astype("float32")
    model = dense_model()
    training.compile_classifier(model, train_cfg, steps_per_epoch=4)
    model.fit(x, y, batch_size=8, epochs=2, validation_data=(x, y), verbose=0,
              callbacks=callbacks)
    traces = list((tmp_path / "logs").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    tags = {value.tag for path in (tmp_path / "logs" / "train").glob("events.out.tfevents.*")
            for event in tf.compat.v1.train.summary_iterator(str(path))
            for value in event.summary.value}
    assert {"epoch_learning_rate", "epoch_loss"} <= tags
    assert (tmp_path / "model.keras").is_file()
    assert not (tmp_path / training.BACKUP_DIR).exists()  # deleted when training ends


def test_resume_state_drops_log_rows_after_the_backup(tmp_path):
    import h5py

    (tmp_path / training.BACKUP_DIR).mkdir()
    with h5py.File(tmp_path / training.BACKUP_DIR / training.BACKUP_WEIGHTS, "w"):
        pass  # Weights, then the epoch count (BackupAndRestore's order).
    (tmp_path / training.BACKUP_DIR / "training_metadata.json").write_text(
        json.dumps({"epoch": 2, "batch": 0}))
    (tmp_path / training.TRAINING_LOG_FILE).write_text(
        "epoch,loss,val_roc_auc\n0,0.7,0.6\n1,0.6,0.8\n2,0.5,0.9\n")
    assert training.resume_state(tmp_path) == (2, 0.8)
    assert (tmp_path / training.TRAINING_LOG_FILE).read_text().splitlines() == [
        "epoch,loss,val_roc_auc", "0,0.7,0.6", "1,0.6,0.8"]
    (tmp_path / training.BACKUP_DIR / "training_metadata.json").unlink()
    assert training.resume_state(tmp_path) == (0, None)  # no backup: a fresh start
    assert not (tmp_path / training.TRAINING_LOG_FILE).exists()


def test_a_backup_made_with_another_config_is_not_resumed(tiny_cfg, tmp_path):
    config.save(tiny_cfg, tmp_path / training.CONFIG_FILE)
    (tmp_path / training.BACKUP_DIR).mkdir()
    training.check_resumable(tmp_path, tiny_cfg)  # same config: fine
    changed = config.from_dict({**config.to_dict(tiny_cfg),
                                "train": {**config.to_dict(tiny_cfg)["train"], "epochs": 9}})
    with pytest.raises(ValueError, match=r"changed=\['train.epochs'\]"):
        training.check_resumable(tmp_path, changed)


def test_deterministic_enables_op_determinism(monkeypatch):
    calls = []
    monkeypatch.setattr(tf.config.experimental, "enable_op_determinism",
                        lambda: calls.append(True))
    training.configure_determinism(config.TrainConfig())
    assert calls == []
    training.configure_determinism(config.TrainConfig(deterministic=True))
    assert calls == [True]


def test_train_flags_set_the_profiler_and_determinism(monkeypatch, tiny_config_file, tmp_path):
    from tfbird import pipeline

    seen = {}

    def fake_train(cfg, **kwargs):
        seen["cfg"] = cfg
        return tmp_path, {}

    monkeypatch.setattr(pipeline, "prepare_and_train", fake_train)
    assert cli.main(["train", "--config", str(tiny_config_file), "--profile-batch", "3,5",
                     "--deterministic"]) == 0
    assert seen["cfg"].train.profile_batch == (3, 5) and seen["cfg"].train.deterministic
    assert cli.main(["train", "--config", str(tiny_config_file)]) == 0
    assert seen["cfg"].train.profile_batch is None and not seen["cfg"].train.deterministic
    assert cli.main(["train", "--config", str(tiny_config_file), "--profile-batch", "5"]) == 2


def test_alias_flags_are_quoted_as_strings(monkeypatch, tiny_config_file, tmp_path):
    from tfbird import pipeline

    seen = {}

    def fake_train(cfg, **kwargs):
        seen.update(cfg=cfg, **kwargs)
        return tmp_path, {}

    monkeypatch.setattr(pipeline, "prepare_and_train", fake_train)
    assert cli.main(["train", "--config", str(tiny_config_file), "--data", "2024",
                     "--records", "no", "--strategy", "default"]) == 0
    assert seen["cfg"].data.path == "2024" and seen["cfg"].data.records == "no"
    assert seen["overwrite"] is False
    assert cli.set_strings((("data.path", "yes"), ("train.epochs", 3), ("a.b", None))) == [
        'data.path="yes"', "train.epochs=3"]


def test_a_finished_run_is_not_trained_again_without_overwrite(trained_run, tiny_config_file,
                                                              capsys):
    metrics_before = (trained_run / training.METRICS_FILE).read_text()
    log_before = (trained_run / training.TRAINING_LOG_FILE).read_text()
    assert cli.main(["train", "--config", str(tiny_config_file), "--run-dir", str(trained_run),
                     "--quiet"]) == 2
    error = capsys.readouterr().err
    assert f"{trained_run} holds a finished run" in error and "--overwrite" in error
    assert (trained_run / training.METRICS_FILE).read_text() == metrics_before
    assert (trained_run / training.TRAINING_LOG_FILE).read_text() == log_before


def test_overwrite_clears_a_finished_run_and_a_backup_always_resumes(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in (training.MODEL_FILE, training.METRICS_FILE, training.TRAINING_LOG_FILE):
        (run_dir / name).write_text("x")
    with pytest.raises(ValueError, match="holds a finished run"):
        training.check_not_finished(run_dir)
    (run_dir / training.BACKUP_DIR).mkdir()  # Killed after its model.keras: resumed.
    training.check_not_finished(run_dir)
    (run_dir / training.BACKUP_DIR).rmdir()
    training.check_not_finished(run_dir, overwrite=True)
    assert sorted(p.name for p in run_dir.iterdir()) == []


def training_log_epochs(run_dir):
    with (run_dir / training.TRAINING_LOG_FILE).open() as stream:
        return [int(row["epoch"]) for row in csv.DictReader(stream)]


@pytest.mark.slow  # Two processes each trace ResNet50's train step: ~2 min on 2 cores.
def test_a_killed_training_resumes_with_the_same_command(tiny_config_file, tiny_records, tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "tfbird", "train", "--config", str(tiny_config_file),
               "--run-dir", str(run_dir), "--epochs", "3", "--quiet", "--deterministic"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    metadata = run_dir / training.BACKUP_DIR / "training_metadata.json"
    deadline = time.monotonic() + 300
    while not metadata.is_file() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL, "training ended before it could be killed"
    done_before_kill = training_log_epochs(run_dir)
    assert done_before_kill[:1] == [0] and len(done_before_kill) < 3

    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming after epoch" in second.stderr
    assert training_log_epochs(run_dir) == [0, 1, 2]
    assert (run_dir / "metrics.json").is_file() and (run_dir / "model.keras").is_file()
    assert not (run_dir / training.BACKUP_DIR).exists()
    assert json.loads((run_dir / training.ENVIRONMENT_FILE).read_text())["packages"]


def test_training_phases_split_the_epochs_at_the_frozen_backbone_epochs():
    assert training.training_phases(config.TrainConfig(epochs=3)) == [
        training.Phase(0, 3, backbone_trainable=True)]
    assert training.training_phases(config.TrainConfig(epochs=5, freeze_backbone_epochs=2)) == [
        training.Phase(0, 2, backbone_trainable=False),
        training.Phase(2, 5, backbone_trainable=True)]
    assert training.training_phases(config.TrainConfig(epochs=2, freeze_backbone_epochs=2)) == [
        training.Phase(0, 2, backbone_trainable=False)]


def tiny_classifier_recording_fits(fits, kill_second_fit_at=None):
    """A ``build_classifier`` stand-in: a small model whose "backbone" (named like ResNet50)
    has a batch norm; each ``fit`` call appends ``(fit kwargs, weights after)`` to ``fits``.
    With ``kill_second_fit_at``, the second ``fit`` is killed at the start of that epoch."""

    def build(model_cfg, num_classes, input_shape):
        keras.utils.set_random_seed(0)
        inputs = keras.Input(input_shape)
        backbone = keras.Sequential([keras.Input((input_shape[1],)),
                                     keras.layers.Dense(4, name="dense"),
                                     keras.layers.BatchNormalization(momentum=0.5, name="bn")],
                                    name="resnet50")
        x = keras.layers.GlobalAveragePooling1D()(inputs)
        x = backbone(keras.layers.LayerNormalization(name="standardize")(x))
        model = keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x))
        original_fit = model.fit

        def fit(**kwargs):
            if kill_second_fit_at is not None and len(fits) == 1:
                *others, backup = kwargs["callbacks"]
                kwargs["callbacks"] = [*others, StopAtEpoch(kill_second_fit_at), backup]
            fits.append((kwargs, None))
            history = original_fit(**kwargs)
            fits[-1] = (kwargs, {w.path: w.numpy().copy() for w in model.weights})
            return history

        model.fit = fit
        return model

    return build


class StopAtEpoch(keras.callbacks.Callback):
    """Raises at the start of an epoch: a crash after the previous epoch's backup."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt(f"killed at epoch {epoch}")


def backbone_values(weights):
    return {path: value for path, value in weights.items() if path.startswith("resnet50/")}


def phase_cfg(tiny_cfg, epochs, frozen):
    return config.from_dict({**config.to_dict(tiny_cfg), "train": {
        **config.to_dict(tiny_cfg)["train"], "strategy": "default", "epochs": epochs,
        "freeze_backbone_epochs": frozen}}).validate()


def test_frozen_phase_trains_only_the_head_then_everything(tiny_cfg, tiny_records, tmp_path,
                                                           monkeypatch):
    fits = []
    monkeypatch.setattr(training, "build_classifier", tiny_classifier_recording_fits(fits))
    cfg = phase_cfg(tiny_cfg, epochs=2, frozen=1)
    keras.utils.set_random_seed(0)
    initial = {w.path: w.numpy() for w in training.build_classifier(
        cfg.model, 2, (501, 128)).weights}
    fits.clear()
    run_dir, _ = training.train(cfg, tiny_records, run_dir=tmp_path / "run", progress=False)

    (first, after_frozen), (second, after_all) = fits
    assert (first["initial_epoch"], first["epochs"]) == (0, 1)
    assert (second["initial_epoch"], second["epochs"]) == (1, 2)
    frozen = backbone_values(after_frozen)
    assert len(frozen) == 6  # kernel, bias, gamma, beta, moving mean and variance
    for path, value in frozen.items():  # batch norm in inference mode: statistics kept too
        np.testing.assert_array_equal(value, initial[path], err_msg=path)
    assert np.abs(after_frozen["logits/kernel"] - initial["logits/kernel"]).max() > 1e-4
    for path, value in backbone_values(after_all).items():
        assert np.abs(value - frozen[path]).max() > 1e-6, path
    assert training_log_epochs(run_dir) == [0, 1]
    assert not (run_dir / training.BACKUP_DIR).exists()


def test_a_run_killed_in_the_second_phase_resumes_there(tiny_cfg, tiny_records, tmp_path,
                                                        monkeypatch):
    cfg = phase_cfg(tiny_cfg, epochs=3, frozen=1)
    run_dir = tmp_path / "run"
    backup = run_dir / training.BACKUP_DIR

    def train_until_killed_at(epoch):
        fits = []
        monkeypatch.setattr(training, "build_classifier",
                            tiny_classifier_recording_fits(fits, kill_second_fit_at=epoch))
        with pytest.raises(KeyboardInterrupt):
            training.train(cfg, tiny_records, run_dir=run_dir, progress=False)
        return fits

    # Killed at the switch, before the second phase backed anything up.
    end_of_frozen = train_until_killed_at(1)[0][1]
    assert json.loads((backup / "frozen" / training.BACKUP_METADATA).read_text())["epoch"] == 1
    assert not (backup / training.BACKUP_METADATA).exists()

    # Rerun: the frozen phase only restores its backup; the second phase starts at epoch 1
    # from those weights and is killed again after backing up epoch 1.
    fits = train_until_killed_at(2)
    restored = fits[0][1]
    for path, value in end_of_frozen.items():
        if "optimizer" not in path:
            np.testing.assert_array_equal(restored[path], value, err_msg=path)
    assert fits[1][0]["initial_epoch"] == 1
    assert json.loads((backup / training.BACKUP_METADATA).read_text())["epoch"] == 2

    # Rerun: only the second phase runs, from its own backup, and finishes.
    fits = []
    monkeypatch.setattr(training, "build_classifier", tiny_classifier_recording_fits(fits))
    training.train(cfg, tiny_records, run_dir=run_dir, progress=False)
    assert len(fits) == 1 and fits[0][0]["initial_epoch"] == 1
    assert training_log_epochs(run_dir) == [0, 1, 2]
    assert not backup.exists() and (run_dir / "metrics.json").is_file()


def test_multiclass_loss_is_smoothed_softmax_cross_entropy():
    y_true = np.array([[0.0, 1.0, 0.0]], "float32")
    logits = np.array([[1.0, 2.0, -1.0]], "float32")
    loss = training.build_loss(config.TrainConfig(label_smoothing=0.1), task="multiclass")
    assert isinstance(loss, keras.losses.CategoricalCrossentropy) and loss.from_logits
    smoothed = y_true * 0.9 + 0.1 / 3
    log_p = logits[0] - np.log(np.exp(logits[0]).sum())
    assert float(loss(y_true, logits)) == pytest.approx(-(smoothed[0] * log_p).sum(), rel=1e-5)
    focal = training.build_loss(config.TrainConfig(loss="focal"), task="multiclass")
    assert isinstance(focal, keras.losses.CategoricalFocalCrossentropy)
    bce = training.build_loss(config.TrainConfig(label_smoothing=0.2))
    assert isinstance(bce, keras.losses.BinaryCrossentropy) and bce.label_smoothing == 0.2


def test_multiclass_roc_auc_scores_the_softmax_against_the_primary_classes():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    logits = rng.normal(size=(12, 3)).astype("float32")
    classes = np.array([0, 1, 2] * 4)
    targets = np.eye(3, dtype="float32")[classes]
    targets[5] = 1 / 3  # a window without a class: uniform target, a negative everywhere
    metric = training.SoftmaxROCAUC(multi_label=True, name="roc_auc", num_thresholds=2000)
    metric.update_state(targets, logits)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    positives = np.eye(3)[classes]
    positives[5] = 0
    expected = roc_auc_score(positives, probabilities, average="macro")
    assert float(metric.result()) == pytest.approx(expected, abs=0.01)
    # Sigmoid of the logits ranks differently: the softmax is what is scored.
    sigmoid_auc = roc_auc_score(positives, 1 / (1 + np.exp(-logits)), average="macro")
    assert expected != pytest.approx(sigmoid_auc, abs=0.01)


def summaries(log_dir):
    """``{tag: [(step, value as numpy, plugin name)]}`` of every event file in ``log_dir``."""
    found = {}
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append(
                    (event.step, tf.make_ndarray(value.tensor),
                     value.metadata.plugin_data.plugin_name))
    return found


def test_tensorboard_shows_augmented_inputs_and_per_class_auc(tiny_cfg, tiny_records, tmp_path,
                                                              monkeypatch):
    monkeypatch.setattr(training, "build_classifier", tiny_classifier_recording_fits([]))
    cfg = config.from_dict({**config.to_dict(tiny_cfg), "augment": {"freq_mask_mels": 30},
                            "train": {**config.to_dict(tiny_cfg)["train"],
                                      "strategy": "default"}}).validate()
    run_dir, scores = training.train(cfg, tiny_records, run_dir=tmp_path / "run", progress=False)

    train_logs = summaries(run_dir / "logs" / "train")
    (step, image, plugin), = train_logs["augmented_inputs"]
    assert (step, plugin) == (0, "images")
    width, height, *pngs = image  # tf.summary.image: width, height, then one PNG per example
    assert (int(width), int(height), len(pngs)) == (501, 128, training.INPUT_IMAGES)
    first = tf.io.decode_png(pngs[0]).numpy()
    assert first.shape == (128, 501, 1) and first.min() == 0 and first.max() == 255
    # A SpecAugment band (set to the example's floor) shows as black rows, full width.
    assert any((tf.io.decode_png(png).numpy()[..., 0] == 0).all(axis=1).sum() >= 2
               for png in pngs)
    assert "epoch_learning_rate" in train_logs

    valid_logs = summaries(run_dir / "logs" / "validation")
    manifest = ingest.read_manifest(tiny_records)
    for label in manifest["labels"]:
        (step, value, plugin), = valid_logs[f"per_class_auc/{label}"]
        assert step == cfg.train.epochs and plugin == "scalars" and 0.0 <= float(value) <= 1.0
    model = keras.models.load_model(run_dir / "model.keras")
    y_true, y_score = training.predict_split(model, tiny_records, manifest, "valid", 4)
    per_class = metrics.per_class_table(y_true, y_score, manifest["labels"])
    for row in per_class.itertuples():
        assert float(valid_logs[f"per_class_auc/{row.label}"][0][1]) == pytest.approx(
            row.roc_auc, abs=1e-6)
    (_, text, plugin), = valid_logs["per_class_auc"]
    assert plugin == "text" and text.item().decode().startswith("| label | support | ROC-AUC")


def test_adamw_decays_kernels_but_not_biases_or_batch_norm():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                              keras.layers.BatchNormalization(), keras.layers.LayerNormalization()])
    for w in model.trainable_weights:
        w.assign(keras.ops.ones_like(w) * 0.5)
    train_cfg = config.TrainConfig(learning_rate=0.1, weight_decay=0.2, warmup_epochs=0.0)
    optimizer = training.build_optimizer(train_cfg, steps_per_epoch=10)
    # Zero gradients: Adam's step is 0, so only the decoupled weight decay moves a weight.
    optimizer.apply_gradients([(keras.ops.zeros_like(w), w) for w in model.trainable_weights])
    kernel = model.layers[0].kernel
    assert kernel.numpy() == pytest.approx(np.full((4, 3), 0.5 * (1 - 0.1 * 0.2)))
    others = [w for w in model.trainable_weights if w is not kernel]
    assert sorted(w.name for w in others) == ["beta", "beta", "bias", "gamma", "gamma"]
    for w in others:
        assert w.numpy() == pytest.approx(np.full(w.shape, 0.5))


@pytest.mark.parametrize("image_rows, steps, level", [(64, 2, "WARNING"), (128, 4, "INFO")])
def test_sed_time_steps_are_logged_and_too_few_are_warned(caplog, image_rows, steps, level):
    model_cfg = config.ModelConfig(image_size=(image_rows, 32), head="sed")
    classifier = build_classifier(model_cfg, num_classes=2, input_shape=(101, 40))
    with caplog.at_level("INFO", logger="tfbird.training"):
        training.log_sed_time_resolution(classifier, window_s=5.0)
    (record,) = caplog.records
    assert record.levelname == level
    assert f"{steps} time steps of {5.0 / steps:.2f} s per 5-s window" in record.getMessage()

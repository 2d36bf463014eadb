"""A trained run -> a SavedModel for TF Serving (waveform in, probabilities out) and TFLite.

The exported model is ``LogMelSpectrogram`` (the same layer ingest used) -> the trained
classifier -> sigmoid, so a client sends 5-s waveforms at the model's sample rate and never
computes features itself. Layout, as TF Serving expects::

    exports/<model_name>/<version>/saved_model.pb
                                   variables/
                                   assets/labels.txt         one label per line, index order
                                   assets/model_config.json  sample rate, window, front end
                                   model.tflite              with --tflite

Example:
    >>> result = export_run("runs/20261121-101500", tflite=True)
    >>> result.saved_model_dir
    PosixPath('exports/tfbird/1')
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tfbird import config, labels as labels_lib
from tfbird.frontend import build_frontend
from tfbird.training import CONFIG_FILE, LABELS_FILE, MODEL_FILE

SIGNATURE = "serving_default"
INPUT_NAME = "waveform"
OUTPUT_NAME = "probabilities"
TFLITE_FILE = "model.tflite"


@dataclasses.dataclass(frozen=True)
class ExportResult:
    saved_model_dir: Path
    tflite_path: Path | None
    serving_model: keras.Model
    labels: list[str]


def newest_run(runs_dir: str | Path) -> Path:
    """The most recent run folder under ``runs_dir`` that holds a trained model."""
    runs = sorted(p.parent for p in Path(runs_dir).glob(f"*/{MODEL_FILE}"))
    if not runs:
        raise ValueError(f"No trained run (a folder with {MODEL_FILE}) under {runs_dir}; "
                         f"run train.py first or pass --run-dir. Received: runs_dir={str(runs_dir)!r}")
    return runs[-1]


def build_serving_model(cfg: config.Config, classifier: keras.Model) -> keras.Model:
    """Waveform ``[batch, window_samples]`` -> probabilities ``[batch, classes]``."""
    waveform = keras.Input(shape=(cfg.audio.window_samples,), name=INPUT_NAME)
    logmel = build_frontend(cfg.audio, cfg.frontend)(waveform)
    logits = classifier(logmel)
    probabilities = keras.layers.Activation("sigmoid", dtype="float32", name=OUTPUT_NAME)(logits)
    return keras.Model(waveform, probabilities, name="tfbird_serving")


def next_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def export_run(run_dir: str | Path, exports_dir: str | Path | None = None,
               model_name: str | None = None, version: int | None = None,
               tflite: bool = False) -> ExportResult:
    """Exports the best model of a run.

    Args:
        run_dir: a training run folder (``model.keras``, ``config.yaml``, ``labels.txt``).
        exports_dir: parent of the model folders; default ``export.exports_dir`` of the run.
        model_name: model folder name; default ``export.model_name`` of the run.
        version: version folder number; default the next free integer.
        tflite: also write ``model.tflite`` (builtin ops only, dynamic batch).

    Returns:
        Where things were written, and the Keras serving model they were made from.
    """
    run_dir = Path(run_dir)
    if not (run_dir / MODEL_FILE).is_file():
        raise ValueError(f"No {MODEL_FILE} in the run folder. Received: run_dir={str(run_dir)!r}")
    cfg = config.load(run_dir / CONFIG_FILE)
    labels = labels_lib.read_labels(run_dir / LABELS_FILE)
    serving_model = build_serving_model(cfg, keras.models.load_model(run_dir / MODEL_FILE))

    model_dir = Path(exports_dir or cfg.export.exports_dir) / (model_name or cfg.export.model_name)
    version_dir = model_dir / str(version or next_version(model_dir))
    if version_dir.exists():
        raise ValueError(f"Export version folder already exists. Received: version_dir={version_dir}")
    save_serving_model(serving_model, version_dir, labels, cfg)
    tflite_path = None
    if tflite:
        tflite_path = version_dir / TFLITE_FILE
        tflite_path.write_bytes(convert_to_tflite(serving_model))
    return ExportResult(version_dir, tflite_path, serving_model, labels)


def serving_function(model: keras.Model, window_samples: int) -> tf.types.experimental.PolymorphicFunction:
    """The ``serving_default`` signature: ``{waveform}`` -> ``{probabilities}``."""
    spec = tf.TensorSpec([None, window_samples], tf.float32, name=INPUT_NAME)

    @tf.function(input_signature=[spec])
    def serve(waveform):
        return {OUTPUT_NAME: model(waveform, training=False)}

    return serve


def save_serving_model(model: keras.Model, version_dir: Path, labels: list[str],
                       cfg: config.Config) -> None:
    """Writes the SavedModel with its ``serving_default`` signature and asset files."""
    with tempfile.TemporaryDirectory() as staging:
        labels_path = Path(staging) / "labels.txt"
        labels_lib.write_labels(labels, labels_path)
        config_path = Path(staging) / "model_config.json"
        config_path.write_text(json.dumps(model_contract(cfg, labels), indent=2))

        module = tf.Module()
        module.model = model
        module.labels_file = tf.saved_model.Asset(str(labels_path))
        module.config_file = tf.saved_model.Asset(str(config_path))
        serve = serving_function(model, cfg.audio.window_samples)
        tf.saved_model.save(module, str(version_dir), signatures={SIGNATURE: serve})


def model_contract(cfg: config.Config, labels: list[str]) -> dict:
    """What a client must know to feed the model: saved as ``assets/model_config.json``."""
    dicts = config.to_dict(cfg)
    return {"input": INPUT_NAME, "output": OUTPUT_NAME,
            "window_samples": cfg.audio.window_samples, "num_classes": len(labels),
            "audio": dicts["audio"], "frontend": dicts["frontend"]}


def convert_to_tflite(model: keras.Model) -> bytes:
    """Converts the Keras serving model with builtin TFLite ops only.

    ``from_keras_model`` is used on purpose: converting the SavedModel or the serving
    ``tf.function`` gave NaN probabilities on TF 2.21, while this path matches Keras.
    """
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


# --- Running the exported artifacts (used by the agreement check and tests) -----------------


def run_saved_model(saved_model_dir: Path, waveforms: np.ndarray) -> np.ndarray:
    signature = tf.saved_model.load(str(saved_model_dir)).signatures[SIGNATURE]
    return signature(**{INPUT_NAME: tf.constant(waveforms, tf.float32)})[OUTPUT_NAME].numpy()


def run_tflite(tflite_path: Path, waveforms: np.ndarray) -> np.ndarray:
    """Runs the TFLite model on a batch of any size (the batch dimension is dynamic).

    Its signature is ``serving_default`` with input ``waveform``; the converter names the
    single output ``output_0``.
    """
    interpreter = tf.lite.Interpreter(model_path=str(tflite_path))
    runner = interpreter.get_signature_runner(SIGNATURE)
    (probabilities,) = runner(**{INPUT_NAME: np.asarray(waveforms, np.float32)}).values()
    return probabilities


def compare_outputs(result: ExportResult, waveforms: np.ndarray) -> dict[str, float]:
    """Largest absolute probability difference of SavedModel and TFLite against Keras."""
    keras_probabilities = result.serving_model.predict(waveforms, verbose=0)
    differences = {"saved_model": float(np.abs(
        run_saved_model(result.saved_model_dir, waveforms) - keras_probabilities).max())}
    if result.tflite_path is not None:
        differences["tflite"] = float(np.abs(
            run_tflite(result.tflite_path, waveforms) - keras_probabilities).max())
    return differences

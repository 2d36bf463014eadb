"""tfbird: bird-sound species classifiers with TensorFlow/Keras.

Stages, each a module: ``synth`` (synthetic corpus), ``catalog`` (data set layouts),
``waveform`` (decode, resample, windows), ``frontend`` (log-mel layer), ``records`` (TFRecord
schema), ``ingest``, ``dataset`` (reader), ``model``, ``training``, ``metrics``, ``exporter``;
``pipeline`` runs them in order and ``cli`` is the command line.
"""

__version__ = "0.1.0"

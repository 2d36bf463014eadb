"""Distribution strategies: one device, mirrored (every GPU, or the CPU split into logical
devices), multi-worker over ``TF_CONFIG``, and TPU; with the patch that lets Keras ``fit``
run under ``MultiWorkerMirroredStrategy``; and the Dask client that ``analyze`` and
``ingest`` share (``dask_client``) with its worker set-up (``init_worker``).

``make_strategy`` must run before any other TensorFlow work in the process (splitting the CPU
and joining a cluster both fix TensorFlow's devices).

Example:
    >>> strategy = make_strategy(config.TrainConfig(strategy="default"))
    >>> strategy.num_replicas_in_sync
    1
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator

import keras
import tensorflow as tf

from tfbird import config

# Keras versions (major.minor) whose private trainer ``patch_keras_for_multiworker`` was
# read against; on another version its two replaced functions may have other signatures.
KERAS_VERSIONS_PATCHED = ("3.15",)


def make_strategy(train_cfg: config.TrainConfig) -> tf.distribute.Strategy:
    """``default``: one device. ``mirrored``: every GPU, or without GPUs the CPU split into
    ``train_cfg.cpu_replicas`` logical devices, so the mirrored code path really runs.
    ``multiworker``: ``MultiWorkerMirroredStrategy`` over the cluster in ``TF_CONFIG``.
    ``tpu``: ``TPUStrategy`` on ``train_cfg.tpu``.

    Call it before any other TensorFlow work in the process.
    """
    if train_cfg.strategy == "default":
        return tf.distribute.get_strategy()
    if train_cfg.strategy == "multiworker":
        read_tf_config()  # A clear error before TensorFlow's own, less clear one.
        patch_keras_for_multiworker()
        return tf.distribute.MultiWorkerMirroredStrategy()
    if train_cfg.strategy == "tpu":
        return make_tpu_strategy(train_cfg.tpu)
    if tf.config.list_physical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    devices = split_cpu(train_cfg.cpu_replicas)
    return tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice())


def read_tf_config() -> dict:
    """The ``TF_CONFIG`` environment variable of a ``multiworker`` run, checked.

    It names every worker and this process's place among them, e.g. on the second of two
    machines ``{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type":
    "worker", "index": 1}}``.

    Raises:
        ValueError: ``TF_CONFIG`` missing, not JSON, without workers, or with a task that is
            not one of them.
    """
    text = os.environ.get("TF_CONFIG", "")
    example = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
               '"task": {"type": "worker", "index": 0}}')
    if not text.strip():
        raise ValueError(
            f"train.strategy multiworker reads the cluster from the TF_CONFIG environment "
            f"variable, which is not set. Set it on each machine, e.g. TF_CONFIG='{example}' "
            f"(index 0 on the first machine, 1 on the second, ...). Received: TF_CONFIG=None")
    try:
        tf_config = json.loads(text)
        workers = tf_config["cluster"]["worker"]
        task_type, task_index = tf_config["task"]["type"], tf_config["task"]["index"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(
            f"TF_CONFIG must be JSON with cluster.worker (a list of host:port) and task.type "
            f"and task.index, e.g. '{example}'. Cause: {error!r}. Received: TF_CONFIG={text!r}"
        ) from error
    members = tf_config["cluster"].get(task_type)
    if (not isinstance(workers, list) or not workers or not isinstance(members, list)
            or not isinstance(task_index, int) or not 0 <= task_index < len(members)):
        raise ValueError(
            f"TF_CONFIG's task must be one of its cluster's workers: task.type a key of "
            f"cluster and task.index in 0..{len(members or []) - 1}. Received: TF_CONFIG={text!r}")
    return tf_config


def make_tpu_strategy(tpu: str = "local") -> tf.distribute.TPUStrategy:
    """Connects to and initialises the TPU ``tpu`` (``"local"``: this TPU VM's; else a
    name or ``grpc://`` address) and returns a ``TPUStrategy`` over its cores.

    Raises:
        ValueError: no TPU there (TensorFlow's own error is given as the cause).
    """
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        if tpu != "local":  # A TPU VM's chips are local; a TPU node is a remote cluster.
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except Exception as error:  # Missing TPU: ValueError, NotFoundError, ... by setup.
        cause = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise ValueError(
            f"train.strategy tpu found no TPU at {tpu!r}: {cause}. Run on a TPU VM with "
            f"train.tpu: local, or give the TPU's name or grpc:// address. "
            f"Received: tpu={tpu!r}") from error
    return tf.distribute.TPUStrategy(resolver)


def worker_index(strategy: tf.distribute.Strategy) -> int:
    """This process's task index in a multi-worker cluster; 0 with a single process."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return int(resolver.task_id or 0) if resolver is not None and resolver.task_type else 0


def patch_keras_for_multiworker() -> None:
    """Works around two bugs of Keras 3 (seen up to 3.15) that stop ``fit`` under
    ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585, tensorflow/tensorflow#72388).

    1. Before the first step ``fit`` averages a data batch across replicas with
       ``strategy.reduce``, which fails on the ``(x, y)`` tuple; the first replica's batch
       has the shapes needed to build the model.
    2. Each step averages its scalar logs (loss, metrics) across workers with ``axis=0``,
       which fails on scalars; they are averaged element-wise over replicas instead (what
       ``MirroredStrategy`` gets).

    Both only change what happens under a multi-worker strategy. Idempotent.

    Raises:
        ValueError: a Keras version the patch was not checked against
            (``KERAS_VERSIONS_PATCHED``).
    """
    check_keras_version(keras.__version__)
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    if getattr(tf_trainer, "tfbird_multiworker_patch", False):
        return
    multi_worker = tf_trainer._collective_all_reduce_multi_worker
    reduce_per_replica = tf_trainer.reduce_per_replica
    maybe_symbolic_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build

    def reduce_logs(values, strategy, reduction="auto"):
        if reduction == "auto" and multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return reduce_per_replica(values, strategy, reduction)

    def symbolic_build(model, iterator=None, data_batch=None):
        strategy = model.distribute_strategy
        if iterator is not None and data_batch is None and multi_worker(strategy):
            for _, _, batches in iterator:
                data_batch = tree.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0], next(batches))
                break
            iterator = None
        return maybe_symbolic_build(model, iterator=iterator, data_batch=data_batch)

    tf_trainer.reduce_per_replica = reduce_logs
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = symbolic_build
    tf_trainer.tfbird_multiworker_patch = True


def check_keras_version(version: str) -> None:
    """Raises unless ``version`` (``keras.__version__``) is one ``patch_keras_for_multiworker``
    was checked against: the patch replaces private Keras functions, which may change in any
    release.

    Raises:
        ValueError: another major.minor version than those of ``KERAS_VERSIONS_PATCHED``.
    """
    if ".".join(version.split(".")[:2]) not in KERAS_VERSIONS_PATCHED:
        raise ValueError(
            f"train.strategy multiworker patches private functions of Keras "
            f"{', '.join(KERAS_VERSIONS_PATCHED)} (keras-team/keras#20585); this Keras is "
            f"another version, on which the patch is unchecked. Install Keras "
            f"{KERAS_VERSIONS_PATCHED[-1]}.*, or check patch_keras_for_multiworker (in "
            f"tfbird/distribute.py) against it and add it to KERAS_VERSIONS_PATCHED. "
            f"Received: keras={version}")


def split_cpu(num_devices: int) -> list[str]:
    """Splits the physical CPU into ``num_devices`` logical devices; returns their names.

    Must run before TensorFlow initialises its devices; if that already happened with enough
    logical CPUs (a test session that split the CPU at start), those are used.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)])
        # Each replica gets its share of the cores: replicas that each use every core
        # oversubscribe them, and every step waits for the slowest (README, the demo).
        tf.config.threading.set_intra_op_parallelism_threads(
            max(1, (os.cpu_count() or 1) // num_devices))
    except RuntimeError:
        pass  # Already initialised: use what is there, checked below.
    names = [device.name for device in tf.config.list_logical_devices("CPU")]
    if len(names) < num_devices:
        raise ValueError(
            f"Cannot split the CPU into {num_devices} devices after TensorFlow initialised "
            f"with {len(names)}. Received: cpu_replicas={num_devices}")
    return names[:num_devices]


@contextlib.contextmanager
def dask_client(scheduler: str | None, local_workers: int = 0,
                num_threads: int | None = None) -> Iterator:
    """A ``distributed.Client``, closed on exit: of a new ``LocalCluster`` of
    ``local_workers`` single-threaded worker processes (closed too), each set up by
    ``init_worker(num_threads)`` (default: the cores shared evenly among them), or else of the
    running scheduler at ``scheduler`` (``tcp://host:8786``). Used by ``analyze`` and
    ``ingest`` (``--dask-local``, ``--dask-scheduler``)."""
    distributed = import_distributed()
    logging.getLogger("distributed").setLevel(logging.ERROR)  # Cluster start/stop chatter.
    cluster = None
    if local_workers:
        cluster = distributed.LocalCluster(
            n_workers=local_workers, threads_per_worker=1, processes=True,
            dashboard_address=":0", silence_logs=logging.ERROR)  # Any free dashboard port.
    client = distributed.Client(cluster or scheduler)
    try:
        if cluster is not None:
            client.run(init_worker, num_threads or max(1, (os.cpu_count() or 1) // local_workers))
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def import_distributed():
    """``dask.distributed``, or a ValueError naming the ``dask`` extra when it is missing."""
    try:
        import distributed
    except ImportError as error:
        raise ValueError("--dask-scheduler and --dask-local need Dask's distributed "
                         "scheduler; install it with pip install 'tfbird[dask]'. "
                         "Received: distributed=None") from error
    return distributed


PARENT_POLL_S = 0.5  # How often a worker checks that ``analyze`` still runs.


def exit_when_parent_dies(poll_s: float = PARENT_POLL_S) -> threading.Thread:
    """Starts a daemon thread that ends this worker process once its parent is gone.

    A killed ``analyze`` (SIGKILL) cannot stop its ``ProcessPoolExecutor`` workers: they
    would go on analysing queued recordings, beside the rerun, into the same files.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    thread = threading.Thread(target=watch, name="exit-when-parent-dies", daemon=True)
    thread.start()
    return thread


def init_worker(num_threads: int) -> None:
    """Limits TensorFlow's threads in a worker so ``jobs`` workers share the cores, and ends
    the worker with its parent (``exit_when_parent_dies``)."""
    exit_when_parent_dies()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(num_threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)

"""The guard of the private-Keras multiworker patch (the strategies run in test_distributed)."""

import keras
import pytest

from tfbird import distribute


def test_the_installed_keras_is_one_the_patch_was_checked_against():
    distribute.check_keras_version(keras.__version__)


@pytest.mark.parametrize("version", ["3.16.0", "3.14.2", "4.0.0", "3.1"])
def test_another_keras_version_is_refused_by_name(version):
    with pytest.raises(ValueError, match=rf"KERAS_VERSIONS_PATCHED.*Received: keras={version}"):
        distribute.check_keras_version(version)


def test_the_patch_refuses_an_unchecked_keras_before_touching_it(monkeypatch):
    from keras.src.backend.tensorflow import trainer as tf_trainer

    reduce_before = tf_trainer.reduce_per_replica
    monkeypatch.setattr(keras, "__version__", "3.99.0")
    with pytest.raises(ValueError, match="Received: keras=3.99.0"):
        distribute.patch_keras_for_multiworker()
    assert tf_trainer.reduce_per_replica is reduce_before

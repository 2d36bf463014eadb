"""train.ema_momentum: AdamW's moving average of the weights, and batch-norm statistics
re-estimated for the averaged weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfbird import config, training


def test_ema_momentum_is_read_and_checked():
    assert config.load(None, ["train.ema_momentum=0.99"]).train.ema_momentum == 0.99
    assert config.load(None).train.ema_momentum is None
    with pytest.raises(ValueError, match="train.ema_momentum"):
        config.load(None, ["train.ema_momentum=1.0"])


def test_optimizer_averages_weights_only_when_asked():
    averaged = training.build_optimizer(config.TrainConfig(ema_momentum=0.9), steps_per_epoch=5)
    assert averaged.use_ema and averaged.ema_momentum == 0.9
    assert not training.build_optimizer(config.TrainConfig(), steps_per_epoch=5).use_ema


def test_fit_ends_with_the_averaged_weights():
    # One weight w, loss (w - 1)^2 from w = 0 with plain steps: the average lags behind w.
    model = keras.Sequential([keras.Input([1]), keras.layers.Dense(1, use_bias=False,
                                                                   kernel_initializer="zeros")])
    model.compile(optimizer=keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.5),
                  loss="mse")
    x, y = np.ones([1, 1], np.float32), np.ones([1, 1], np.float32)
    model.fit(x, y, epochs=3, verbose=0)
    # w: 0.2, 0.36, 0.488; EMA (first step copies w): 0.2, 0.28, 0.384.
    np.testing.assert_allclose(model.get_weights()[0], [[0.384]], rtol=1e-5)


def test_batch_norm_statistics_become_the_average_over_the_batches():
    inputs = keras.Input([2])
    norm = keras.layers.BatchNormalization(momentum=0.9)
    model = keras.Model(inputs, keras.layers.Dense(1)(norm(inputs)))
    batches = tf.data.Dataset.from_tensor_slices((
        np.array([[[0.0, 10.0], [2.0, 10.0]], [[4.0, 20.0], [6.0, 20.0]],
                  [[100.0, 0.0], [100.0, 0.0]]], np.float32),
        np.zeros([3, 2, 1], np.float32)))
    assert training.reestimate_batch_norm(model, batches, steps=2) == 2
    # Batch means [1, 10] and [5, 20]; batch (biased) variances [1, 0] and [1, 0].
    np.testing.assert_allclose(norm.moving_mean.numpy(), [3.0, 15.0])
    np.testing.assert_allclose(norm.moving_variance.numpy(), [1.0, 0.0], atol=1e-6)
    assert norm.momentum == 0.9  # Restored for training on.

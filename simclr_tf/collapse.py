"""A collapse monitor: how spread out the L2-normalized projections of a batch are.

For `z` of shape [batch, d], normalize every row to unit length and take the standard deviation of each
dimension across the batch, then the mean over dimensions. Unit vectors spread evenly over the sphere give
about 1/sqrt(d) (each coordinate has variance 1/d); when the representation collapses (every image mapped to
the same direction) it falls to 0. lightly's `std_of_l2_normalized` is the same measure.
"""
import tensorflow as tf


def std_of_l2_normalized(z):
    """Mean over dimensions of the batch standard deviation of the L2-normalized rows of `z` [batch, d].

    Example:
      >>> healthy = tf.random.stateless_normal([4096, 64], seed=[0, 1])
      >>> round(float(std_of_l2_normalized(healthy)) * 64 ** 0.5, 1)  # about 1/sqrt(d)
      1.0
      >>> collapsed = tf.ones([4096, 64]) + 1e-4 * healthy
      >>> float(std_of_l2_normalized(collapsed)) < 1e-3
      True
    """
    z = tf.math.l2_normalize(tf.cast(z, tf.float32), axis=-1)
    return tf.reduce_mean(tf.math.reduce_std(z, axis=0))

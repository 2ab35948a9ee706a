"""The loss of one replica's step under a ``tf.distribute`` strategy.

Under ``MirroredStrategy``, ``MultiWorkerMirroredStrategy`` or ``TPUStrategy`` every replica
computes the gradient of its own loss on its share of the global batch, and the optimizer
*sums* the replicas' gradients (an all-reduce). A custom ``train_step`` whose loss is the
mean over its replica's examples must therefore divide it by the number of replicas in
sync, or the applied gradient is that many times the gradient of the global-batch mean
(Adam barely notices; gradient clipping, SGD and the learning rate's meaning do). Keras'
built-in ``compute_loss`` does this; the package's models override ``train_step`` and call
:func:`scale_loss_for_replicas`.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["scale_loss_for_replicas"]


def scale_loss_for_replicas(loss):
    """``loss / num_replicas_in_sync`` of the current strategy (``loss`` itself for one
    replica), so that the summed gradients are those of the global-batch mean."""
    n = tf.distribute.get_strategy().num_replicas_in_sync
    return loss if n == 1 else loss * tf.cast(1.0 / n, loss.dtype)

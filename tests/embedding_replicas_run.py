"""Embeds a small dataset on 2 logical CPU replicas and on one device.

Its last batch holds one example, so the second replica's part is empty, as
MirroredStrategy hands out any last batch smaller than the replica count; the
mirrored classifier also fits and evaluates on it.

Used by test_embedding_cache.py in a subprocess, because logical devices must
be configured before TensorFlow initializes its devices. Prints a JSON verdict.
Usage: embedding_replicas_run.py CACHE_DIR
"""

import json
import os
import sys

import two_cpu_replicas  # noqa: F401 (first: before TensorFlow starts)

import numpy as np
import tensorflow as tf
import tf_keras as keras

from modules import backbones
from modules import embedding_cache
from modules import model as model_lib

IMAGE_SIZE, EXAMPLES, BATCH = 32, 33, 8  # A last batch of one.
rng = np.random.default_rng(0)
labels = rng.integers(0, 3, EXAMPLES)
images = (
  rng.uniform(0, 80, (EXAMPLES, IMAGE_SIZE, IMAGE_SIZE, 3))
  + 80 * labels[:, None, None, None]
).astype('float32')
dataset = tf.data.Dataset.from_tensor_slices(
  (images, labels.astype('int64'))
).batch(BATCH)

mirrored = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
with mirrored.scope():
  keras.utils.set_random_seed(3)
  backbone = backbones.build_backbone('MobileNet', IMAGE_SIZE, 'offline')
  model = model_lib.build_classifier(backbone, IMAGE_SIZE, 3, 0.0)
embedder = embedding_cache.embedding_model(model)
caches = {}
for name, strategy in (
  ('mirrored', mirrored),
  ('single', tf.distribute.get_strategy()),
):
  path = os.path.join(sys.argv[1], f'{name}.tfrecord')
  per_replica = embedding_cache.write_embeddings(
    strategy, embedder, dataset, path
  )
  ((features, cached_labels),) = embedding_cache.read_embeddings(
    path, embedder.output_shape[-1], EXAMPLES, False, 0
  )
  caches[name] = {
    'per_replica': per_replica,
    'features': features.numpy(),
    'labels': cached_labels.numpy(),
  }
with mirrored.scope():
  model_lib.compile_for_phase(model, 1e-2)
model.fit(dataset, epochs=1, verbose=0)
_, evaluated_accuracy = model.evaluate(dataset, verbose=0)
predicted = np.argmax(model(images, training=False).numpy(), axis=1)
print(
  'VERDICT '
  + json.dumps(
    {
      'replicas': mirrored.num_replicas_in_sync,
      'per_replica_mirrored': caches['mirrored']['per_replica'],
      'per_replica_single': caches['single']['per_replica'],
      'labels_equal': bool(
        np.array_equal(caches['mirrored']['labels'], caches['single']['labels'])
      ),
      'labels_are_the_datasets': bool(
        np.array_equal(caches['single']['labels'], labels)
      ),
      'max_abs_difference': float(
        np.abs(
          caches['mirrored']['features'] - caches['single']['features']
        ).max()
      ),
      'shape': list(caches['mirrored']['features'].shape),
      'evaluated_accuracy': evaluated_accuracy,
      'predicted_accuracy': float(np.mean(predicted == labels)),
    }
  )
)

"""Phase 1 on cached embeddings: one backbone pass instead of one per epoch.

While the backbones are frozen, the head's input for an example (the pooled
image or text features, or both towers' concatenated) never changes, so
phase 1 computes it once per example, on every replica of the strategy,
streams it to a temporary TFRecord file (memory stays bounded by one batch)
and trains the head on the cache for all
phase-1 epochs. The head layers are the classifier's own, so the assembled
model is ready for phase 2 and for export. Exact only without training-time
augmentation: the cache holds each example's one unaugmented view, so with
augmentation the Trainer runs phase 1 on the plain path instead. Under mixed
precision the embeddings are stored as float32.
"""

import dataclasses
import math
import os
import tempfile
import time
from typing import List, Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras

from modules import linear_probe
from modules import model as model_lib
from modules import phases

_EMBEDDINGS, _LABELS = 'embeddings', 'labels'


def embedding_model(classifier: keras.Model) -> keras.Model:
  """The classifier up to the pooled backbone features (the head's input)."""
  return keras.Model(
    classifier.input, classifier.get_layer(model_lib.HEAD_DROPOUT).input
  )


def head_model(classifier: keras.Model) -> keras.Model:
  """The classifier's own head layers on a features input (shared weights)."""
  dropout = classifier.get_layer(model_lib.HEAD_DROPOUT)
  return keras.Sequential(
    [
      keras.Input(dropout.input.shape[1:]),
      dropout,
      classifier.get_layer(model_lib.LOGITS),
    ],
    name='head',
  )


def write_embeddings(
  strategy: tf.distribute.Strategy,
  embedder: keras.Model,
  dataset: tf.data.Dataset,
  path: str,
) -> List[int]:
  """Embeds `dataset` on every replica; writes one record per global batch.

  Each global batch of (inputs, labels) is split across the strategy's
  replicas (`experimental_distribute_dataset`), embedded with `strategy.run`
  and written in the dataset's order. Returns the examples each replica
  embedded.
  """

  @tf.function
  def embed(inputs, labels):
    return strategy.run(
      lambda x, y: (tf.cast(embedder(x, training=False), tf.float32), y),
      args=(inputs, labels),
    )

  counts = [0] * strategy.num_replicas_in_sync
  with tf.io.TFRecordWriter(path) as writer:
    for inputs, labels in strategy.experimental_distribute_dataset(dataset):
      embeddings, labels = (
        strategy.experimental_local_results(value)
        for value in embed(inputs, labels)
      )
      for replica, rows in enumerate(labels):
        counts[replica] += int(rows.shape[0])
      writer.write(
        tf.train.Example(
          features=tf.train.Features(
            feature={
              _EMBEDDINGS: _bytes(
                tf.io.serialize_tensor(tf.concat(embeddings, axis=0))
              ),
              _LABELS: _bytes(
                tf.io.serialize_tensor(tf.concat(labels, axis=0))
              ),
            }
          )
        ).SerializeToString()
      )
  return counts


def read_embeddings(
  path: str, width: int, batch_size: int, shuffle: bool, seed: int
) -> tf.data.Dataset:
  """Streams (embedding, label) batches back from `write_embeddings`' file.

  `width` is the embedding's size. Static shapes matter: MirroredStrategy
  can hand a replica an empty part of the last batch, which the head takes
  as [0, width] but not as the [0, 0] an unknown width would give.
  """
  spec = {
    key: tf.io.FixedLenFeature([], tf.string) for key in (_EMBEDDINGS, _LABELS)
  }

  def _parse(record):
    parsed = tf.io.parse_single_example(record, spec)
    return (
      tf.ensure_shape(
        tf.io.parse_tensor(parsed[_EMBEDDINGS], tf.float32), [None, width]
      ),
      tf.ensure_shape(tf.io.parse_tensor(parsed[_LABELS], tf.int64), [None]),
    )

  dataset = tf.data.TFRecordDataset(path).map(_parse).unbatch()
  if shuffle:
    dataset = dataset.shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
  return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def run_cached_phase1(
  context: phases.PhaseContext,
  epochs: int,
  learning_rate: float,
  batch_size: int,
  seed: int,
  closed_form_start: bool = False,
  memo: Optional[linear_probe.CrossValidationMemo] = None,
) -> dict:
  """Phase 1 with the embedding cache; returns what phases.run_phase does.

  `options` (schedule, early stopping, class weights) apply to the head's fit
  as they would to the plain path's. With `closed_form_start`, the dense
  layer starts at modules/linear_probe.py's solution (its L2 penalty
  chosen by cross-validation, the class weights), and the phase keeps that
  start when no epoch ends with a lower validation loss; the result's `start`
  says what it scored and whether it was kept. The result's `refit` is a
  function that solves for the start's lambda on the fit and validation
  parts together: what trainer.py exports when phase 1 is chosen, kept start
  or not (benchmarks/RESULTS.md (g): on held-out data it beat the epochs'
  head, which learns from the fit part alone, on four datasets of four).
  The phase's accuracy is the head's on the cached validation embeddings:
  what the assembled classifier scores on the validation inputs (the same
  layers; tests/test_embedding_cache.py checks it), without a second backbone
  pass. `memo`: see linear_probe.fit_by_cross_validation.
  """
  strategy = context.strategy
  with strategy.scope():
    model_lib.freeze_backbone(context.towers)
    head = head_model(context.model)
  with tempfile.TemporaryDirectory(prefix='phase1_embeddings_') as cache_dir:
    fit_cache, validation_cache, fit_count = _cache_embeddings(
      context.model,
      strategy,
      context.train,
      context.validation,
      batch_size,
      seed,
      cache_dir,
    )
    options = dataclasses.replace(
      context.options, steps_per_epoch=math.ceil(fit_count / batch_size)
    )
    start = (
      _start_from_closed_form(
        head,
        strategy,
        fit_cache,
        validation_cache,
        learning_rate,
        options.class_weight,
        memo,
      )
      if closed_form_start and epochs > 0
      else None
    )
    # The head has no backbone: it fits on the cached embeddings.
    cached = dataclasses.replace(
      context,
      model=head,
      towers=[],
      train=fit_cache,
      validation=validation_cache,
      options=options,
    )
    fitted = phases.fit_phase(cached, 'phase1', epochs, learning_rate)
    if start and 'loss' in start:
      _keep_start_if_better(head, strategy, validation_cache, start)
    result = phases.evaluate_phase(
      cached, 'phase1', epochs, learning_rate, fitted, []
    )
    if start:
      start.pop('weights', None)
      if 'refit' in start:
        result['refit'] = start.pop('refit')  # Called if phase 1 is exported.
      result['start'] = start
    return result


def _start_from_closed_form(
  head,
  strategy,
  fit_cache,
  validation_cache,
  learning_rate,
  class_weight,
  memo,
) -> dict:
  """Loads linear_probe.fit_by_cross_validation's solution into the dense
  layer.

  The grid is linear_probe.WEIGHT_DECAYS and the head's own L2 penalty, if
  any.

  Returns:
    `method`, `seconds`, the chosen `weight_decay` with the `folds` and the
    grid's `cross_validation_losses`, the start's validation `loss` and
    `accuracy` with its `weights`, and `refit`: a function that solves for
    the same lambda on the fit and the validation parts together; or
    `skipped` (why) when the embeddings do not fit in memory.
  """
  started = time.time()
  try:
    fit_part = linear_probe.load(fit_cache)
    validation = linear_probe.load(validation_cache)
  except MemoryError as error:
    print(f'[trainer] phase1: no closed-form start: {error}', flush=True)
    return {'method': 'logistic_regression', 'skipped': str(error)}
  dense = head.get_layer(model_lib.LOGITS)
  regularizer = dense.kernel_regularizer
  # Keras keeps it as a float32: 1e-4 reads back as 9.9999997e-05.
  own_weight_decay = (
    float(f'{regularizer.l2:.6g}') if regularizer is not None else 0.0
  )
  chosen = linear_probe.fit_by_cross_validation(
    fit_part,
    validation,
    dense.units,
    linear_probe.WEIGHT_DECAYS
    + ((own_weight_decay,) if own_weight_decay else ()),
    class_weight,
    memo=memo,
  )
  kernel, bias = chosen['kernel'], chosen['bias']

  def refit():
    return linear_probe.fit(
      *(np.concatenate(parts) for parts in zip(fit_part, validation)),
      dense.units,
      chosen['weight_decay'],
      class_weight,
      initial=(kernel, bias),
    )

  with strategy.scope():
    dense.kernel.assign(kernel)
    dense.bias.assign(bias)
    model_lib.compile_for_phase(head, learning_rate)
  loss, accuracy = head.evaluate(validation_cache, verbose=0)
  seconds = time.time() - started
  how = (
    f'{chosen["folds"]}-fold cross-validation'
    if chosen['folds'] > 1
    else 'the validation part'
  )
  print(
    f'[trainer] phase1: closed-form start (logistic regression, L2 '
    f'{chosen["weight_decay"]:g} chosen by {how} from '
    f'{sorted(chosen["cross_validation_losses"])}, '
    f'{len(fit_part[1])} examples) '
    f'in {seconds:.1f} s: validation accuracy {accuracy:.4f} '
    f'(loss {loss:.4f})',
    flush=True,
  )
  return {
    'method': 'logistic_regression',
    'weight_decay': chosen['weight_decay'],
    'folds': chosen['folds'],
    'cross_validation_losses': {
      f'{decay:g}': round(value, 6)
      for decay, value in chosen['cross_validation_losses'].items()
    },
    'seconds': round(seconds, 3),
    'loss': float(loss),
    'accuracy': float(accuracy),
    'weights': (kernel, bias),
    'refit': refit,
  }


def _keep_start_if_better(head, strategy, validation_cache, start) -> None:
  """Restores the closed-form start when the trained head's loss is higher."""
  loss, _ = head.evaluate(validation_cache, verbose=0)
  start['kept'] = bool(loss > start['loss'])
  if start['kept']:
    dense = head.get_layer(model_lib.LOGITS)
    with strategy.scope():
      dense.kernel.assign(start['weights'][0])
      dense.bias.assign(start['weights'][1])
    print(
      '[trainer] phase1: no epoch beat the closed-form start on the '
      'validation loss; the start is kept',
      flush=True,
    )


def _cache_embeddings(
  model, strategy, fit_dataset, validation_dataset, batch_size, seed, cache_dir
):
  """Both parts' embeddings, written once to `cache_dir`, as datasets."""
  embedder = embedding_model(model)
  width = embedder.output_shape[-1]
  started = time.time()
  paths = {
    part: os.path.join(cache_dir, f'{part}.tfrecord')
    for part in ('fit', 'validation')
  }
  counts = {
    part: sum(write_embeddings(strategy, embedder, dataset, paths[part]))
    for part, dataset in (
      ('fit', fit_dataset),
      ('validation', validation_dataset),
    )
  }
  print(
    f'[trainer] phase1: cached embeddings of {counts["fit"]} fit and '
    f'{counts["validation"]} validation examples on '
    f'{strategy.num_replicas_in_sync} replica(s) in '
    f'{time.time() - started:.1f} s',
    flush=True,
  )
  return (
    read_embeddings(paths['fit'], width, batch_size, True, seed),
    read_embeddings(paths['validation'], width, batch_size, False, seed),
    counts['fit'],
  )


def _bytes(tensor: tf.Tensor) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[tensor.numpy()]))

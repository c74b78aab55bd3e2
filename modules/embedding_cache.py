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

import tensorflow as tf
import tf_keras as keras

from modules import model as model_lib

_EMBEDDINGS, _LABELS = 'embeddings', 'labels'


def embedding_model(classifier: keras.Model) -> keras.Model:
  """The classifier up to the pooled backbone features (the head's input)."""
  return keras.Model(classifier.input,
                     classifier.get_layer(model_lib.HEAD_DROPOUT).input)


def head_model(classifier: keras.Model) -> keras.Model:
  """The classifier's own head layers on a features input (shared weights)."""
  dropout = classifier.get_layer(model_lib.HEAD_DROPOUT)
  return keras.Sequential([
      keras.Input(dropout.input.shape[1:]), dropout,
      classifier.get_layer(model_lib.LOGITS)
  ], name='head')


def write_embeddings(strategy: tf.distribute.Strategy, embedder: keras.Model,
                     dataset: tf.data.Dataset, path: str) -> List[int]:
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
        args=(inputs, labels))

  counts = [0] * strategy.num_replicas_in_sync
  with tf.io.TFRecordWriter(path) as writer:
    for inputs, labels in strategy.experimental_distribute_dataset(dataset):
      embeddings, labels = (strategy.experimental_local_results(value)
                            for value in embed(inputs, labels))
      for replica, rows in enumerate(labels):
        counts[replica] += int(rows.shape[0])
      writer.write(tf.train.Example(features=tf.train.Features(feature={
          _EMBEDDINGS: _bytes(tf.io.serialize_tensor(
              tf.concat(embeddings, axis=0))),
          _LABELS: _bytes(tf.io.serialize_tensor(tf.concat(labels, axis=0))),
      })).SerializeToString())
  return counts


def read_embeddings(path: str, batch_size: int, shuffle: bool,
                    seed: int) -> tf.data.Dataset:
  """Streams (embedding, label) batches back from `write_embeddings`' file."""
  spec = {key: tf.io.FixedLenFeature([], tf.string)
          for key in (_EMBEDDINGS, _LABELS)}

  def _parse(record):
    parsed = tf.io.parse_single_example(record, spec)
    return (tf.io.parse_tensor(parsed[_EMBEDDINGS], tf.float32),
            tf.io.parse_tensor(parsed[_LABELS], tf.int64))

  dataset = tf.data.TFRecordDataset(path).map(_parse).unbatch()
  if shuffle:
    dataset = dataset.shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
  return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def run_cached_phase1(
    model: keras.Model,
    backbone: model_lib.Towers,
    strategy: tf.distribute.Strategy,
    train_dataset: tf.data.Dataset,
    eval_dataset: tf.data.Dataset,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
    callbacks=None,
    options: Optional[model_lib.FitOptions] = None) -> dict:
  """Phase 1 with the embedding cache; returns what model_lib.run_phase does.

  `options` (schedule, early stopping, class weights) apply to the head's fit
  as they would to the plain path's. The phase's eval accuracy is the head's
  on the cached eval embeddings: what the assembled classifier scores on the
  eval inputs (the same layers; tests/test_embedding_cache.py checks it),
  without a second backbone pass.
  """
  with strategy.scope():
    model_lib.freeze_backbone(backbone)
    head = head_model(model)
  with tempfile.TemporaryDirectory(prefix='phase1_embeddings_') as cache_dir:
    train_cache, eval_cache, train_count = _cache_embeddings(
        model, strategy, train_dataset, eval_dataset, batch_size, seed,
        cache_dir)
    options = dataclasses.replace(
        options or model_lib.FitOptions(),
        steps_per_epoch=math.ceil(train_count / batch_size))
    fitted = model_lib.fit_phase('phase1', head, strategy, train_cache,
                                 eval_cache, epochs, learning_rate, callbacks,
                                 options)
    return model_lib.evaluate_phase('phase1', head, eval_cache, epochs,
                                    learning_rate, fitted['history'], [],
                                    fitted['early_stopping'])


def _cache_embeddings(model, strategy, train_dataset, eval_dataset,
                      batch_size, seed, cache_dir):
  """Both splits' embeddings, written once to `cache_dir`, as datasets."""
  embedder = embedding_model(model)
  started = time.time()
  paths = {split: os.path.join(cache_dir, f'{split}.tfrecord')
           for split in ('train', 'eval')}
  counts = {split: sum(write_embeddings(strategy, embedder, dataset,
                                        paths[split]))
            for split, dataset in (('train', train_dataset),
                                   ('eval', eval_dataset))}
  print(f'[trainer] phase1: cached embeddings of {counts["train"]} train and '
        f'{counts["eval"]} eval examples on {strategy.num_replicas_in_sync} '
        f'replica(s) in {time.time() - started:.1f} s', flush=True)
  return (read_embeddings(paths['train'], batch_size, True, seed),
          read_embeddings(paths['eval'], batch_size, False, seed),
          counts['train'])


def _bytes(tensor: tf.Tensor) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[tensor.numpy()]))

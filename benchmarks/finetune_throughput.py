"""(c) Phase-2 fine-tuning throughput: the project's Keras path vs a bare step.

The phase-2 classifier (MobileNet, offline ImageNet weights, 96 px, top 20
backbone layers unfrozen, BatchNorm frozen) trained on the same in-memory
batches of decoded demo images:
  * keras: built and compiled as modules.model does (compile_for_phase), in a
    MirroredStrategy scope as run_fn does (--strategy default: without), and
    trained with `fit`;
  * bare: an identical copy (same weights) trained by a `tf.function` step
    (GradientTape + optimizer.apply_gradients), iterated from Python.
Warm-up (one epoch each, which traces the functions) is excluded. Each round
runs one `fit(epochs=E)` and E bare epochs, the order alternating; throughput
is from the epochs' own durations (a Keras callback; the bare loop waits for
its last step each epoch). What `fit` spends per call outside its epochs
(data handler, distributing the dataset) is printed apart as
keras_fit_call_setup_seconds: a cost per training phase, not per image. The
machine is shared, so speeds drift between rounds: the ratio is the median of
the per-round ratios.

  .venv/bin/python benchmarks/finetune_throughput.py [--epochs 3] [--rounds 5]
"""

import argparse
import statistics
import time

import common
import tensorflow as tf
import tf_keras as keras

from modules import backbones
from modules import model as model_lib
from pipeline import settings as settings_lib

_CONFIG = settings_lib.TrainerConfig()  # The demo's defaults.


def phase2_classifier(num_classes: int) -> keras.Model:
  common.set_seed()
  backbone = backbones.build_backbone(
    common.BACKBONE, common.IMAGE_SIZE, common.WEIGHTS
  )
  model = model_lib.build_classifier(
    backbone, common.IMAGE_SIZE, num_classes, _CONFIG.dropout
  )
  model_lib.unfreeze_top(backbone, _CONFIG.fine_tune_layers)
  return model


class _EpochClock(keras.callbacks.Callback):
  def __init__(self):
    super().__init__()
    self.seconds = []

  def on_epoch_begin(self, epoch, logs=None):
    self._start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    self.seconds.append(time.perf_counter() - self._start)


def keras_epochs(model: keras.Model, dataset, epochs: int):
  """fit for `epochs`; returns the epochs' seconds and fit's wall seconds."""
  clock = _EpochClock()
  with common.Timer() as timer:
    model.fit(dataset, epochs=epochs, verbose=0, callbacks=[clock])
  return clock.seconds, timer.seconds


def bare_trainer(model: keras.Model):
  """A function that runs bare tf.function epochs; returns their seconds."""
  optimizer = keras.optimizers.Adam(_CONFIG.phase2_learning_rate)
  loss_fn = model_lib.loss()

  @tf.function
  def train_step(images, labels):
    with tf.GradientTape() as tape:
      loss = loss_fn(labels, model(images, training=True))
    gradients = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    return loss

  def train(dataset, epochs):
    seconds = []
    for _ in range(epochs):
      with common.Timer() as timer:
        for images, labels in dataset:
          loss = train_step(images, labels)
        loss.numpy()  # Waits for the epoch's last step.
      seconds.append(timer.seconds)
    return seconds

  return train


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--epochs', type=int, default=3, help='per timed round')
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument(
    '--strategy', choices=('mirrored', 'default'), default='mirrored'
  )
  args = parser.parse_args()
  common.load_average('start')
  split = common.pipeline_split(common.DEMO_DATA)
  class_names = sorted({label for _, label in split['train']})
  images, labels = next(
    iter(
      common.image_dataset(
        common.DEMO_DATA,
        split['train'],
        class_names,
        len(split['train']),
        shuffle=False,
      )
    )
  )
  dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(
    _CONFIG.batch_size
  )

  strategy = (
    tf.distribute.MirroredStrategy()
    if args.strategy == 'mirrored'
    else tf.distribute.get_strategy()
  )
  with strategy.scope():
    model = phase2_classifier(len(class_names))
    model_lib.compile_for_phase(model, _CONFIG.phase2_learning_rate)
  bare_model = phase2_classifier(len(class_names))
  bare_model.set_weights(model.get_weights())
  assert len(bare_model.trainable_weights) == len(model.trainable_weights)
  bare = bare_trainer(bare_model)
  model.fit(dataset, epochs=1, verbose=0)  # Warm-up: traces the functions.
  bare(dataset, 1)
  epochs = {'keras_fit': [], 'bare_step': []}  # Per round, the epochs' s.
  setup = []
  for round_ in range(args.rounds):
    for side in sorted(epochs, reverse=round_ % 2 == 1):
      if side == 'keras_fit':
        seconds, wall = keras_epochs(model, dataset, args.epochs)
        setup.append(wall - sum(seconds))
      else:
        seconds = bare(dataset, args.epochs)
      epochs[side].append(seconds)
  common.load_average('end')

  count = len(split['train'])
  common.metric('strategy', args.strategy)
  common.metric('batch_size', _CONFIG.batch_size)
  common.metric('images_per_epoch', count)
  common.metric('epochs_per_round', args.epochs)
  common.metric('trainable_weights', len(model.trainable_weights))
  speed = {
    side: [count / statistics.median(s) for s in rounds]
    for side, rounds in epochs.items()
  }
  for side, values in speed.items():
    common.metric(f'{side}_img_per_s', statistics.median(values))
    common.metric(
      f'{side}_img_per_s_each', ','.join(f'{v:.1f}' for v in values)
    )
  ratios = [k / b for k, b in zip(speed['keras_fit'], speed['bare_step'])]
  common.metric(
    'ratio_keras_over_bare_each', ','.join(f'{r:.3f}' for r in ratios)
  )
  common.metric('ratio_keras_over_bare', statistics.median(ratios))
  common.metric('keras_fit_call_setup_seconds', statistics.median(setup))


if __name__ == '__main__':
  main()

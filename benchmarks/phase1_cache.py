"""(a) Phase 1 on cached embeddings vs the exact (seed-style) loop.

Both sides train the head of the same classifier (MobileNet, offline ImageNet
weights, 96 px unless --image-size, the demo's batch and learning rate) for
the same epochs on the pipeline's train split of the demo data (--scale K: K
re-encoded versions of each image), validate on its eval split every epoch,
then evaluate once more:
  * exact: modules.phases.run_phase('phase1', fine_tune_layers=0), i.e. the
    frozen backbone inside the model, `fit` on images every epoch, then the
    classifier evaluated on the eval images;
  * cached: modules.embedding_cache.run_cached_phase1 (one backbone pass per
    image, the head trained on the cached embeddings, then evaluated on the
    cached eval embeddings, which scores what the classifier scores on the
    images: tests/test_embedding_cache.py).
Both run in one process under MirroredStrategy as in run_fn. An untimed
warm-up (one epoch of each) first pays the process's one-time costs; then
each seed in --seeds runs both sides from the same initial weights, the
order alternating. Accuracy on 64 eval images moves in steps of 1.56 points
and with the example order, so it is averaged over the seeds. Each side's
time is also broken down (Keras callback timestamps): before the first epoch
(exact: fit setup; cached: also the embedding pass), the first epoch (traces
the train step), the later epochs, and after fit (the final evaluation).

  .venv/bin/python benchmarks/phase1_cache.py [--epochs 10] [--seeds 42,43,44]
      [--scale 1] [--image-size 96]
"""

import argparse
import os
import statistics
import tempfile
import time

import common
import tensorflow as tf
import tf_keras as keras

from modules import backbones
from modules import embedding_cache
from modules import model as model_lib
from modules import phases
from pipeline import settings as settings_lib

_CONFIG = (
  settings_lib.TrainerConfig()
)  # The demo's defaults: batch, lr, dropout.


class _Clock(keras.callbacks.Callback):
  """Records when fit starts, each epoch ends and fit ends."""

  def __init__(self):
    super().__init__()
    self.times = {'epochs': []}

  def on_train_begin(self, logs=None):
    self.times['begin'] = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    self.times['epochs'].append(time.perf_counter())

  def on_train_end(self, logs=None):
    self.times['end'] = time.perf_counter()


def run_side(
  side: str,
  data_root: str,
  split,
  class_names,
  image_size: int,
  epochs: int,
  strategy,
  seed: int,
) -> dict:
  """Builds a fresh classifier, runs one phase-1 variant; times, accuracy."""
  common.set_seed(seed)
  datasets = [
    common.image_dataset(
      data_root,
      split[name],
      class_names,
      _CONFIG.batch_size,
      shuffle=name == 'train',
      image_size=image_size,
      seed=seed,
    )
    for name in ('train', 'eval')
  ]
  with strategy.scope():
    backbone = backbones.build_backbone(
      common.BACKBONE, image_size, common.WEIGHTS
    )
    classifier = model_lib.build_classifier(
      backbone, image_size, len(class_names), _CONFIG.dropout
    )
  clock = _Clock()
  context = phases.PhaseContext(
    classifier,
    [backbone],
    strategy,
    *datasets,
    phases.FitOptions(),
    callbacks=[clock],
  )
  start = time.perf_counter()
  if side == 'exact':
    result = phases.run_phase(
      context, 'phase1', epochs, _CONFIG.phase1_learning_rate, 0
    )
  else:
    result = embedding_cache.run_cached_phase1(
      context,
      epochs,
      _CONFIG.phase1_learning_rate,
      _CONFIG.batch_size,
      seed,
    )
  end, times = time.perf_counter(), clock.times
  run = {
    'seconds': end - start,
    'accuracy': result['eval_accuracy'],
    'before_fit': times['begin'] - start,
    'first_epoch': times['epochs'][0] - times['begin'],
    'later_epoch': (
      (times['epochs'][-1] - times['epochs'][0]) / max(1, epochs - 1)
    ),
    'after_fit': end - times['end'],
  }
  print(
    f'# {side} seed {seed}: '
    + ', '.join(f'{k} {v:.4f}' for k, v in run.items()),
    flush=True,
  )
  return run


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--epochs', type=int, default=10)
  parser.add_argument(
    '--seeds',
    default='42,43,44',
    help='comma-separated; both sides run once per seed',
  )
  parser.add_argument(
    '--scale',
    type=int,
    default=1,
    help='K versions of each image (common.replicate_tree)',
  )
  parser.add_argument('--image-size', type=int, default=common.IMAGE_SIZE)
  args = parser.parse_args()
  seeds = [int(s) for s in args.seeds.split(',')]
  common.load_average('start')
  with tempfile.TemporaryDirectory(prefix='bench_a_') as tmp:
    data_root = common.DEMO_DATA
    if args.scale > 1:
      data_root = os.path.join(tmp, 'data')
      common.replicate_tree(common.DEMO_DATA, data_root, args.scale)
    split = common.pipeline_split(data_root)
    class_names = sorted({label for _, label in split['train']})
    strategy = tf.distribute.MirroredStrategy()
    side_args = (data_root, split, class_names, args.image_size)
    warmup = {
      side: run_side(side, *side_args, 1, strategy, seeds[0])
      for side in ('exact', 'cached')
    }
    runs = {'exact': [], 'cached': []}
    for i, seed in enumerate(seeds):
      for side in sorted(runs, reverse=i % 2 == 1):
        runs[side].append(
          run_side(side, *side_args, args.epochs, strategy, seed)
        )
  common.load_average('end')

  common.metric('scale', args.scale)
  common.metric('image_size', args.image_size)
  common.metric('images_train', len(split['train']))
  common.metric('images_eval', len(split['eval']))
  common.metric('epochs', args.epochs)
  common.metric('seeds', args.seeds)
  for side in ('exact', 'cached'):
    common.metric(f'warmup_{side}_1_epoch_seconds', warmup[side]['seconds'])
  mean = {
    side: {key: statistics.mean(r[key] for r in results) for key in results[0]}
    for side, results in runs.items()
  }
  for side in ('exact', 'cached'):
    common.metric(f'{side}_wall_seconds', mean[side]['seconds'])
    common.metric(
      f'{side}_wall_seconds_each',
      ','.join(f'{r["seconds"]:.1f}' for r in runs[side]),
    )
  common.metric(
    'speedup_exact_over_cached',
    mean['exact']['seconds'] / mean['cached']['seconds'],
  )
  for side in ('exact', 'cached'):
    common.metric(f'{side}_eval_accuracy', mean[side]['accuracy'])
    common.metric(
      f'{side}_eval_accuracy_each',
      ','.join(f'{r["accuracy"]:.4f}' for r in runs[side]),
    )
  common.metric(
    'accuracy_difference_points',
    100 * (mean['cached']['accuracy'] - mean['exact']['accuracy']),
  )
  for part in ('before_fit', 'first_epoch', 'later_epoch', 'after_fit'):
    for side in ('exact', 'cached'):
      common.metric(f'{side}_seconds_{part}', mean[side][part])


if __name__ == '__main__':
  main()

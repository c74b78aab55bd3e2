"""(e) Domain adaptation: DANN vs plain fine-tuning on a shifted target domain.

Source domain: half of data/fashion_demo (every other image of each class,
labelled). Target domain: the other half, shifted by the script into a temp
dir: lower contrast, brighter and with strong per-pixel colour noise (see
`shift`), a shift that costs plain fine-tuning about half its accuracy (a
milder one, inversion plus a random light background and dark foreground
colour per image, cost it only 1 point here, so it could not show an
adaptation effect). The target images are written to one flat
folder without class names; their labels are kept apart and used ONLY to
measure accuracy. As in the usual unsupervised domain-adaptation protocol,
the target accuracy is measured on the same target images DANN saw
unlabelled; the source accuracy on the original (unshifted) versions of
those images.

For each seed: one classifier (MobileNet, offline ImageNet weights, 96 px,
MirroredStrategy as run_fn) runs the cached phase 1 on the source images;
its weights are then copied into both arms, which run the same fine-tuning
phase (top 20 backbone layers, BatchNorm frozen, same epochs, learning rate
and seed):
  * plain: modules/phases.py run_phase on the source images;
  * dann_wW: modules/domain_adaptation.py run_adapted_phase on the source
    images plus the unlabelled target folder, with domain loss weight W (the
    default 0.1, and 1.0) and the other settings' defaults (ganin schedule,
    64 hidden units, domain head at lr 1e-3).
Prints one `name value` line per figure (per seed and the mean over seeds).

  .venv/bin/python benchmarks/dann_experiment.py [--seeds 42,43]
      [--phase2-epochs 10] [--weights 0.1,1.0]
"""

import argparse
import os
import statistics
import tempfile

import common
import numpy as np
from PIL import Image
import tensorflow as tf

from modules import backbones
from modules import domain_adaptation
from modules import embedding_cache
from modules import model as model_lib
from modules import phases
from pipeline import settings as settings_lib

_CONFIG = settings_lib.TrainerConfig()  # The demo's defaults.


def split_domains(examples):
  """(source, held-out): every other image of each class, by sorted path."""
  source, held_out = [], []
  for label in sorted({label for _, label in examples}):
    of_class = [e for e in examples if e[1] == label]
    source += of_class[0::2]
    held_out += of_class[1::2]
  return source, held_out


def shift(grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """The target domain: lower contrast, brighter, strong colour noise.

  v -> 0.6 v + N(60, 50) per pixel and channel, clipped to [0, 255]: a
  noisy colour sensor instead of clean greyscale scans.
  """
  noisy = 0.6 * grey.astype(np.float32)[..., None] + rng.normal(
    60.0, 50.0, size=grey.shape + (3,)
  )
  return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def write_target(examples, target_root: str, seed: int):
  """Writes shifted copies as target_root/NNNN.png; returns their examples."""
  rng = np.random.default_rng(seed)
  result = []
  for index, (path, label) in enumerate(examples):
    with Image.open(os.path.join(common.DEMO_DATA, path)) as image:
      grey = np.asarray(image.convert('L'))
    name = f'{index:04d}.png'
    Image.fromarray(shift(grey, rng)).save(os.path.join(target_root, name))
    result.append((name, label))
  return result


def accuracy(classifier, dataset) -> float:
  return float(classifier.evaluate(dataset, verbose=0)[1])


def run_seed(seed, args, data, target_root, strategy):
  """Phase 1 once, then both fine-tuning arms; {metric name: value}."""
  batch = _CONFIG.batch_size * strategy.num_replicas_in_sync
  common.set_seed(seed)
  with strategy.scope():
    backbone = backbones.build_backbone(
      common.BACKBONE, common.IMAGE_SIZE, common.WEIGHTS
    )
    classifier = model_lib.build_classifier(
      backbone, common.IMAGE_SIZE, len(data['class_names']), _CONFIG.dropout
    )
  context = phases.PhaseContext(
    classifier,
    [backbone],
    strategy,
    data['train'],
    data['source_eval'],
    phases.FitOptions(),
  )
  embedding_cache.run_cached_phase1(
    context,
    _CONFIG.phase1_epochs,
    _CONFIG.phase1_learning_rate,
    batch,
    seed,
  )
  after_phase1 = classifier.get_weights()
  figures = {
    'phase1_source_accuracy': accuracy(classifier, data['source_eval']),
    'phase1_target_accuracy': accuracy(classifier, data['target_eval']),
  }
  for arm, weight in [('plain', None)] + [
    (f'dann_w{w:g}', w) for w in args.weights
  ]:
    classifier.set_weights(after_phase1)
    common.set_seed(seed)
    with common.Timer() as timer:
      if weight is None:
        phases.run_phase(
          context,
          'phase2',
          args.phase2_epochs,
          _CONFIG.phase2_learning_rate,
          _CONFIG.fine_tune_layers,
        )
      else:
        settings = settings_lib.DomainAdaptationConfig(
          target_data_root=target_root, weight=weight
        )
        result = domain_adaptation.run_adapted_phase(
          context,
          'phase2',
          args.phase2_epochs,
          _CONFIG.phase2_learning_rate,
          _CONFIG.fine_tune_layers,
          settings=settings,
          image_size=common.IMAGE_SIZE,
          batch_size=batch,
          seed=seed,
        )
        # The domain head's training accuracy in the last epoch: 0.5 is a
        # confused head (aligned features), 1.0 a head that still wins.
        figures[f'{arm}_last_epoch_domain_accuracy'] = result['history'][
          'domain_accuracy'
        ][-1]
    with strategy.scope():
      model_lib.compile_for_phase(classifier, _CONFIG.phase2_learning_rate)
    figures[f'{arm}_source_accuracy'] = accuracy(
      classifier, data['source_eval']
    )
    figures[f'{arm}_target_accuracy'] = accuracy(
      classifier, data['target_eval']
    )
    figures[f'{arm}_phase2_seconds'] = timer.seconds
  return figures


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--seeds', default='42,43')
  parser.add_argument('--phase2-epochs', type=int, default=10)
  parser.add_argument(
    '--weights',
    default='0.1,1.0',
    help='domain_adaptation.weight of each DANN arm',
  )
  args = parser.parse_args()
  seeds = [int(s) for s in args.seeds.split(',')]
  args.weights = [float(w) for w in args.weights.split(',')]
  common.load_average('start')
  source, held_out = split_domains(common.list_images(common.DEMO_DATA))
  class_names = sorted({label for _, label in source})
  strategy = tf.distribute.MirroredStrategy()
  batch = _CONFIG.batch_size * strategy.num_replicas_in_sync
  results = []
  with tempfile.TemporaryDirectory(prefix='dann_target_') as target_root:
    target = write_target(held_out, target_root, common.SEED)
    data = {
      'class_names': class_names,
      'train': common.image_dataset(
        common.DEMO_DATA, source, class_names, batch, shuffle=True
      ),
      'source_eval': common.image_dataset(
        common.DEMO_DATA, held_out, class_names, batch, shuffle=False
      ),
      'target_eval': common.image_dataset(
        target_root, target, class_names, batch, shuffle=False
      ),
    }
    common.metric('source_images', len(source))
    common.metric('target_images', len(target))
    common.metric('chance_accuracy', 1.0 / len(class_names))
    for seed in seeds:
      figures = run_seed(seed, args, data, target_root, strategy)
      for name, value in figures.items():
        common.metric(f'seed{seed}_{name}', value)
      results.append(figures)
  for name in results[0]:
    common.metric(f'mean_{name}', statistics.mean(r[name] for r in results))
  common.load_average('end')


if __name__ == '__main__':
  main()

"""(b) The whole local pipeline vs the plain Keras script a user would write.

Same data, backbone (MobileNet, offline ImageNet weights), image size (96),
epochs (the demo's defaults), batch, learning rates and seed; both evaluated
on the same eval images (the pipeline's eval split).
  * pipeline: pipeline.local_runner.run with a fresh output dir (ExampleGen,
    StatisticsGen, SchemaGen, Transform, Trainer, Evaluator, Pusher); its
    accuracy is the exported model's on the raw bytes of the eval images;
  * plain: benchmarks/plain_keras.py on a train/ + eval/ tree of symlinks
    holding the pipeline's split (made before the clock starts).
Each side runs as its own process, as a user would run it, back to back
(--repeats alternates the order). Wall time is from launching the process
to the end of training + export (the pipeline: of the Pusher), so it counts
interpreter start and imports; `*_run_seconds` leaves those out.
The pipeline's per-component times (and the Trainer's parts, from the times
its run_fn prints its `[trainer]` lines) show where its fixed overhead is.
--scale K replicates every image K times (re-encoded, slightly shifted
copies in a temp tree) to show how that overhead amortizes. Copies of one
image can land in both splits, so accuracies at K > 1 are not held-out
figures; both sides still see the same split.

  .venv/bin/python benchmarks/pipeline_vs_keras.py [--scale 1] [--repeats 1]
      [--epochs P1,P2]
"""

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import common
import numpy as np

import plain_keras
from pipeline import settings as settings_lib

_HERE = os.path.dirname(os.path.abspath(__file__))
_CONFIG = settings_lib.TrainerConfig()
_TRAINER_PARTS = (
  'until_embeddings_cached',
  'phase1_head_fit_and_eval',
  'phase2_fit_and_eval',
  'export_and_publish',
)


class _TrainerLines(io.TextIOBase):
  """Tees stdout; records when each `[trainer] ...` line is printed."""

  def __enter__(self):
    self.times, self._stdout, sys.stdout = [], sys.stdout, self
    return self

  def __exit__(self, *exc):
    sys.stdout = self._stdout

  def write(self, text):
    if text.startswith('[trainer]'):
      self.times.append(time.perf_counter())
    return self._stdout.write(text)

  def flush(self):
    self._stdout.flush()


def pipeline_child(data_root: str, work: str, epochs: str) -> dict:
  """One fresh local pipeline run (in the child process); times, accuracy."""
  import helpers
  from pipeline import local_runner

  started = time.time()
  phase1, phase2 = map(int, epochs.split(','))
  config = settings_lib.PipelineConfig(
    data_root=data_root,
    output_dir=os.path.join(work, 'pipeline'),
    trainer={'phase1_epochs': phase1, 'phase2_epochs': phase2},
  )
  events = []  # (time, node, 'running' | 'finished')
  with _TrainerLines() as trainer_lines:
    run_start = time.perf_counter()
    result = local_runner.run(
      config,
      progress=lambda line: events.append(
        (time.perf_counter(), *line.split()[1:3])
      ),
    )
  finished = time.time()
  starts = {node: t for t, node, event in events if event == 'running'}
  seconds = {
    node: t - starts[node] for t, node, event in events if event == 'finished'
  }
  marks = [
    starts['Trainer'],
    *trainer_lines.times,
    starts['Trainer'] + seconds['Trainer'],
  ]
  eval_examples = helpers.split_examples(config.pipeline_root, 'eval')
  model_dir = result.pushed_to or os.path.join(result.model, 'Format-Serving')
  return {
    'started': started,
    'finished': finished,
    'accuracy': helpers.accuracy(model_dir, data_root, eval_examples),
    'eval_paths': sorted(p for p, _ in eval_examples),
    'blessed': result.blessed,
    'before_first_component': min(starts.values()) - run_start,
    'components': seconds,
    'trainer_parts': dict(zip(_TRAINER_PARTS, np.diff(marks).tolist())),
  }


def run_side(
  side: str, data_root: str, split_root: str, work: str, epochs: str
) -> dict:
  """Launches one side as a process; its wall time from launch, accuracy."""
  os.makedirs(work)
  result_path = os.path.join(work, 'result.json')
  if side == 'pipeline':
    command = [__file__, '--child', data_root, work, epochs]
  else:
    command = [
      os.path.join(_HERE, 'plain_keras.py'),
      '--data',
      split_root,
      '--export',
      os.path.join(work, 'model'),
      '--epochs',
      epochs,
      '--result',
      result_path,
    ]
  launched = time.time()
  subprocess.run([sys.executable, *command], check=True)
  with open(result_path) as f:
    result = json.load(f)
  result['seconds'] = result['finished'] - launched
  result['run_seconds'] = result['finished'] - result['started']
  print(
    f'# {side}: '
    + json.dumps({k: v for k, v in result.items() if k != 'eval_paths'}),
    flush=True,
  )
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--scale', type=int, default=1)
  parser.add_argument('--repeats', type=int, default=1)
  parser.add_argument(
    '--epochs',
    default=(f'{_CONFIG.phase1_epochs},{_CONFIG.phase2_epochs}'),
    help="'P1,P2': phase epochs (default: the demo's)",
  )
  parser.add_argument('--child', nargs=3, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    result = pipeline_child(*args.child)
    with open(os.path.join(args.child[1], 'result.json'), 'w') as f:
      json.dump(result, f)
    return
  assert (
    plain_keras.IMAGE_SIZE,
    plain_keras.BATCH_SIZE,
    plain_keras.SEED,
    plain_keras.PHASE1_EPOCHS,
    plain_keras.PHASE1_LEARNING_RATE,
    plain_keras.PHASE2_EPOCHS,
    plain_keras.PHASE2_LEARNING_RATE,
    plain_keras.FINE_TUNE_LAYERS,
    plain_keras.DROPOUT,
  ) == (
    _CONFIG.image_size,
    _CONFIG.batch_size,
    _CONFIG.seed,
    _CONFIG.phase1_epochs,
    _CONFIG.phase1_learning_rate,
    _CONFIG.phase2_epochs,
    _CONFIG.phase2_learning_rate,
    _CONFIG.fine_tune_layers,
    _CONFIG.dropout,
  ), 'settings differ'

  common.load_average('start')
  with tempfile.TemporaryDirectory(prefix='bench_b_') as tmp:
    data_root = common.DEMO_DATA
    if args.scale > 1:
      data_root = os.path.join(tmp, 'data')
      common.replicate_tree(common.DEMO_DATA, data_root, args.scale)
    split = common.pipeline_split(data_root)
    split_root = os.path.join(tmp, 'split')
    for name, examples in split.items():
      for path, _ in examples:
        os.makedirs(
          os.path.dirname(os.path.join(split_root, name, path)), exist_ok=True
        )
        os.symlink(
          os.path.join(data_root, path), os.path.join(split_root, name, path)
        )
    runs = {'pipeline': [], 'plain': []}
    for repeat in range(args.repeats):
      for side in sorted(runs, reverse=repeat % 2 == 1):
        runs[side].append(
          run_side(
            side,
            data_root,
            split_root,
            os.path.join(tmp, f'{side}_{repeat}'),
            args.epochs,
          )
        )
  common.load_average('end')
  assert runs['pipeline'][0]['eval_paths'] == sorted(
    p for p, _ in split['eval']
  ), 'the pipeline split differently'

  common.metric('scale', args.scale)
  common.metric('images_train', len(split['train']))
  common.metric('images_eval', len(split['eval']))
  common.metric('epochs_phase1_phase2', args.epochs)
  mean = {
    side: {
      key: statistics.mean(r[key] for r in rs)
      for key in ('seconds', 'run_seconds', 'accuracy')
    }
    for side, rs in runs.items()
  }
  for side in ('pipeline', 'plain'):
    common.metric(f'{side}_wall_seconds', mean[side]['seconds'])
    common.metric(f'{side}_run_seconds', mean[side]['run_seconds'])
  common.metric(
    'ratio_pipeline_over_plain',
    mean['pipeline']['seconds'] / mean['plain']['seconds'],
  )
  common.metric(
    'ratio_pipeline_over_plain_without_imports',
    mean['pipeline']['run_seconds'] / mean['plain']['run_seconds'],
  )
  for side in ('pipeline', 'plain'):
    common.metric(f'{side}_eval_accuracy', mean[side]['accuracy'])
  last = runs['pipeline'][-1]
  common.metric('pipeline_blessed', last['blessed'])
  common.metric(
    'pipeline_seconds_before_first_component', last['before_first_component']
  )
  for node, took in last['components'].items():
    common.metric(f'pipeline_seconds_{node}', took)
  for part, took in last['trainer_parts'].items():
    common.metric(f'pipeline_trainer_seconds_{part}', took)


if __name__ == '__main__':
  main()

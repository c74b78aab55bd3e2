"""Runs the real run_fn on 2 logical CPU devices; prints a JSON verdict.

Used by test_mirrored_strategy.py in a subprocess, because logical devices
must be configured before TensorFlow initializes its devices.
Usage: mirrored_run.py PIPELINE_ROOT OUTPUT_DIR
"""

import json
import os
import sys

import two_cpu_replicas  # noqa: F401 (first: before TensorFlow starts)

import helpers
from modules import embedding_cache
from modules import phases

checks = []


def _checked(phase_fn, name_of):
  """Wraps a phase function to record the head kernel's per-replica copies.

  `name_of` reads the phase's name from the arguments after the context.
  """

  def wrapper(context, *args, **kwargs):
    name = name_of(args)
    strategy = context.strategy
    kernel = context.model.get_layer('logits').kernel
    before = [v.numpy().copy() for v in kernel.values]
    result = phase_fn(context, *args, **kwargs)
    after = [v.numpy() for v in kernel.values]
    checks.append(
      {
        'phase': name,
        'replicas_in_sync': strategy.num_replicas_in_sync,
        'kernel_devices': sorted(v.device for v in kernel.values),
        'replica_copies_equal': bool(all((a == after[0]).all() for a in after)),
        'changed': bool(any((b != a).any() for b, a in zip(before, after))),
      }
    )
    return result

  return wrapper


# Phase 1 runs on cached embeddings, phase 2 through phases.run_phase.
embedding_cache.run_cached_phase1 = _checked(
  embedding_cache.run_cached_phase1, lambda args: 'phase1'
)
phases.run_phase = _checked(phases.run_phase, lambda args: args[0])
serving_dir = helpers.train_directly(
  sys.argv[1],
  sys.argv[2],
  {'phase1_epochs': 2, 'phase2_epochs': 1, 'batch_size': 8},
)
with open(os.path.join(sys.argv[2], 'model_run', 'training_summary.json')) as f:
  summary = json.load(f)
print(
  'VERDICT '
  + json.dumps(
    {
      'checks': checks,
      'replicas': summary['replicas'],
      'global_batch_size': summary['global_batch_size'],
      'phase2_accuracy': summary['phase2']['eval_accuracy'],
      'num_classes': len(summary['class_names']),
      'serving_dir': serving_dir,
    }
  )
)

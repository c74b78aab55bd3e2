"""The Trainer under MirroredStrategy with two replicas (2 logical CPUs).

The real `run_fn` (tests/mirrored_run.py, in a subprocess) on 2 logical CPU
devices: 2 replicas in sync, global batch 2 x 8, and the head's two replica
copies change and stay equal.
"""

import json
import os
import subprocess
import sys

import helpers


def test_run_fn_trains_two_replicas_in_sync(demo_run, tmp_path):
  config, _ = demo_run
  script = os.path.join(os.path.dirname(__file__), 'mirrored_run.py')
  process = subprocess.run(
    [sys.executable, script, config.pipeline_root, str(tmp_path)],
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  verdict_lines = [
    l for l in process.stdout.splitlines() if l.startswith('VERDICT ')
  ]
  assert process.returncode == 0 and verdict_lines, process.stderr[-3000:]
  verdict = json.loads(verdict_lines[-1][len('VERDICT ') :])
  print(verdict)

  assert verdict['replicas'] == 2
  assert verdict['global_batch_size'] == 16  # 8 per replica x 2.
  assert [c['phase'] for c in verdict['checks']] == ['phase1', 'phase2']
  for check in verdict['checks']:
    assert check['replicas_in_sync'] == 2
    assert len(check['kernel_devices']) == 2
    assert check['kernel_devices'][0] != check['kernel_devices'][1]
    assert check['changed'] and check['replica_copies_equal'], check
  # The model trained on two replicas is a real classifier.
  eval_examples = helpers.split_examples(config.pipeline_root, 'eval')
  acc = helpers.accuracy(
    verdict['serving_dir'], config.data_root, eval_examples
  )
  print(f'2-replica model accuracy on raw eval bytes: {acc:.3f}')
  assert acc > 2.0 / verdict['num_classes']

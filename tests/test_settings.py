"""The settings: one checked home, the same for every front end.

Checks that need no data fail with exit code 2 before any component runs,
in `tfx-transfer run` and in `python -m kubeflow compile` alike.
"""

import os
import subprocess
import sys

from kubeflow import cli as kubeflow_cli

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFX_TRANSFER = os.path.join(os.path.dirname(sys.executable), 'tfx-transfer')
COMPILE = ['compile', '--image', 'registry.example.com/tfx-transfer:test',
           '--output-dir', 'gs://example-bucket/tfx-transfer']


def _explain(process: subprocess.CompletedProcess) -> str:
  return (f'exit code {process.returncode}\nstdout:\n{process.stdout[-3000:]}'
          f'\nstderr:\n{process.stderr[-3000:]}')


def test_unknown_backbone_fails_before_example_gen(tmp_path):
  output_dir = tmp_path / 'out'
  process = subprocess.run(
      [TFX_TRANSFER, 'run', '--backbone', 'NoSuchNet', '--output-dir',
       str(output_dir)], cwd=PROJECT_ROOT, capture_output=True, text=True,
      timeout=120, check=False,
      env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
  assert process.returncode == 2, _explain(process)
  assert "Unknown backbone 'NoSuchNet'" in process.stderr
  assert not output_dir.exists()  # No component ran.


def test_compile_rejects_negative_epochs(tmp_path, capsys):
  output = tmp_path / 'pipeline.json'
  assert kubeflow_cli.main(
      COMPILE + ['--phase1-epochs', '-3', '--output', str(output)]) == 2
  assert 'trainer.phase1_epochs must be >= 0, got -3' in capsys.readouterr().err
  assert not output.exists()

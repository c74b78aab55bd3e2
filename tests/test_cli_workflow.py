"""The CI retraining workflow, checked here since it cannot run here.

actionlint (a PyPI wheel ships the binary) checks the workflow's syntax, the
actions' inputs, expressions and, with shellcheck on PATH, the `run:`
scripts. The other tests pin what docs/ci.md promises: the triggers, the
step order, the exit-code branches, and that CI's settings file is valid.
"""

import os
import shutil
import subprocess
import sys

import pytest
import yaml

from pipeline import settings as settings_lib

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOW = os.path.join(PROJECT_ROOT, '.github', 'workflows', 'retrain.yml')
# The venv's bin folder first: actionlint and shellcheck install there.
TOOLS_PATH = os.pathsep.join(
  [os.path.dirname(sys.executable), os.environ.get('PATH', '')]
)


@pytest.fixture(scope='module')
def workflow():
  with open(WORKFLOW) as f:
    return yaml.safe_load(f)


def _script(workflow, step_id):
  steps = workflow['jobs']['retrain']['steps']
  return next(step for step in steps if step.get('id') == step_id)['run']


def test_actionlint_passes():
  actionlint = shutil.which('actionlint', path=TOOLS_PATH)
  if not actionlint:
    pytest.skip('actionlint is not installed (test extra of pyproject.toml)')
  process = subprocess.run(
    [actionlint, '-verbose', WORKFLOW],
    cwd=PROJECT_ROOT,
    env={**os.environ, 'PATH': TOOLS_PATH},
    capture_output=True,
    text=True,
    check=False,
  )
  assert process.returncode == 0, process.stdout + process.stderr
  print(process.stderr)


def test_triggers_on_data_and_code_changes_schedule_and_by_hand(workflow):
  triggers = workflow[True]  # YAML 1.1 reads the key `on` as true.
  assert {
    'data/**',
    'modules/**',
    'components/**',
    'pipeline/**',
    'uv.lock',
  } <= set(triggers['push']['paths'])
  assert triggers['schedule'][0]['cron']
  assert 'workflow_dispatch' in triggers


def test_sets_up_the_locked_env_tests_then_retrains(workflow):
  runs = [step.get('run', '') for step in workflow['jobs']['retrain']['steps']]
  order = [
    next(i for i, run in enumerate(runs) if command in run)
    for command in ('make venv', 'make test', 'tfx-transfer run')
  ]
  assert order == sorted(order)


def test_branches_on_the_cli_exit_codes(workflow):
  script = _script(workflow, 'retrain')
  assert 'echo "exit_code=$code" >> "$GITHUB_OUTPUT"' in script
  cases = script[script.index('case $code in') :]
  pushed = cases[cases.index('0)') : cases.index('3)')]
  held = cases[cases.index('3)') : cases.index('4)')]
  anomalies = cases[cases.index('4)') : cases.index('2)')]
  bad_input = cases[cases.index('2)') : cases.index('*)')]
  internal = cases[cases.index('*)') :]
  assert '::notice' in pushed and 'exit' not in pushed
  assert '::warning' in held and 'exit' not in held
  assert '::error' in anomalies and 'exit 4' in anomalies
  assert 'data_validation.anomalies' in anomalies
  assert '::error' in bad_input and 'exit 2' in bad_input
  assert '::error' in internal and 'exit 1' in internal

  uploads = {
    step['with']['name']: step
    for step in workflow['jobs']['retrain']['steps']
    if step.get('uses', '').startswith('actions/upload-artifact')
  }
  assert "steps.retrain.outputs.exit_code == '0'" in uploads['model']['if']
  assert 'always()' in uploads['run-report']['if']


def test_the_ci_settings_file_is_valid(workflow):
  default = workflow[True]['workflow_dispatch']['inputs']['config']['default']
  values = settings_lib.load_file(os.path.join(PROJECT_ROOT, default))
  settings_lib.TrainerConfig.from_dict(values['trainer'])
  assert os.path.isdir(os.path.join(PROJECT_ROOT, values['data_root']))


def test_served_models_and_statistics_live_in_durable_storage(workflow):
  """The bucket named by a repository variable holds serving/ (the models and
  the data recorded beside them); the Actions cache is only the fallback."""
  steps = workflow['jobs']['retrain']['steps']
  runs = '\n'.join(step.get('run', '') for step in steps)
  assert 'vars.TFX_TRANSFER_STATE_URI' in yaml.safe_dump(workflow)
  assert '--expect-baseline' in _script(workflow, 'retrain')
  assert 'gcloud storage rsync' in runs and 'aws s3 sync' in runs
  cache = [
    step for step in steps if step.get('uses', '').startswith('actions/cache/')
  ]
  assert cache and all("env.STATE_URI == ''" in step['if'] for step in cache)
  assert 'GITHUB_STEP_SUMMARY' in runs

"""`tfx-transfer` driven as a user (or CI) would: subprocesses, exit codes.

Bad settings and missing data fail with exit code 2 before any component
runs. Then two real runs share one output directory: a trained model is
blessed and pushed (0); a worse one is not blessed, the gate holds and the
first model stays (3). Their reports are checked: the files, the JSON's
fields (per-class accuracy equals the confusion matrix's, the second run's
baseline is the first's accuracy, per-class recall equals TFMA's per-class
accuracy), valid PNGs; and `report`, `predict` and `backbones --json`.
"""

import dataclasses
import json
import os
import subprocess
import sys
import time

from PIL import Image
import pytest

from pipeline import cli
from pipeline import settings as settings_lib

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFX_TRANSFER = os.path.join(os.path.dirname(sys.executable), 'tfx-transfer')
# Seconds a settings error may take: it is reported before TF loads.
FAST = 10
REPORT_FILES = [
  'confusion_matrix.png',
  'report.json',
  'report.md',
  'training_curves.png',
]


def _cli(*args, cwd=PROJECT_ROOT) -> subprocess.CompletedProcess:
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'}
  return subprocess.run(
    [TFX_TRANSFER, *map(str, args)],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
    check=False,
  )


def _explain(process: subprocess.CompletedProcess) -> str:
  return (
    f'exit code {process.returncode}\nstdout:\n{process.stdout[-3000:]}'
    f'\nstderr:\n{process.stderr[-3000:]}'
  )


@pytest.mark.parametrize(
  'settings,message',
  [
    (
      'acuracy_threshold: 0.5\n',
      "unknown key(s) ['acuracy_threshold']; known keys: ['accuracy_threshold'",
    ),
    (
      'accuracy_threshold: high\n',
      "accuracy_threshold must be a number, got 'high' (str)",
    ),
    ('accuracy_threshold: 1.5\n', 'accuracy_threshold must be in [0, 1]'),
    (
      'modality: audio\n',
      "modality 'audio' is not supported; supported: ['image'",
    ),
    ('trainer: 3\n', 'trainer must be a mapping, got 3'),
    ('data_root: [1,\n', 'is not valid YAML'),
    ('- just\n- a list\n', 'expected a mapping of settings, got list'),
  ],
)
def test_bad_settings_file_exits_2_before_anything_runs(
  tmp_path, settings, message
):
  path = tmp_path / 'settings.yaml'
  path.write_text(settings)
  started = time.time()
  process = _cli('run', '--config', path, '--output-dir', tmp_path / 'out')
  assert process.returncode == cli.EXIT_BAD_INPUT, _explain(process)
  assert message in process.stderr
  assert time.time() - started < FAST
  assert not (tmp_path / 'out').exists()


def test_bad_toml_and_unreadable_settings_files_exit_2(tmp_path):
  toml = tmp_path / 'settings.toml'
  toml.write_text('accuracy_threshold = "high"\n[trainer\n')
  assert 'is not valid TOML' in _cli('run', '--config', toml).stderr
  json_file = tmp_path / 'settings.json'
  json_file.write_text('{}')
  process = _cli('run', '--config', json_file)
  assert process.returncode == cli.EXIT_BAD_INPUT
  assert 'settings files are .yaml, .yml or .toml' in process.stderr
  process = _cli('run', '--config', tmp_path / 'missing.yaml')
  assert process.returncode == cli.EXIT_BAD_INPUT
  assert 'cannot read settings file' in process.stderr


def test_missing_data_exits_2_before_anything_runs(tmp_path):
  started = time.time()
  missing = tmp_path / 'no_such_folder'
  process = _cli(
    'run', '--data-root', missing, '--output-dir', tmp_path / 'out'
  )
  assert process.returncode == cli.EXIT_BAD_INPUT, _explain(process)
  assert f'data root {missing} is not a directory' in process.stderr
  process = _cli(
    'run', '--manifest', 'labels.csv', '--output-dir', tmp_path / 'out'
  )
  assert process.returncode == cli.EXIT_BAD_INPUT, _explain(process)
  assert 'manifest labels.csv is not a file under' in process.stderr
  assert time.time() - started < 2 * FAST
  assert not (tmp_path / 'out').exists()


def test_unknown_trainer_setting_exits_2_listing_the_known_ones(tmp_path):
  path = tmp_path / 'settings.yaml'
  path.write_text('trainer:\n  phase1_epoch: 3\n')
  process = _cli('run', '--config', path, '--output-dir', tmp_path / 'out')
  assert process.returncode == cli.EXIT_BAD_INPUT, _explain(process)
  assert "['phase1_epoch']; known: [" in process.stderr
  assert "'phase1_epochs'" in process.stderr
  assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize(
  'trainer,message',
  [
    ({'phase1_epochs': -1}, 'trainer.phase1_epochs must be >= 0, got -1'),
    ({'phase2_epochs': 1.5}, 'trainer.phase2_epochs must be an integer'),
    ({'phase2_learning_rate': '1e-4'}, 'write 1.0e-4'),
    ({'dropout': 1.0}, 'trainer.dropout must be in [0, 1)'),
    ({'backbone': None}, 'trainer.backbone must be a string, got None'),
  ],
)
def test_bad_trainer_values_are_named(trainer, message):
  with pytest.raises(settings_lib.ConfigError) as error:
    settings_lib.TrainerConfig.from_dict(trainer)
  assert message in str(error.value)


def test_image_size_below_the_backbones_minimum_is_refused(tmp_path):
  args = cli._parse_args(
    [
      'run',
      '--backbone',
      'InceptionV3',
      '--image-size',
      '64',
      '--output-dir',
      str(tmp_path / 'out'),
    ]
  )
  with pytest.raises(
    ValueError,
    match=r'image_size 64 is below the minimum '
    r'input size of InceptionV3 \(75; native 299\)',
  ):
    cli._load_config(args)


def test_backbones_lists_the_zoo_hub_names_and_text_encoders():
  process = _cli('backbones', '--json')
  assert process.returncode == 0, _explain(process)
  listing = json.loads(process.stdout)
  from modules import backbones

  assert listing == json.loads(json.dumps(backbones.listing()))
  assert len(listing['image']) == 17
  text = _cli('backbones')
  assert text.returncode == 0, _explain(text)
  assert '  InceptionV3            21,802,784    299   75  no' in text.stdout
  assert '  MobileNet               3,228,864    224   32  yes' in text.stdout
  assert (
    'hub:inception_v3                      299 px  https://tfhub.dev/'
    'google/imagenet/inception_v3/feature_vector/5'
  ) in text.stdout
  assert 'MiniLM         22,565,376 parameters, 384-d, offline' in text.stdout


def test_flags_override_the_settings_file(tmp_path):
  path = tmp_path / 'settings.toml'
  path.write_text(
    'data_root = "data/fashion_demo"\naccuracy_threshold = 0.7\n'
    '[trainer]\nphase1_epochs = 4\nphase2_epochs = 1\n'
  )
  args = cli._parse_args(
    [
      'run',
      '--config',
      str(path),
      '--phase2-epochs',
      '0',
      '--output-dir',
      str(tmp_path / 'out'),
    ]
  )
  cwd = os.getcwd()
  os.chdir(PROJECT_ROOT)  # Relative paths are to the working directory.
  try:
    config = cli._load_config(args)
  finally:
    os.chdir(cwd)
  assert config.data_root == os.path.join(PROJECT_ROOT, 'data', 'fashion_demo')
  assert config.output_dir == str(tmp_path / 'out')
  assert config.accuracy_threshold == 0.7
  assert config.trainer == {'phase1_epochs': 4, 'phase2_epochs': 0}


@dataclasses.dataclass
class Runs:
  """Two runs in one output directory: pushed, then gate held."""

  output_dir: str
  first: subprocess.CompletedProcess
  versions_after_first: list
  second: subprocess.CompletedProcess
  artifacts: str


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('cli_runs')
  output_dir = str(root / 'outputs')
  good = root / 'good.yaml'
  good.write_text(
    'data_root: data/fashion_demo\nmodality: image\n'
    'accuracy_threshold: 0.3\n'
    'trainer:\n  phase1_epochs: 2\n  phase2_epochs: 0\n'
  )
  # As CI runs it: a served model is expected.
  first = _cli(
    'run', '--config', good, '--output-dir', output_dir, '--expect-baseline'
  )
  versions = [
    version
    for version in os.listdir(os.path.join(output_dir, 'serving'))
    if version.isdigit()
  ]
  worse = root / 'worse.toml'
  worse.write_text(
    'accuracy_threshold = 0.3\n'
    '[trainer]\nphase1_epochs = 0\nphase2_epochs = 0\n'
  )
  second = _cli(
    'run',
    '--config',
    worse,
    '--output-dir',
    output_dir,
    '--report-dir',
    root / 'artifacts',
    '--expect-baseline',
  )
  return Runs(output_dir, first, versions, second, str(root / 'artifacts'))


def _report_of(run: subprocess.CompletedProcess) -> str:
  """The report directory `run` printed."""
  line = next(
    line for line in run.stdout.splitlines() if line.startswith('Report: ')
  )
  return os.path.dirname(line[len('Report: ') :])


def _load(report_dir: str) -> dict:
  with open(os.path.join(report_dir, 'report.json')) as f:
    return json.load(f)


def test_blessed_run_exits_0_pushes_and_shows_progress(runs):
  assert runs.first.returncode == cli.EXIT_PUSHED, _explain(runs.first)
  assert len(runs.versions_after_first) == 1
  stdout = runs.first.stdout
  for line in (
    '] Trainer running',
    '] Trainer finished (',
    'Epoch 2/2',
    'Blessed and pushed to ',
  ):
    assert line in stdout
  table = stdout[stdout.index('\ncomponent ') :]
  assert table.split()[:3] == ['component', 'state', 'seconds']
  print(table)


def test_worse_run_exits_3_and_keeps_the_previous_model(runs):
  assert runs.second.returncode == cli.EXIT_NOT_BLESSED, _explain(runs.second)
  assert 'Not blessed (the gate held)' in runs.second.stdout
  assert 'gate failed: overall: sparse_categorical_accuracy' in (
    runs.second.stdout
  )
  serving = os.path.join(runs.output_dir, 'serving')
  version = runs.versions_after_first[0]
  # Beside the version: its run report and the data statistics and schema
  # that the next run's validation compares with.
  assert sorted(os.listdir(serving)) == [
    version,
    f'{version}.data',
    f'{version}.report',
  ]


def test_expect_baseline_warns_only_while_nothing_is_served(runs):
  def baseline_warnings(run):
    report = _load(_report_of(run))
    return [
      w
      for w in report['data_validation']['warnings']
      if w['check'] == 'baseline'
    ]

  (missing,) = baseline_warnings(runs.first)
  assert missing['reason'] == 'NO_SERVED_MODEL'
  assert '--expect-baseline' in missing['expected']
  # The second run compares with the first run's served model and its data.
  assert baseline_warnings(runs.second) == []


def test_reports_have_the_metrics_and_valid_images(runs):
  first, second = _report_of(runs.first), _report_of(runs.second)
  for report_dir in (first, second):
    assert sorted(os.listdir(report_dir)) == REPORT_FILES
    for image in ('training_curves.png', 'confusion_matrix.png'):
      with Image.open(os.path.join(report_dir, image)) as png:
        assert png.format == 'PNG' and min(png.size) >= 300
        png.verify()
  pushed, held = _load(first), _load(second)

  assert pushed['blessed'] and pushed['outcome'] == 'pushed'
  assert os.path.exists(os.path.join(pushed['pushed_to'], 'saved_model.pb'))
  assert not held['blessed'] and held['outcome'] == 'not_blessed'
  assert held['pushed_to'] is None

  for report in (pushed, held):
    accuracy = report['accuracy']
    for key in ('phase1', 'phase2', 'eval'):
      assert 0.0 <= accuracy[key] <= 1.0
    # The Trainer's last evaluation and TFMA's: one model, one eval split.
    assert accuracy['eval'] == pytest.approx(accuracy['phase2'], abs=0.02)
    matrix = report['confusion_matrix']
    assert len(matrix['labels']) == 5
    assert sorted(report['per_class']) == matrix['labels']
    for i, name in enumerate(matrix['labels']):
      row = matrix['matrix'][i]
      assert report['per_class'][name]['examples'] == sum(row)
      assert report['per_class'][name]['accuracy'] == pytest.approx(
        row[i] / sum(row)
      )
      # A class's recall is its accuracy; its support, its eval examples.
      classification = report['classification_report']['per_class'][name]
      assert classification['recall'] == pytest.approx(row[i] / sum(row))
      assert classification['support'] == sum(row)
      predicted = sum(other[i] for other in matrix['matrix'])
      assert classification['precision'] == (
        pytest.approx(row[i] / predicted) if predicted else None
      )
    assert {c['state'] for c in report['components'].values()} <= {
      'ran',
      'cached',
    }
    assert all(c['seconds'] >= 0 for c in report['components'].values())
  assert pushed['accuracy']['eval'] >= 0.6
  assert pushed['accuracy']['baseline'] is None
  assert len(pushed['training']['phase1']['history']['val_accuracy']) == 2
  assert pushed['components']['Trainer']['seconds'] > 1
  assert 'Pusher' in pushed['components']

  assert held['accuracy']['baseline'] == pytest.approx(
    pushed['accuracy']['eval']
  )
  for name, metrics in held['per_class'].items():
    assert metrics['baseline_accuracy'] == pytest.approx(
      pushed['per_class'][name]['accuracy']
    )
  assert held['accuracy']['eval'] < pushed['accuracy']['eval']
  assert held['gate']['validation_ok'] is False
  assert any(
    'vs the latest blessed model' in failure
    for failure in held['gate']['failures']
  )
  assert held['components']['FileBasedExampleGen']['state'] == 'cached'

  beside_model = pushed['pushed_to'] + '.report'
  assert _load(beside_model) == pushed
  assert _load(runs.artifacts) == held


def test_report_prints_the_latest_or_a_named_run(runs):
  latest = _cli('report', '--output-dir', runs.output_dir)
  assert latest.returncode == 0, _explain(latest)
  with open(os.path.join(_report_of(runs.second), 'report.md')) as f:
    assert latest.stdout == f.read()
  assert '**Not blessed: the gate held.**' in latest.stdout

  first_id = _load(_report_of(runs.first))['run_id']
  named = _cli(
    'report', '--output-dir', runs.output_dir, '--run', first_id, '--json'
  )
  assert json.loads(named.stdout)['run_id'] == first_id

  empty = _cli('report', '--output-dir', os.path.join(runs.output_dir, 'x'))
  assert empty.returncode == cli.EXIT_BAD_INPUT
  assert 'No run report under' in empty.stderr


def test_predict_classifies_files_with_the_pushed_model(runs):
  images = [
    os.path.join('data', 'fashion_demo', 'bag', 'bag_00018.png'),
    os.path.join(
      'data',
      'fashion_demo',
      'trouser',
      sorted(
        os.listdir(
          os.path.join(PROJECT_ROOT, 'data', 'fashion_demo', 'trouser')
        )
      )[0],
    ),
  ]
  process = _cli(
    'predict', '--model', os.path.join(runs.output_dir, 'serving'), *images
  )
  assert process.returncode == 0, _explain(process)
  lines = [json.loads(line) for line in process.stdout.splitlines()]
  assert [line['image'] for line in lines] == images
  for line in lines:
    assert sum(line['probabilities'].values()) == pytest.approx(1, abs=1e-3)
    assert line['label'] == max(
      line['probabilities'], key=line['probabilities'].get
    )
  missing = _cli(
    'predict', '--model', os.path.join(runs.output_dir, 'serving'), 'nope.png'
  )
  assert missing.returncode == cli.EXIT_BAD_INPUT
  assert 'nope.png' in missing.stderr

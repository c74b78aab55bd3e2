"""The settings (pipeline/settings.py): one checked home for every front end.

* pipeline/settings.py imports without TensorFlow.
* Checks that need no data fail with exit code 2 before any component runs,
  and `python -m kubeflow compile` rejects exactly what `tfx-transfer run`
  rejects, with the same message (flags, --set and settings files).
* Every settings key is reachable from a settings file and from each CLI
  (run, compile; schedule and run-once for the runtime parameters, which
  refuse compile-time keys), and the dedicated flags set the same keys.
"""

import argparse
import json
import os
import subprocess
import sys

from PIL import Image
import pytest
import yaml

from kubeflow import cli as kubeflow_cli
from pipeline import cli
from pipeline import settings as settings_lib

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFX_TRANSFER = os.path.join(os.path.dirname(sys.executable), 'tfx-transfer')
COMPILE = [
  'compile',
  '--image',
  'registry.example.com/tfx-transfer:test',
  '--output-dir',
  'gs://example-bucket/tfx-transfer',
]


def _explain(process: subprocess.CompletedProcess) -> str:
  return (
    f'exit code {process.returncode}\nstdout:\n{process.stdout[-3000:]}'
    f'\nstderr:\n{process.stderr[-3000:]}'
  )


def test_unknown_backbone_fails_before_example_gen(tmp_path):
  output_dir = tmp_path / 'out'
  process = subprocess.run(
    [
      TFX_TRANSFER,
      'run',
      '--backbone',
      'NoSuchNet',
      '--output-dir',
      str(output_dir),
    ],
    cwd=PROJECT_ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
    env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'},
  )
  assert process.returncode == 2, _explain(process)
  assert "Unknown backbone 'NoSuchNet'" in process.stderr
  assert not output_dir.exists()  # No component ran.


def test_compile_rejects_negative_epochs(tmp_path, capsys):
  output = tmp_path / 'pipeline.json'
  assert (
    kubeflow_cli.main(
      COMPILE + ['--phase1-epochs', '-3', '--output', str(output)]
    )
    == 2
  )
  assert 'trainer.phase1_epochs must be >= 0, got -3' in capsys.readouterr().err
  assert not output.exists()


def test_settings_import_without_tensorflow():
  process = subprocess.run(
    [
      sys.executable,
      '-c',
      'import sys; from pipeline import settings; '
      'print(sorted(m for m in sys.modules if m.startswith("tensorflow")))',
    ],
    cwd=PROJECT_ROOT,
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert process.returncode == 0, _explain(process)
  assert process.stdout.strip() == '[]'


# Bad settings, as flags or a settings file's text.
BAD_SETTINGS = [
  ['--phase1-epochs', '-3'],
  ['--image-size', '16'],
  ['--backbone', 'NoSuchNet'],
  ['--backbone', 'InceptionV3', '--image-size', '64'],
  ['--backbone', 'hub:no_such_handle'],
  ['--modality', 'audio'],
  ['--modality', 'text'],  # Without a data file.
  ['--accuracy-threshold', '1.5'],
  ['--set', 'trainer.dropout=1.0'],
  ['--set', 'trainer.phase1_epoch=3'],
  ['--set', 'trainer.augmentation.flip=diagonal'],
  ['--set', 'trainer.phases=[{epochs: 1}]'],
  ['--set', 'trainer.fine_tune_fraction=1.5'],
  ['--set', 'trainer.fine_tune_from=no_such_block'],  # Not a MobileNet layer.
  ['--set', 'max_rejected_fraction=2'],
  [
    '--set',
    'trainer.text_encoder=NoSuchEncoder',
    '--modality',
    'text',
    '--manifest',
    'rows.csv',
  ],
  'acuracy_threshold: 0.5\n',
  'trainer:\n  phase2_learning_rate: 1e-4\n',
  'trainer:\n  phases: [{epochs: 1, learning_rate: 1.0e-4}]\n'
  '  phase2_epochs: 3\n',
]


@pytest.mark.parametrize('bad', BAD_SETTINGS)
def test_compile_rejects_exactly_what_run_rejects(bad, tmp_path, capsys):
  data_root = tmp_path / 'data'
  data_root.mkdir()
  (data_root / 'rows.csv').write_text('text,label\n')
  if isinstance(bad, str):
    (tmp_path / 'settings.yaml').write_text(bad)
    bad = ['--config', str(tmp_path / 'settings.yaml')]
  output_dir = tmp_path / 'out'
  assert (
    cli.main(
      [
        'run',
        *bad,
        '--data-root',
        str(data_root),
        '--output-dir',
        str(output_dir),
      ]
    )
    == 2
  )
  run_error = capsys.readouterr().err.strip().splitlines()[-1]
  output = tmp_path / 'pipeline.json'
  assert kubeflow_cli.main(COMPILE + [*bad, '--output', str(output)]) == 2
  compile_error = capsys.readouterr().err.strip().splitlines()[-1]
  assert compile_error == run_error and run_error.startswith('error: ')
  assert not output_dir.exists() and not output.exists()


def _sample_values(tmp_path) -> dict:
  """A valid value other than the default for every settings key."""
  target = tmp_path / 'target'
  target.mkdir()
  Image.new('RGB', (8, 8)).save(target / 'a.png')
  return {
    'data_root': '/data/images',
    'modality': 'image_text',
    'output_dir': 'gs://bucket/out',
    'pipeline_name': 'nightly',
    'manifest': 'rows.jsonl',
    'split_folders': None,
    'text_columns': ['title', 'body'],
    'label_column': 'stars',
    'id_column': 'id',
    'image_column': 'image',
    'accuracy_threshold': 0.7,
    'max_accuracy_drop': 0.01,
    'max_rejected_fraction': 0.2,
    'allow_paths_outside_data_root': True,
    'beam_pipeline_args': ['--direct_num_workers=2'],
    'schema_file': 'gs://bucket/schema.pbtxt',
    'label_drift_comparator': 'jensen_shannon_divergence',
    'label_drift_threshold': 0.2,
    'feature_drift_threshold': 0.3,
    'split_skew_threshold': 0.25,
    'warn_anomalies': ['drift:label'],
    'trainer.backbone': 'MobileNetV2',
    'trainer.weights': 'none',
    'trainer.image_size': 128,
    'trainer.batch_size': 16,
    'trainer.text_encoder': 'bert:/models/bert',
    'trainer.text_weights': 'none',
    'trainer.max_length': 32,
    'trainer.phase1_epochs': 3,
    'trainer.phase1_learning_rate': 0.01,
    'trainer.phase1_patience': 4,
    'trainer.phase1_start': 'random',
    'trainer.head_weight_decay': 0.001,
    'trainer.validation_fraction': 0.25,
    'tuning': {'trials': 3},
    'trainer.phase2_epochs': 1,
    'trainer.phase2_learning_rate': 1e-5,
    'trainer.fine_tune_layers': 10,
    'trainer.fine_tune_from': None,
    'trainer.fine_tune_fraction': None,
    'trainer.text_fine_tune_layers': 1,
    'trainer.phases': None,
    'trainer.lr_schedule': 'cosine',
    'trainer.lr_decay_rate': 0.5,
    'trainer.lr_warmup_epochs': 1.0,
    'trainer.early_stopping_patience': 2,
    'trainer.class_weights': 'balanced',
    'trainer.augmentation': None,
    'trainer.augmentation.crop': 0.8,
    'trainer.augmentation.flip': 'horizontal',
    'trainer.augmentation.rotation': 0.1,
    'trainer.augmentation.zoom': 0.2,
    'trainer.augmentation.contrast': 0.3,
    'trainer.precision': 'mixed_float16',
    'trainer.dropout': 0.3,
    'trainer.seed': 7,
    'trainer.phase1_cache': False,
    'trainer.domain_adaptation': None,
    'trainer.domain_adaptation.target_data_root': str(target),
    'trainer.domain_adaptation.weight': 0.5,
    'trainer.domain_adaptation.schedule': 'constant',
    'trainer.domain_adaptation.hidden_units': 32,
    'trainer.domain_adaptation.domain_learning_rate': 0.01,
  }


# Keys set together with a sample (one of alternatives, or a section).
_ALTERNATIVES = {
  'split_folders': {'split_folders': ['train', 'eval'], 'modality': 'image'},
  'trainer.fine_tune_from': {'trainer.fine_tune_from': 'conv_pw_12'},
  'trainer.fine_tune_fraction': {'trainer.fine_tune_fraction': 0.25},
  'trainer.phases': {
    'trainer.phases': [
      {'epochs': 1, 'learning_rate': 1e-4, 'fine_tune_layers': 4}
    ]
  },
  'trainer.augmentation': {'trainer.augmentation': {'flip': 'vertical'}},
  'trainer.domain_adaptation': {},  # Filled in from target_data_root.
}


def _value_at(values: dict, key: str):
  for part in key.split('.'):
    values = values[part]
  return values


def _kubeflow_parser():
  parser = argparse.ArgumentParser()
  kubeflow_cli.add_subcommands(parser.add_subparsers(dest='command'))
  return parser


def test_every_setting_is_reachable_from_a_file_and_each_cli(tmp_path):
  samples = _sample_values(tmp_path)
  keys = settings_lib.setting_keys()
  assert set(samples) == set(keys) - {'trainer'}, 'add a sample value'
  with open(os.path.join(PROJECT_ROOT, 'docs', 'cli.md')) as f:
    docs = f.read()
  assert not [key for key in keys if f'| `{key}` |' not in docs], (
    'document it in docs/cli.md'
  )
  target = samples['trainer.domain_adaptation.target_data_root']
  _ALTERNATIVES['trainer.domain_adaptation'] = {
    'trainer.domain_adaptation': {'target_data_root': target}
  }
  kubeflow_parser = _kubeflow_parser()
  compile_time = {
    'modality',
    'output_dir',
    'pipeline_name',
    'manifest',
    'split_folders',
    'text_columns',
    'label_column',
    'id_column',
    'image_column',
    'max_rejected_fraction',
    'allow_paths_outside_data_root',
    'beam_pipeline_args',
    # Data validation: compiled in (KFP may set the
    # schema_file and data_validation parameters itself).
    'schema_file',
    'label_drift_comparator',
    'label_drift_threshold',
    'feature_drift_threshold',
    'split_skew_threshold',
    'warn_anomalies',
    'tuning',
  }
  for key, sample in samples.items():
    given = _ALTERNATIVES.get(key) or {key: sample}
    if key.startswith('trainer.domain_adaptation.') and key != (
      'trainer.domain_adaptation.target_data_root'
    ):
      given = {
        key: sample,
        'trainer.domain_adaptation.target_data_root': target,
      }
    base = {
      k: v
      for k, v in {'modality': 'image_text', 'manifest': 'rows.jsonl'}.items()
      if k not in given
    }
    values = {}
    for k, v in {**base, **given}.items():
      settings_lib._set(values, k, v)
    # A settings file.
    path = tmp_path / 'settings.yaml'
    path.write_text(yaml.safe_dump(values))
    from_file = settings_lib.PipelineConfig.from_dict(
      settings_lib.load_file(str(path))
    ).to_dict()
    for k, v in given.items():
      assert _value_at(from_file, k) == v, (key, 'file')
    # Each CLI: --set for every key; dedicated flags where there are.
    flags = [
      arg
      for k, v in {**base, **given}.items()
      for arg in (
        '--set',
        f'{k}={yaml.safe_dump(v).strip()}'
        if not isinstance(v, str)
        else f'{k}={v}',
      )
    ]
    parsed = {
      'run': cli._parse_args(['run', *flags]),
      'compile': kubeflow_parser.parse_args(COMPILE[:3] + flags),
    }
    for command, args in parsed.items():
      config = settings_lib.from_sources(None, args).to_dict()
      for k, v in given.items():
        assert _value_at(config, k) == v, (key, command)
    for command in ('schedule', 'run-once'):
      args = kubeflow_parser.parse_args(
        [
          command,
          *(['--cron', '0 0 3 * * *'] if command == 'schedule' else []),
          *flags[len(base) * 2 :],
        ]
      )
      runtime = not (
        key.split('.')[0] in compile_time
        or key
        in [f'trainer.{k}' for k in settings_lib.COMPILE_TIME_TRAINER_KEYS]
      )
      if runtime:
        values = kubeflow_cli._run_overrides(args)
        for k, v in given.items():
          assert _value_at(values, k) == v, (key, command)
      else:
        with pytest.raises(
          settings_lib.ConfigError, match='fixed at compile time'
        ):
          kubeflow_cli._run_overrides(args)


def test_dedicated_flags_are_the_settings_own(tmp_path):
  """Each dedicated flag sets its key as --set does, in every CLI."""
  kubeflow_parser = _kubeflow_parser()
  samples = _sample_values(tmp_path)
  for key, _ in settings_lib.flag_fields():
    value = samples[key]
    flag = [settings_lib.flag_name(key), str(value)]
    run = cli._parse_args(['run', *flag])
    compile_ = kubeflow_parser.parse_args(COMPILE[:3] + flag)
    for args in (run, compile_):
      assert _value_at(settings_lib.overrides(args), key) == value, key


def test_compile_takes_the_run_settings_file_for_text(tmp_path, capsys):
  """A text pipeline from a settings file, flags overriding it."""
  path = tmp_path / 'text.yaml'
  path.write_text(
    'modality: text\ndata_root: gs://bucket/reviews\n'
    'manifest: reviews.csv\ntext_columns: [review]\n'
    'trainer:\n  phase1_epochs: 3\n  max_length: 32\n'
  )
  output = tmp_path / 'pipeline.json'
  assert (
    kubeflow_cli.main(
      COMPILE
      + ['--config', str(path), '--phase2-epochs', '1', '--output', str(output)]
    )
    == 0
  ), capsys.readouterr().err
  spec = json.loads(output.read_text())
  parameters = {
    name: p['defaultValue']
    for name, p in spec['root']['inputDefinitions']['parameters'].items()
  }
  assert parameters['data_root'] == 'gs://bucket/reviews'
  assert json.loads(parameters['trainer_config']) == {
    'phase1_epochs': 3,
    'phase2_epochs': 1,
    'max_length': 32,
  }
  assert set(parameters) == {
    'data_root',
    'eval_config',
    'trainer_config',
    'data_validation',
  }
  tasks = spec['root']['dag']['tasks']
  assert json.loads(
    tasks['Transform']['inputs']['parameters']['custom_config']['runtimeValue'][
      'constant'
    ]
  ) == {'max_length': 32, 'text_encoder': 'MiniLM'}
  assert (
    tasks['FileBasedExampleGen']['inputs']['parameters']['input_base'][
      'componentInputParameter'
    ]
    == 'data_root'
  )

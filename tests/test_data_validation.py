"""The data validation gate, on real changes to the bundled data.

The baseline is a blessed model from the unchanged data: the session's
`demo_run` (images) and `fusion_run` (image+text, data/fashion_text), shared
with the end-to-end tests. Each test starts a fresh output directory that
holds only a copy of that run's `serving/` (the pushed model and the data
recorded beside it), so the reference comes from the served model, not from
MLMD. Then a real `tfx-transfer run` (in-process, `cli.main`) on a changed
copy of the data must stop before Transform with exit code 4, a report entry
naming the check and the feature, and the served model untouched:

- a class removed (the label domain's coverage, and label drift);
- a new class (the schema's label domain);
- thumbnails, half the images 16x16, against a curated schema written by
  `tfx-transfer schema init` (the width range, and image size drift);
- an image+text CSV whose text is empty in a third of the rows (text length
  drift);
- a label distribution shifted past the threshold (label drift, no class
  missing).

The unchanged data passes (a re-run of the baseline's own output directory
with a curated schema: the validator runs, the rest is cached). A named
anomaly can be turned into a warning, and a served model without recorded
data is a warning in the report. The stopped runs take ExampleGen,
StatisticsGen, SchemaGen and the validator only: measured on the shared
2-core machine under a load average of 14 to 19, ExampleGen 43 s,
StatisticsGen 59 s, SchemaGen and the validator under 1 s each.
"""

import json
import os
import shutil
import subprocess
import sys

from PIL import Image

import helpers
from pipeline import cli
from pipeline import report as report_lib

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_DATA = os.path.join(PROJECT_ROOT, 'data', 'fashion_demo')
TFX_TRANSFER = os.path.join(os.path.dirname(sys.executable), 'tfx-transfer')
EXIT_DATA_ANOMALIES = 4


def _serving_copy(config, tmp_path) -> str:
  """A fresh output directory holding only a copy of `config`'s serving/."""
  output_dir = str(tmp_path / 'out')
  shutil.copytree(config.serving_dir, os.path.join(output_dir, 'serving'))
  return output_dir


def _demo_copy(tmp_path) -> str:
  data_root = str(tmp_path / 'data')
  shutil.copytree(DEMO_DATA, data_root)
  return data_root


def _run(output_dir, *args):
  """`tfx-transfer run` in-process; returns (exit code, report.json)."""
  code = cli.main(['run', '--output-dir', output_dir, *map(str, args)])
  with open(
    os.path.join(report_lib.find(output_dir), report_lib.JSON_FILE)
  ) as f:
    return code, json.load(f)


def _versions(serving_dir):
  """The served versions and the data recorded beside them."""
  return sorted(n for n in os.listdir(serving_dir) if not n.endswith('.report'))


def _entries(report, check, feature):
  return [
    a
    for a in report['data_validation']['anomalies']
    if a['check'] == check and a['feature'] == feature
  ]


def _assert_stopped_before_transform(code, report, served_before, output_dir):
  assert code == EXIT_DATA_ANOMALIES, report['data_validation']
  assert report['outcome'] == 'data_anomalies'
  assert report['components']['ExampleValidator']['state'] == 'failed'
  assert 'Transform' not in report['components']
  assert report['pushed_to'] is None
  assert sorted(os.listdir(os.path.join(output_dir, 'serving'))) == (
    served_before
  )
  for anomaly in report['data_validation']['anomalies']:
    assert set(anomaly) >= {'check', 'feature', 'expected', 'found'}
    assert anomaly['expected'] and anomaly['found']


def test_the_pusher_records_statistics_and_schema_beside_the_model(demo_run):
  config, result = demo_run
  data = result.pushed_to.rstrip('/') + '.data'
  for split in ('train', 'eval'):
    assert os.path.isfile(
      os.path.join(data, 'statistics', f'Split-{split}', 'FeatureStats.pb')
    )
  with open(os.path.join(data, 'schema.pbtxt')) as f:
    schema = f.read()
  for feature in (
    'image_width',
    'image_height',
    'image_format',
    'image_byte_size',
    'label',
  ):
    assert f'name: "{feature}"' in schema
  assert os.path.dirname(data) == config.serving_dir


def test_unchanged_data_passes(demo_run, tmp_path):
  """A re-run of the baseline's data with a curated schema: the validator
  runs again (a new input) and passes; the rest is cached, so the run goes
  through to the Pusher."""
  config, result = demo_run
  schema_file = tmp_path / 'schema.pbtxt'
  assert (
    cli.main(
      [
        'schema',
        'init',
        '--output-dir',
        config.output_dir,
        '--from-run',
        result.run_id,
        '--out',
        str(schema_file),
      ]
    )
    == 0
  )
  served = _versions(config.serving_dir)
  code = cli.main(
    [
      'run',
      '--output-dir',
      config.output_dir,
      '--schema-file',
      str(schema_file),
      *(f'--{k.replace("_", "-")}={v}' for k, v in helpers.E2E_TRAINER.items()),
      # The baseline's Beam settings: they are part of the cache keys.
      '--set',
      f'beam_pipeline_args={json.dumps(list(config.beam_pipeline_args))}',
    ]
  )
  with open(
    os.path.join(report_lib.find(config.output_dir), report_lib.JSON_FILE)
  ) as f:
    report = json.load(f)
  assert code == cli.EXIT_PUSHED, report['data_validation']
  validation = report['data_validation']
  assert validation['anomalies'] == [] and validation['warnings'] == []
  # The curated file, as ImportSchemaGen imported it into the pipeline.
  with open(validation['reference']['schema']) as imported:
    assert imported.read() == schema_file.read_text()
  assert validation['reference']['statistics'].startswith(config.serving_dir)
  assert report['components']['ExampleValidator']['state'] == 'ran'
  assert report['components']['Transform']['state'] == 'cached'
  assert _versions(config.serving_dir) == served


def test_a_removed_class_stops_the_run(demo_run, tmp_path):
  config, _ = demo_run
  output_dir = _serving_copy(config, tmp_path)
  served = sorted(os.listdir(os.path.join(output_dir, 'serving')))
  data_root = _demo_copy(tmp_path)
  shutil.rmtree(os.path.join(data_root, 'trouser'))
  code, report = _run(output_dir, '--data-root', data_root)
  _assert_stopped_before_transform(code, report, served, output_dir)
  missing = _entries(report, 'label_coverage', 'label')
  assert missing and 'trouser' in missing[0]['found'], report
  assert _entries(report, 'drift', 'label')


def test_a_new_class_stops_the_run(demo_run, tmp_path):
  config, _ = demo_run
  output_dir = _serving_copy(config, tmp_path)
  served = sorted(os.listdir(os.path.join(output_dir, 'serving')))
  data_root = _demo_copy(tmp_path)
  sneakers = os.path.join(data_root, 'sneaker')
  os.makedirs(os.path.join(data_root, 'sandal'))
  for name in sorted(os.listdir(sneakers))[:30]:
    shutil.move(
      os.path.join(sneakers, name), os.path.join(data_root, 'sandal', name)
    )
  code, report = _run(output_dir, '--data-root', data_root)
  _assert_stopped_before_transform(code, report, served, output_dir)
  schema = _entries(report, 'schema', 'label')
  assert schema and 'sandal' in schema[0]['found'], report


def test_thumbnails_stop_the_run_against_a_curated_schema(demo_run, tmp_path):
  config, result = demo_run
  schema_file = tmp_path / 'schema.pbtxt'
  process = subprocess.run(
    [
      TFX_TRANSFER,
      'schema',
      'init',
      '--output-dir',
      config.output_dir,
      '--from-run',
      result.run_id,
      '--out',
      str(schema_file),
    ],
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert process.returncode == 0, process.stderr[-3000:]
  curated = schema_file.read_text()
  for feature in ('image_width', 'image_height', 'image_byte_size'):
    assert f'name: "{feature}"' in curated
  assert 'min: 28' in curated and 'max: 28' in curated  # Fashion-MNIST size.

  output_dir = _serving_copy(config, tmp_path)
  served = sorted(os.listdir(os.path.join(output_dir, 'serving')))
  data_root = _demo_copy(tmp_path)
  for i, path in enumerate(sorted(_image_files(data_root))):
    if i % 2 == 0:
      with Image.open(path) as image:
        image.resize((16, 16)).save(path, format=image.format)
  settings = tmp_path / 'settings.yaml'
  settings.write_text(f'schema_file: {schema_file}\n')
  code, report = _run(
    output_dir, '--data-root', data_root, '--config', settings
  )
  _assert_stopped_before_transform(code, report, served, output_dir)
  # The curated file, as ImportSchemaGen imported it into the pipeline.
  with open(report['data_validation']['reference']['schema']) as imported:
    assert imported.read() == schema_file.read_text()
  width = _entries(report, 'schema', 'image_width')
  assert width and '16' in width[0]['found'], report
  assert _entries(report, 'drift', 'image_width')


def _image_files(data_root):
  for folder, _, names in os.walk(data_root):
    for name in names:
      yield os.path.join(folder, name)


def test_a_shifted_label_distribution_stops_the_run(demo_run, tmp_path):
  config, _ = demo_run
  output_dir = _serving_copy(config, tmp_path)
  served = sorted(os.listdir(os.path.join(output_dir, 'serving')))
  data_root = _demo_copy(tmp_path)
  bags = sorted(os.listdir(os.path.join(data_root, 'bag')))
  for name in bags[len(bags) // 4 :]:  # A quarter of the bags stay.
    os.remove(os.path.join(data_root, 'bag', name))
  code, report = _run(output_dir, '--data-root', data_root)
  _assert_stopped_before_transform(code, report, served, output_dir)
  drift = _entries(report, 'drift', 'label')
  assert drift and 'bag' in drift[0]['found'], report
  assert not _entries(report, 'label_coverage', 'label')

  # Named as a warning, the same drift does not stop the run (the validator
  # on this run's own statistics).
  from components import data_validator

  validation = report['data_validation']
  outcome = data_validator.validate(
    validation['statistics'],
    validation['schema'],
    curated_schema=None,
    baseline_dir=os.path.join(output_dir, 'serving'),
    settings=data_validator.Settings(warn_anomalies=['drift:label']),
  )
  assert outcome['anomalies'] == []
  assert [
    w
    for w in outcome['warnings']
    if w['check'] == 'drift' and w['feature'] == 'label'
  ]


def test_an_empty_text_column_stops_the_image_text_run(fusion_run, tmp_path):
  config, _ = fusion_run
  output_dir = _serving_copy(config, tmp_path)
  served = sorted(os.listdir(os.path.join(output_dir, 'serving')))
  data_root = str(tmp_path / 'data')
  shutil.copytree(
    os.path.join(PROJECT_ROOT, 'data', 'fashion_demo'),
    os.path.join(data_root, 'fashion_demo'),
  )
  with open(
    os.path.join(PROJECT_ROOT, 'data', 'fashion_text', 'manifest.csv')
  ) as f:
    header, *rows = f.read().splitlines()
  assert header == 'path,text,label'
  emptied = []
  for i, row in enumerate(rows):
    if i % 3 == 0:
      path, _, label = row[: row.index(',')], None, row[row.rindex(',') + 1 :]
      row = f'{path},,{label}'
    emptied.append(row)
  os.makedirs(os.path.join(data_root, 'fashion_text'))
  with open(os.path.join(data_root, 'fashion_text', 'manifest.csv'), 'w') as f:
    f.write('\n'.join([header, *emptied]) + '\n')
  code, report = _run(
    output_dir,
    '--data-root',
    data_root,
    '--modality',
    'image_text',
    '--manifest',
    'fashion_text/manifest.csv',
  )
  _assert_stopped_before_transform(code, report, served, output_dir)
  assert _entries(report, 'drift', 'text_length'), report


def test_a_served_model_without_recorded_data_is_a_warning(demo_run, tmp_path):
  """The validator on the demo run's own statistics and schema."""
  from components import data_validator

  config, result = demo_run
  serving = os.path.join(_serving_copy(config, tmp_path), 'serving')
  for name in os.listdir(serving):
    if name.endswith('.data'):
      shutil.rmtree(os.path.join(serving, name))
  outcome = data_validator.validate(
    result.statistics,
    result.schema,
    curated_schema=None,
    baseline_dir=serving,
    settings=data_validator.Settings(),
  )
  assert outcome['anomalies'] == []
  baseline = [w for w in outcome['warnings'] if w['check'] == 'baseline']
  assert baseline and 'no recorded statistics' in baseline[0]['found']

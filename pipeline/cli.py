"""`tfx-transfer`: retrain locally, classify with a pushed model, show reports.

  tfx-transfer run [--config FILE] [flags]   run the pipeline (LocalDagRunner)
  tfx-transfer predict --model DIR [FILE...] [--text T...]
                                             classify images and/or texts
  tfx-transfer report [--output-dir DIR]     print the last run's report
  tfx-transfer schema init --out FILE        write a first curated schema
  tfx-transfer backbones [--json]            list the backbones and encoders

Settings come from PipelineConfig's defaults (pipeline/settings.py), then the
--config file (YAML or TOML), then the flags (docs/cli.md). `run` writes its
report to <output-dir>/reports/<run>/ and beside a pushed model.

--data-root and --output-dir may be object store URIs (s3://bucket/dir on AWS
or MinIO, gs://bucket/dir); S3 reads AWS_ENDPOINT_URL (or S3_ENDPOINT),
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION (see
pipeline/object_store.py).

Exit codes of `run` (for CI):
  0  a new model was blessed and pushed
  3  a model was trained but not blessed (the gate held) or its training
     diverged (NaN loss): nothing was pushed and the previous model keeps
     serving
  4  the data failed validation (schema, label coverage, drift or skew; see
     the report's data_validation): stopped before Transform, nothing was
     trained or pushed, the previous model keeps serving
  2  bad input or configuration (settings, data, model or image paths), or
     another run is using the output directory (nothing was run)
  1  internal failure

`predict` prints one JSON line per input, in order: `status` 'ok' with
`label` and `probabilities`, or another status (docs/serving.md; 'unreadable'
for a file that cannot be read) with `error`. It exits 0 if every input was
classified, 2 if any was not (or the model path is wrong), 1 on an internal
failure.
"""

import argparse
import json
import os
import sys
from typing import Optional
import warnings

from pipeline import object_store
from pipeline import settings as settings_lib

EXIT_PUSHED, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_NOT_BLESSED = 0, 1, 2, 3
EXIT_DATA_ANOMALIES = 4


def _parse_args(argv):
  parser = argparse.ArgumentParser(
    prog='tfx-transfer',
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  commands = parser.add_subparsers(dest='command', required=True)
  kubeflow = commands.add_parser(
    'kubeflow',
    add_help=False,
    help='compile | upload | schedule | run-once on Kubeflow Pipelines '
    '(`tfx-transfer kubeflow --help`).',
  )
  kubeflow.add_argument('kubeflow_argv', nargs=argparse.REMAINDER)

  run = commands.add_parser(
    'run',
    help='Run the pipeline locally (Beam); exit code 0/3/4/2/1.',
    description='Run the pipeline locally. Flags override --config.',
  )
  run.add_argument(
    '--config',
    help='YAML (.yaml/.yml) or TOML (.toml) file '
    'with PipelineConfig keys and a `trainer` table '
    '(docs/cli.md).',
  )
  settings_lib.add_flags(run)
  run.add_argument(
    '--report-dir',
    help='Also copy the run report here (e.g. a CI artifact folder).',
  )
  run.add_argument(
    '--expect-baseline',
    action='store_true',
    help='A served model should exist (CI after restoring '
    'the state): its absence is a warning in the report.',
  )

  schema = commands.add_parser(
    'schema', help='schema init: write a first curated schema from a run.'
  )
  schema_commands = schema.add_subparsers(dest='schema_command', required=True)
  init = schema_commands.add_parser(
    'init',
    help="Write a run's inferred schema with the observed ranges "
    '(image size, width, height, text length) for you to edit.',
  )
  init.add_argument(
    '--output-dir', help="The runs' output directory (default: outputs/)."
  )
  init.add_argument('--from-run', help='A run id (default: the newest run).')
  init.add_argument('--pipeline-name', default='transfer-learning')
  init.add_argument(
    '--out',
    required=True,
    help='The schema file to write '
    '(e.g. schema.pbtxt); an existing file is kept.',
  )

  predict = commands.add_parser(
    'predict', help='Classify image files with a pushed model.'
  )
  predict.add_argument(
    '--model',
    required=True,
    help='A pushed model directory, or the serving/ folder (newest version).',
  )
  predict.add_argument('images', nargs='*')
  predict.add_argument(
    '--text',
    action='append',
    default=[],
    help='A text to classify (repeat the flag); for an '
    'image+text model, one per image, in order.',
  )

  report = commands.add_parser(
    'report', help="Print the last run's report (markdown)."
  )
  report.add_argument(
    '--output-dir', help="The runs' output directory (default: outputs/)."
  )
  report.add_argument('--run', help='A run id (default: the newest report).')
  report.add_argument(
    '--json',
    action='store_true',
    help='Print report.json instead of the markdown.',
  )

  listing = commands.add_parser(
    'backbones',
    help='List the image backbones, TF Hub handles and text '
    'encoders with their parameters and input sizes.',
  )
  listing.add_argument(
    '--json', action='store_true', help='Print the listing as JSON.'
  )
  return parser.parse_args(argv)


def _error(message: str) -> int:
  print(f'error: {message}', file=sys.stderr)
  return EXIT_BAD_INPUT


def _load_config(args):
  """PipelineConfig from the defaults, --config and the flags; checks it.

  Every check that needs no data runs here, before any component.

  Raises:
    ValueError: with a message for the user.
  """
  config = settings_lib.from_sources(args.config, args)
  for key in ('data_root', 'output_dir'):
    if not object_store.is_remote(getattr(config, key)):
      setattr(config, key, os.path.abspath(getattr(config, key)))
  problem = _path_problem(config.data_root, directory=True)
  if problem:
    raise ValueError(f'data root {config.data_root} {problem}')
  if config.manifest and _path_problem(
    os.path.join(config.data_root, config.manifest)
  ):
    raise ValueError(
      f'manifest {config.manifest} is not a file under {config.data_root}'
    )
  if config.schema_file and '://' not in config.schema_file:
    config.schema_file = os.path.abspath(config.schema_file)
    if not os.path.isfile(config.schema_file):
      raise ValueError(
        f'schema_file {config.schema_file} is not a file '
        '(`tfx-transfer schema init` writes a first one)'
      )
  settings_lib.check_models(config)  # Loads TF.
  return config


def _path_problem(path: str, directory: bool = False) -> Optional[str]:
  """Why `path` is not a directory (or a file), or None; local or remote."""
  if object_store.uses_s3(path):
    return object_store.s3_problem(path, directory)
  if object_store.is_remote(path):  # gs://: TensorFlow's own filesystem.
    import tensorflow as tf

    isdir, exists = tf.io.gfile.isdir, tf.io.gfile.exists
  else:
    isdir, exists = os.path.isdir, os.path.exists
  if directory:
    return None if isdir(path) else 'is not a directory'
  return None if exists(path) and not isdir(path) else 'is not a file'


def _run(args) -> int:
  try:
    config = _load_config(args)
  except (TypeError, ValueError) as e:
    return _error(str(e))
  from components import data_validator
  from modules import phases
  from pipeline import local_runner
  from pipeline import report as report_lib

  print(
    f'Running pipeline on {config.data_root} -> {config.output_dir}', flush=True
  )
  from components import atomic_pusher

  baseline_missing = args.expect_baseline and not atomic_pusher.pushed_versions(
    config.serving_dir
  )
  try:
    result = local_runner.run(
      config, progress=lambda line: print(line, flush=True)
    )
  except (ValueError, local_runner.OutputDirBusyError) as e:
    # Bad input data (raised by components), or another run in output_dir.
    return _error(str(e))
  except phases.TrainingDivergedError as e:
    print(
      f'{e}\nNot blessed: training diverged, nothing was pushed; the '
      'previous model stays.',
      file=sys.stderr,
    )
    return EXIT_NOT_BLESSED
  except data_validator.DataAnomaliesError as e:
    result = e.run_result
  report = report_lib.build(config, result)
  if baseline_missing:
    report['data_validation']['warnings'].insert(
      0,
      {
        'check': 'baseline',
        'feature': '',
        'split': '',
        'reason': 'NO_SERVED_MODEL',
        'expected': f'a served model in {config.serving_dir} (--expect-'
        'baseline)',
        'found': 'none: the first run, or the state was lost; drift was not '
        'checked and the gate had only its absolute bound',
      },
    )
  report_dir = report_lib.write(
    report, config.output_dir, copy_to=args.report_dir
  )
  _print_summary(report)
  print(f'Report: {os.path.join(report_dir, report_lib.MARKDOWN_FILE)}')
  if report['outcome'] == 'data_anomalies':
    print(
      'Stopped by data validation before Transform: nothing was trained '
      'or pushed; the previous model stays. To accept a change, edit the '
      'schema file or name the anomaly in warn_anomalies.'
    )
    return EXIT_DATA_ANOMALIES
  if result.pushed_to:
    print(f'Blessed and pushed to {result.pushed_to}')
    return EXIT_PUSHED
  print(
    'Not blessed (the gate held): nothing was pushed; the previous model stays.'
  )
  return EXIT_NOT_BLESSED


def _print_summary(report) -> None:
  """The components' table and the accuracies, from the run report."""
  print(f'\n{"component":32s} {"state":7s} {"seconds":>8s}')
  for node, component in report['components'].items():
    print(f'{node:32s} {component["state"]:7s} {component["seconds"]:8.1f}')
  print(f'{"pipeline":32s} {"":7s} {report["seconds"]:8.1f}\n')
  accuracy = report['accuracy']
  for phase in ('phase1', 'phase2'):
    if phase in report['training']:
      print(
        f'{phase} ({report["training"][phase]["epochs"]} epochs) eval '
        f'accuracy: {accuracy[phase]:.4f}'
      )
  if accuracy['eval'] is not None:
    baseline = accuracy['baseline']
    print(
      f'Evaluator accuracy: {accuracy["eval"]:.4f}; served '
      f'model: {"none" if baseline is None else f"{baseline:.4f}"}'
    )
  for failure in report['gate']['failures']:
    print(f'  gate failed: {failure}')
  for kind in ('anomalies', 'warnings'):
    for entry in report['data_validation'][kind]:
      print(
        f'  data {kind.replace("ies", "y").rstrip("s")}: '
        f'{entry["check"]} {entry["feature"]} '
        f'({entry["split"]}): expected {entry["expected"]}; found '
        f'{entry["found"]}'
      )


def _latest_version(model_dir: str) -> str:
  object_store.register(model_dir)
  from components import atomic_pusher
  from tfx.dsl.io import fileio

  if fileio.exists(os.path.join(model_dir, 'saved_model.pb')):
    return model_dir
  versions = atomic_pusher.pushed_versions(model_dir)
  if not versions:
    raise FileNotFoundError(f'No SavedModel under {model_dir}')
  return os.path.join(model_dir, versions[-1])


def _read_images(paths):
  """(bytes per path, {index: why it could not be read}); b'' if unreadable."""
  images, unreadable = [], {}
  for i, path in enumerate(paths):
    try:
      with open(path, 'rb') as f:
        images.append(f.read())
    except OSError as e:  # Missing, a directory, no permission, ...
      images.append(b'')
      unreadable[i] = f'unreadable: {e}'
  return images, unreadable


def _predict(args) -> int:
  """One JSON line per input; exit 2 if any could not be classified."""
  try:
    model_path = _latest_version(args.model)
  except OSError as e:
    return _error(str(e))
  images, unreadable = _read_images(args.images)
  import tensorflow as tf
  import tensorflow_text  # noqa: F401 (registers its ops)
  from modules import serving

  serve = tf.saved_model.load(model_path).signatures['serving_default']
  given = {'image_bytes': images, 'text': args.text}
  wanted = sorted(serve.structured_input_signature[1])
  inputs = {name: given.get(name, []) for name in wanted}
  counts = {len(v) for v in inputs.values()}
  if (
    counts == {0}
    or len(counts) != 1
    or any(v for k, v in given.items() if k not in inputs)
  ):
    return _error(
      f'this model takes {" and ".join(wanted)} (image files '
      'and/or --text), one of each per example'
    )
  outputs = serve(**{k: tf.constant(v) for k, v in inputs.items()})
  count = counts.pop()
  statuses = (
    outputs['status'].numpy().astype(str)
    if 'status' in outputs
    else ['ok'] * count
  )  # Models exported before the status.
  bad = []
  for i in range(count):
    line = {
      **({'image': args.images[i]} if 'image_bytes' in inputs else {}),
      **({'text': args.text[i]} if 'text' in inputs else {}),
    }
    if i in unreadable or statuses[i] != 'ok':
      bad.append(args.images[i] if 'image_bytes' in inputs else f'text {i + 1}')
      status = 'unreadable' if i in unreadable else statuses[i]
      line.update(
        status=status,
        error=unreadable.get(
          i, f'{status}: {serving.MEANINGS.get(status, status)}'
        ),
      )
    else:
      line.update(
        status='ok',
        label=outputs['label'][i].numpy().decode(),
        probabilities={
          c.decode(): round(float(p), 4)
          for c, p in zip(
            outputs['classes'][i].numpy(), outputs['probabilities'][i].numpy()
          )
        },
      )
    print(json.dumps(line), flush=True)
  if bad:
    return _error(
      f'{len(bad)} of {count} inputs could not be classified '
      f'(see "error" in their lines): {", ".join(bad)}'
    )
  return 0


def _report(args) -> int:
  from pipeline import report as report_lib

  output_dir = args.output_dir or settings_lib.PipelineConfig.output_dir
  if object_store.is_remote(output_dir):
    object_store.register(output_dir)
  else:
    output_dir = os.path.abspath(output_dir)
  try:
    report_dir = report_lib.find(output_dir, args.run)
  except FileNotFoundError as e:
    return _error(str(e))
  name = report_lib.JSON_FILE if args.json else report_lib.MARKDOWN_FILE
  sys.stdout.write(report_lib.read(report_dir, name))
  return 0


def _schema(args) -> int:
  """`schema init`: a run's inferred schema with the observed ranges."""
  from components import data_validator
  from pipeline import local_runner

  if os.path.exists(args.out):
    return _error(f'{args.out} exists; not overwriting a curated schema')
  config = settings_lib.PipelineConfig(
    output_dir=os.path.abspath(
      args.output_dir or settings_lib.PipelineConfig.output_dir
    ),
    pipeline_name=args.pipeline_name,
  )
  try:
    result = local_runner.read_run(config, args.from_run)
  except ValueError as e:
    return _error(str(e))
  if not (result.schema and result.statistics):
    return _error(f'run {result.run_id} has no inferred schema and statistics')
  schema = data_validator.initial_schema(
    data_validator.load_schema(result.schema),
    [
      data_validator.load_statistics(result.statistics, split)
      for split in data_validator.SPLITS
    ],
  )
  from google.protobuf import text_format

  with open(args.out, 'w') as f:
    f.write(
      data_validator.INITIAL_SCHEMA_HEADER + text_format.MessageToString(schema)
    )
  print(
    f'Wrote {args.out} from run {result.run_id}; edit it, keep it in '
    'version control, and set schema_file (or --schema-file) to it.'
  )
  return 0


def _backbones(args) -> int:
  from modules import backbones

  listing = backbones.listing()
  if args.json:
    print(json.dumps(listing, indent=2))
    return 0
  print(
    'Image backbones (--backbone NAME; parameters without the top, '
    'input sizes in pixels):'
  )
  print(
    f'  {"name":20s} {"parameters":>12s} {"native":>6s} {"min":>4s}  '
    'offline weights'
  )
  for row in listing['image']:
    print(
      f'  {row["name"]:20s} {row["parameters"]:12,d} '
      f'{row["native_size"]:6d} {row["min_size"]:4d}  '
      f'{"yes" if row["offline_weights"] else "no"}'
    )
  print(
    'TF Hub image feature vectors (--backbone hub:NAME; need internet, '
    'local directories excepted):'
  )
  for row in listing['hub']:
    native = f'{row["native_size"]:4d} px  {row["url"]}' if row['url'] else ''
    print(f'  {row["name"]:36s} {native}'.rstrip())
  print('Text encoders (trainer.text_encoder):')
  for row in listing['text']:
    parameters = (
      f'{row["parameters"]:,d} parameters, {row["dimension"]}-d, '
      if row['parameters']
      else ''
    )
    offline = 'offline' if row['offline_weights'] else 'needs internet'
    print(f'  {row["name"]:14s} {parameters}{offline}: {row["description"]}')
  return 0


def main(argv=None) -> int:
  os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  # google-api-core warns about Python 3.10 once per imported API package.
  warnings.filterwarnings('ignore', category=FutureWarning, module='google')
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:1] == ['kubeflow']:  # Loads kfp only when asked for.
    from kubeflow import cli as kubeflow_cli

    return kubeflow_cli.main(argv[1:], prog='tfx-transfer kubeflow')
  args = _parse_args(argv)
  try:
    return {
      'run': _run,
      'predict': _predict,
      'report': _report,
      'schema': _schema,
      'backbones': _backbones,
    }[args.command](args)
  except Exception:
    import traceback

    traceback.print_exc()
    return EXIT_INTERNAL


def console_main() -> None:
  """The `tfx-transfer` command: `main`, then `object_store.exit_process`.

  Ends with main's status even where tensorflow-io's S3 filesystem would
  abort the interpreter's teardown (exit 134 after a good run).
  """
  object_store.exit_process(main())


if __name__ == '__main__':
  console_main()

"""`python -m kubeflow`: compile the pipeline for Kubeflow, upload, schedule.

  compile   Pipeline IR for KFP (KubeflowV2DagRunner), for an image, from
            the settings of `tfx-transfer run` (--config FILE, flags).
  upload    Upload a compiled pipeline as a new pipeline version.
  schedule  Upload, then create a recurring run of that version.
  run-once  Upload, then start one run of that version.

The KFP commands read credentials from the environment: KFP_TOKEN (sent as a
bearer token) or KFP_COOKIE (sent as a Cookie header, e.g. a Kubeflow login's
authservice_session=...); the host may come from KF_PIPELINES_ENDPOINT.

Exit codes: 0 done; 2 bad input or configuration, endpoint unreachable,
authentication failed, or the request rejected; 1 internal or server error.

Another CLI can mount these commands: `add_subcommands(its_subparsers)`, then
`dispatch(args)` when `args` has a `kubeflow_command`.
"""

import argparse
import dataclasses
import json
import os
import sys
import traceback

from kubeflow import schedule
from pipeline import settings as settings_lib

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2
DEFAULT_OUTPUT = os.path.join('build', 'kubeflow', 'pipeline.json')


def add_subcommands(subparsers) -> None:
  """Adds compile, upload, schedule and run-once to an argparse CLI."""
  compile_ = subparsers.add_parser(
    'compile',
    help='Compile the pipeline to KFP IR (JSON) for a container image.',
    description='Compiles the pipeline that `tfx-transfer run` runs into a '
    'KFP PipelineSpec for the image built from kubeflow/Dockerfile, from '
    'the same settings (--config FILE, then the flags). Paths are as the '
    'pods see them. --output-dir (or output_dir in the file) is required '
    'and must be a bucket, gs://BUCKET/... or s3://BUCKET/... (KFP keeps '
    'artifacts only in object stores). The data root may be a bucket, a '
    'mounted volume or a folder in the image (default: the demo data '
    'inside the image).',
  )
  compile_.add_argument(
    '--image',
    required=True,
    help='The image, e.g. REGISTRY/tfx-transfer:TAG; use a '
    'new tag for every code change.',
  )
  compile_.add_argument(
    '--output',
    default=DEFAULT_OUTPUT,
    help=f'Where to write the IR (default {DEFAULT_OUTPUT}).',
  )
  compile_.add_argument(
    '--config',
    help='The settings file of `tfx-transfer run` (YAML or '
    'TOML); the flags override it. Paths are as the pods see them.',
  )
  # output_dir: required, from --config or the flag (checked in _compile).
  settings_lib.add_flags(compile_)
  compile_.add_argument(
    '--volume',
    action='append',
    default=[],
    metavar='CLAIM:/MOUNT/PATH',
    help='Mount this PersistentVolumeClaim at this path in every step '
    '(repeatable); --data-root may then be a path under it (the output dir '
    'may not: KFP needs an object store). The output is then YAML: give '
    '--output build/kubeflow/pipeline.yaml.',
  )
  compile_.add_argument(
    '--beam-arg',
    action='append',
    dest='beam_args',
    metavar='FLAG',
    help='A Beam pipeline option for ExampleGen, StatisticsGen, Transform '
    'and Evaluator, written --beam-arg=--FLAG=VALUE, repeated (default: '
    'DirectRunner in the pod, as `tfx-transfer run`). For Dataflow: '
    '--beam-arg=--runner=DataflowRunner --beam-arg=--project=P '
    '--beam-arg=--region=R --beam-arg=--temp_location=gs://B/tmp '
    '--beam-arg=--sdk_container_image=IMAGE; see docs/kubeflow.md.',
  )
  compile_.add_argument('--trainer-cpu', type=float, help='Cores.')
  compile_.add_argument('--trainer-memory-gb', type=float, help='Memory (GB).')
  compile_.add_argument(
    '--trainer-gpus',
    type=int,
    default=0,
    help='GPUs for the Trainer (default 0).',
  )
  compile_.add_argument(
    '--trainer-gpu-type',
    default='nvidia.com/gpu',
    help='Kubernetes resource name of the GPUs.',
  )
  compile_.set_defaults(kubeflow_command=_compile)

  upload = subparsers.add_parser(
    'upload', help='Upload a compiled pipeline as a new version.'
  )
  _add_kfp_flags(upload)
  upload.set_defaults(kubeflow_command=_upload)

  schedule_ = subparsers.add_parser(
    'schedule',
    help='Upload, then create a recurring run of the new version.',
    description='Uploads the compiled pipeline as a new version, then '
    'creates a recurring run of exactly that version, catchup off. If a '
    'step fails, what this command created is deleted again.',
  )
  _add_kfp_flags(schedule_)
  schedule_.add_argument(
    '--cron',
    required=True,
    help='KFP cron, 6 fields with seconds first: "0 0 3 * * *" is 03:00 '
    "daily, in the KFP scheduler's time zone (UTC unless configured).",
  )
  schedule_.add_argument(
    '--max-concurrency',
    type=int,
    default=1,
    help='Runs active at once, 1 to 10 (default 1).',
  )
  _add_run_flags(schedule_)
  schedule_.set_defaults(kubeflow_command=_schedule)

  run_once = subparsers.add_parser(
    'run-once', help='Upload, then start one run of the new version.'
  )
  _add_kfp_flags(run_once)
  _add_run_flags(run_once)
  run_once.set_defaults(kubeflow_command=_run_once)


def dispatch(args: argparse.Namespace) -> int:
  """Runs the command `add_subcommands` parsed; returns the exit code."""
  try:
    return args.kubeflow_command(args)
  except (ValueError, schedule.RequestError) as e:
    print(f'error: {e}', file=sys.stderr)
    return EXIT_BAD_INPUT
  except schedule.KfpError as e:
    print(f'error: {e}', file=sys.stderr)
    return EXIT_INTERNAL
  except Exception:
    traceback.print_exc()
    return EXIT_INTERNAL


def main(argv=None, prog: str = 'python -m kubeflow') -> int:
  parser = argparse.ArgumentParser(
    prog=prog,
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  add_subcommands(parser.add_subparsers(dest='command', required=True))
  return dispatch(parser.parse_args(argv))


def _add_kfp_flags(parser) -> None:
  parser.add_argument(
    '--host',
    default=os.environ.get('KF_PIPELINES_ENDPOINT'),
    help='KFP API endpoint, e.g. http://localhost:8080 '
    '(default $KF_PIPELINES_ENDPOINT).',
  )
  parser.add_argument(
    '--namespace', help='For experiments and runs on a multi-user KFP.'
  )
  parser.add_argument(
    '--package',
    default=DEFAULT_OUTPUT,
    help=f'The compiled pipeline (default {DEFAULT_OUTPUT}).',
  )
  parser.add_argument(
    '--pipeline-name', help='Default: the name compiled into the package.'
  )
  parser.add_argument(
    '--version-name', help='Default: UTC time and the package digest.'
  )


def _add_run_flags(parser) -> None:
  """Runtime parameters; what is not given keeps the compiled default."""
  parser.add_argument(
    '--pipeline-root',
    help='Where the runs keep their artifacts, gs://BUCKET/... or '
    's3://BUCKET/... (default: the compiled <output-dir>/pipeline_root). '
    'KFP does not read the root compiled into the package: every run is '
    'given this one.',
  )
  parser.add_argument(
    '--skip-root-check',
    action='store_true',
    help="Do not ask the pipeline root's endpoint whether the bucket "
    'exists (for a store only the cluster can reach).',
  )
  parser.add_argument('--experiment', help='Default: the pipeline name.')
  parser.add_argument('--name', help='Name of the run or recurring run.')
  settings_lib.add_flags(
    parser,
    exclude=_COMPILE_TIME_KEYS,
    set_help=' Runs can set data_root, accuracy_threshold, '
    'max_accuracy_drop and trainer.* but '
    f'{list(settings_lib.COMPILE_TIME_TRAINER_KEYS)}.',
  )


# Settings a run cannot change: they are compiled into the pipeline.
_COMPILE_TIME_KEYS = (
  'modality',
  'output_dir',
  'pipeline_name',
  'manifest',
  # Whether an ImportSchemaGen is compiled in (its path is the schema_file
  # runtime parameter, settable in KFP itself).
  'schema_file',
  *(f'trainer.{key}' for key in settings_lib.COMPILE_TIME_TRAINER_KEYS),
)


def _run_overrides(args) -> dict:
  """The settings a run's flags give; ConfigError for compile-time ones."""
  values = settings_lib.overrides(args)
  trainer = values.get('trainer') or {}
  fixed = [
    key
    for key in values
    if key
    not in ('data_root', 'accuracy_threshold', 'max_accuracy_drop', 'trainer')
  ]
  fixed += [
    f'trainer.{key}'
    for key in trainer
    if key in settings_lib.COMPILE_TIME_TRAINER_KEYS
  ]
  if fixed:
    raise settings_lib.ConfigError(
      f'{fixed} are fixed at compile time (the Transform and ExampleGen '
      'use them); compile the pipeline again to change them.'
    )
  return values


def _endpoint(args) -> schedule.Endpoint:
  if not args.host:
    raise ValueError('Pass --host or set KF_PIPELINES_ENDPOINT.')
  return schedule.Endpoint(
    host=args.host,
    token=os.environ.get('KFP_TOKEN') or None,
    cookie=os.environ.get('KFP_COOKIE') or None,
    namespace=args.namespace,
  )


def _check_pod_path(flag: str, path: str) -> None:
  """A bucket URI, or an absolute path in the image or on a mounted volume."""
  if '://' not in path and not path.startswith('/'):
    raise ValueError(
      f'{flag} must be a URI (gs://..., s3://...) or an '
      f'absolute path as the pods see it, got {path!r}'
    )


def _compile(args) -> int:
  config = settings_lib.from_sources(
    args.config,
    args,
    defaults={'data_root': settings_lib.IMAGE_DEMO_DATA, 'output_dir': ''},
  )
  if not config.output_dir:
    raise settings_lib.ConfigError(
      'compile needs --output-dir (or output_dir in --config): where the '
      'pods write, e.g. gs://BUCKET/tfx-transfer'
    )
  config.output_dir = config.output_dir.rstrip('/')
  # The pipeline root, <output-dir>/pipeline_root, must be a bucket.
  schedule.check_pipeline_root(config.output_dir, reach=False)
  _check_pod_path('--data-root', config.data_root)
  if config.schema_file:
    _check_pod_path('--schema-file', config.schema_file)
  settings_lib.check_models(config)  # Loads TF.
  # Imported here: it loads TensorFlow.
  from kubeflow import runner

  volumes = [runner.VolumeMount.parse(v) for v in args.volume]
  resources = runner.TrainerResources(
    cpu=args.trainer_cpu,
    memory_gb=args.trainer_memory_gb,
    gpus=args.trainer_gpus,
    gpu_type=args.trainer_gpu_type,
  )
  spec = runner.compile_pipeline(
    config, args.image, args.output, args.beam_args, resources, volumes
  )
  parameters = spec['root']['inputDefinitions']['parameters']
  print(
    f'Wrote {args.output}: pipeline {config.pipeline_name!r} '
    f'({config.modality}), image {args.image}, pipeline root '
    f'{spec["defaultPipelineRoot"]}.'
  )
  for name, parameter in sorted(parameters.items()):
    print(f'  parameter {name} = {parameter["defaultValue"]}')
  return EXIT_OK


def _upload(args) -> int:
  version = schedule.upload(
    _endpoint(args),
    schedule.Package.load(args.package),
    args.pipeline_name,
    args.version_name,
  )
  print(json.dumps(dataclasses.asdict(version)))
  return EXIT_OK


def _parameters(args, package: schedule.Package) -> dict:
  values = _run_overrides(args)
  return schedule.run_parameters(
    package,
    data_root=values.get('data_root'),
    accuracy_threshold=values.get('accuracy_threshold'),
    max_accuracy_drop=values.get('max_accuracy_drop'),
    trainer=values.get('trainer'),
  )


def _pipeline_root(args, package: schedule.Package) -> str:
  return schedule.check_pipeline_root(
    args.pipeline_root or package.pipeline_root, reach=not args.skip_root_check
  )


def _schedule(args) -> int:
  schedule.check_cron(args.cron)
  package = schedule.Package.load(args.package)
  root = _pipeline_root(args, package)
  result = schedule.schedule(
    _endpoint(args),
    package,
    args.cron,
    _parameters(args, package),
    root,
    max_concurrency=args.max_concurrency,
    experiment=args.experiment,
    name=args.name,
    pipeline_name=args.pipeline_name,
    version_name=args.version_name,
  )
  print(json.dumps(result))
  return EXIT_OK


def _run_once(args) -> int:
  package = schedule.Package.load(args.package)
  root = _pipeline_root(args, package)
  result = schedule.run_once(
    _endpoint(args),
    package,
    _parameters(args, package),
    root,
    experiment=args.experiment,
    name=args.name,
    pipeline_name=args.pipeline_name,
    version_name=args.version_name,
  )
  print(json.dumps(result))
  return EXIT_OK

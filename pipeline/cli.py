"""`tfx-transfer`: run the pipeline locally, classify with a pushed model.

Exit codes (for CI):
  0  the new model was blessed and pushed
  3  trained, but the Evaluator did not bless it; the previous model stays
  2  bad input or configuration
  1  internal failure
"""

import argparse
import glob
import json
import os
import sys

EXIT_PUSHED, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_NOT_BLESSED = 0, 1, 2, 3


def _parse_args(argv):
  parser = argparse.ArgumentParser(
      prog='tfx-transfer', description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest='command', required=True)

  run = commands.add_parser('run', help='Run the pipeline locally (Beam).')
  run.add_argument('--data-root', help='Folder-per-class image tree '
                   '(default: the bundled Fashion-MNIST demo).')
  run.add_argument('--manifest', help='CSV path,label under --data-root.')
  run.add_argument('--output-dir', help='Pipeline root, MLMD, serving/.')
  run.add_argument('--backbone', help='e.g. MobileNet, MobileNetV2, '
                   'hub:<handle>, file:<path>.')
  run.add_argument('--weights', help="offline | imagenet | none | <file>")
  run.add_argument('--image-size', type=int)
  run.add_argument('--phase1-epochs', type=int)
  run.add_argument('--phase2-epochs', type=int)
  run.add_argument('--fine-tune-layers', type=int)
  run.add_argument('--accuracy-threshold', type=float)
  run.add_argument('--max-accuracy-drop', type=float)

  predict = commands.add_parser(
      'predict', help='Classify image files with a pushed model.')
  predict.add_argument('--model', required=True, help='A pushed model '
                       'directory, or the serving/ folder (newest version).')
  predict.add_argument('images', nargs='+')
  return parser.parse_args(argv)


def _config_from_args(args):
  from pipeline import config as config_lib  # pylint: disable=g-import-not-at-top
  trainer = {
      key: value for key, value in {
          'backbone': args.backbone,
          'weights': args.weights,
          'image_size': args.image_size,
          'phase1_epochs': args.phase1_epochs,
          'phase2_epochs': args.phase2_epochs,
          'fine_tune_layers': args.fine_tune_layers,
      }.items() if value is not None
  }
  overrides = {
      key: value for key, value in {
          'data_root': args.data_root and os.path.abspath(args.data_root),
          'manifest': args.manifest,
          'output_dir': args.output_dir and os.path.abspath(args.output_dir),
          'accuracy_threshold': args.accuracy_threshold,
          'max_accuracy_drop': args.max_accuracy_drop,
      }.items() if value is not None
  }
  return config_lib.PipelineConfig(trainer=trainer, **overrides)


def _run(args) -> int:
  try:
    config = _config_from_args(args)
  except (TypeError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return EXIT_BAD_INPUT
  if not os.path.isdir(config.data_root):
    print(f'error: data root {config.data_root} is not a directory',
          file=sys.stderr)
    return EXIT_BAD_INPUT
  from pipeline import local_runner  # pylint: disable=g-import-not-at-top
  print(f'Running pipeline on {config.data_root} -> {config.output_dir}',
        flush=True)
  try:
    result = local_runner.run(config)
  except ValueError as e:  # Raised by components on bad input data.
    print(f'error: {e}', file=sys.stderr)
    return EXIT_BAD_INPUT
  for name, state in sorted(result.components.items()):
    print(f'  {name:35s} {state}')
  for phase in ('phase1', 'phase2'):
    if phase in result.training:
      print(f'{phase} eval accuracy: '
            f'{result.training[phase]["eval_accuracy"]:.4f}')
  print(f'pipeline took {result.seconds:.0f} s')
  if result.pushed_to:
    print(f'Blessed and pushed to {result.pushed_to}')
    return EXIT_PUSHED
  print('Not blessed: the model was not pushed; the previous model stays.')
  return EXIT_NOT_BLESSED


def _latest_version(model_dir: str) -> str:
  if os.path.exists(os.path.join(model_dir, 'saved_model.pb')):
    return model_dir
  versions = sorted(
      glob.glob(os.path.join(model_dir, '*', 'saved_model.pb')),
      key=lambda p: int(os.path.basename(os.path.dirname(p)))
      if os.path.basename(os.path.dirname(p)).isdigit() else -1)
  if not versions:
    raise FileNotFoundError(f'No SavedModel under {model_dir}')
  return os.path.dirname(versions[-1])


def _predict(args) -> int:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    model_path = _latest_version(args.model)
    images = [open(path, 'rb').read() for path in args.images]
  except OSError as e:
    print(f'error: {e}', file=sys.stderr)
    return EXIT_BAD_INPUT
  serve = tf.saved_model.load(model_path).signatures['serving_default']
  outputs = serve(image_bytes=tf.constant(images))
  for i, path in enumerate(args.images):
    print(json.dumps({
        'image': path,
        'label': outputs['label'][i].numpy().decode(),
        'probabilities': {
            c.decode(): round(float(p), 4) for c, p in zip(
                outputs['classes'][i].numpy(),
                outputs['probabilities'][i].numpy())
        },
    }))
  return 0


def main(argv=None) -> int:
  os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
  args = _parse_args(argv)
  try:
    return {'run': _run, 'predict': _predict}[args.command](args)
  except Exception:  # pylint: disable=broad-except
    import traceback  # pylint: disable=g-import-not-at-top
    traceback.print_exc()
    return EXIT_INTERNAL


if __name__ == '__main__':
  sys.exit(main())

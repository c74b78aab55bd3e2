"""Run settings from a YAML or TOML file, checked against PipelineConfig.

The file's top-level keys are PipelineConfig's fields (pipeline/config.py);
its `trainer` table holds TrainerConfig's (modules/trainer.py). Unknown keys,
values of the wrong type and out-of-range values raise ConfigError naming the
key, e.g.

  data_root: data/fashion_demo     # relative paths: to the working directory
  accuracy_threshold: 0.6
  trainer:
    phase1_epochs: 3
    phase2_epochs: 1

Everything but the trainer settings is checked without importing TensorFlow.
"""

import dataclasses
import os
import types
import typing
from typing import Any, Dict

import tomli
import yaml

from pipeline import config as config_lib

# Trainer settings with a range: key -> (check, what the check requires).
_TRAINER_RANGES = {
    'phase1_epochs': (lambda v: v >= 0, '>= 0'),
    'phase2_epochs': (lambda v: v >= 0, '>= 0'),
    'fine_tune_layers': (lambda v: v >= 0, '>= 0'),
    'phase1_learning_rate': (lambda v: v > 0, '> 0'),
    'phase2_learning_rate': (lambda v: v > 0, '> 0'),
    'dropout': (lambda v: 0 <= v < 1, 'in [0, 1)'),
    'image_size': (lambda v: v >= 32, '>= 32'),
    'batch_size': (lambda v: v >= 1, '>= 1'),
}


class ConfigError(ValueError):
  """A settings file or value that cannot be used."""


def load(path: str) -> Dict[str, Any]:
  """Reads a .yaml/.yml/.toml settings file and checks its top-level keys.

  Returns:
    The settings; the `trainer` table is not checked yet (check_trainer).
  """
  extension = os.path.splitext(path)[1].lower()
  if extension not in ('.yaml', '.yml', '.toml'):
    raise ConfigError(
        f'{path}: settings files are .yaml, .yml or .toml, not {extension!r}')
  try:
    with open(path, 'rb') as f:
      values = (tomli.load(f) if extension == '.toml' else
                yaml.safe_load(f))
  except OSError as e:
    raise ConfigError(f'cannot read settings file {path}: {e.strerror}') from e
  except (tomli.TOMLDecodeError, yaml.YAMLError) as e:
    raise ConfigError(f'{path} is not valid {extension[1:].upper()}: '
                      f'{e}') from e
  if values is None:
    return {}
  if not isinstance(values, dict):
    raise ConfigError(f'{path}: expected a mapping of settings, got '
                      f'{type(values).__name__}')
  _check_fields(config_lib.PipelineConfig, values, f'{path}: ')
  return values


def check_trainer(values: Dict[str, Any]) -> None:
  """Checks the trainer settings' keys, value types and ranges (loads TF)."""
  # Imported here: it loads TensorFlow, which the other checks do without.
  from modules import trainer  # pylint: disable=g-import-not-at-top
  _check_fields(trainer.TrainerConfig, values, 'trainer.')
  for key, (check, requirement) in _TRAINER_RANGES.items():
    if key in values and not check(values[key]):
      raise ConfigError(
          f'trainer.{key} must be {requirement}, got {values[key]!r}')


def _check_fields(cls, values: Dict[str, Any], prefix: str) -> None:
  """Checks `values` against the fields of dataclass `cls`."""
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - fields)
  if unknown:
    raise ConfigError(f'{prefix}unknown key(s) {unknown}; known keys: '
                      f'{sorted(fields)}')
  hints = typing.get_type_hints(cls)
  for key, value in values.items():
    if not _matches(value, hints[key]):
      raise ConfigError(
          f'{prefix}{key} must be {_describe(hints[key])}, got {value!r} '
          f'({type(value).__name__}){_hint(value, hints[key])}')


def _matches(value: Any, annotation: Any) -> bool:
  """Whether `value` fits a field annotation of the kinds the configs use."""
  origin, args = typing.get_origin(annotation), typing.get_args(annotation)
  if annotation is Any:
    return True
  if origin is typing.Union:
    return any(_matches(value, arg) for arg in args)
  if origin is list:
    return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
  if origin is dict:
    return isinstance(value, dict)
  if annotation is types.NoneType:
    return value is None
  if annotation is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if annotation is int:
    return isinstance(value, int) and not isinstance(value, bool)
  return isinstance(value, annotation)


def _hint(value: Any, annotation: Any) -> str:
  """Explains YAML's reading of `1e-4` (no dot) as a string."""
  if annotation is float and isinstance(value, str):
    try:
      float(value)
    except ValueError:
      return ''
    return '; YAML reads numbers such as 1e-4 as text: write 1.0e-4'
  return ''


def _describe(annotation: Any) -> str:
  origin, args = typing.get_origin(annotation), typing.get_args(annotation)
  if origin is typing.Union:
    return ' or '.join(_describe(arg) for arg in args)
  if origin is list:
    return f'a list of {_describe(args[0])}'
  if origin is dict:
    return 'a mapping'
  return {
      float: 'a number', int: 'an integer', str: 'a string', bool: 'true/false',
      types.NoneType: 'null'
  }.get(annotation, getattr(annotation, '__name__', str(annotation)))

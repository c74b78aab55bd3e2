"""Every setting of the pipeline, its default and its checks; no TensorFlow.

One tree of typed dataclasses, read the same way by every front end:

  PipelineConfig            data, modality, output, gate, ingestion options
    trainer: TrainerConfig  backbone, sizes, phases, schedules, ...
      phases: [PhaseConfig]           progressive unfreezing (optional)
      augmentation: AugmentationConfig        (optional; None: off)
      domain_adaptation: DomainAdaptationConfig  (optional; None: off)

Each field is declared with `setting(...)`: its default, its help text (the
flags' help), its range check, and whether it has a dedicated flag. From the
tree come the YAML/TOML settings files (`load_file`), the flags of
`tfx-transfer run` and `python -m kubeflow compile|schedule|run-once`
(`add_flags`, `--set KEY=VALUE` for any key), and the Kubeflow runtime
parameters (`RUNTIME_TRAINER_KEYS`). A bad value raises ConfigError naming
its key, e.g. `trainer.phase1_epochs must be >= 0, got -3`.

Importing this module does not import TensorFlow; `check_models` does (it
reads the backbone catalogue, modules/backbones.py).
"""

import argparse
import dataclasses
import math
import os
import types
import typing
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import tomli
import yaml

from modules import features
from pipeline import object_store

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_DATA = os.path.join(PROJECT_ROOT, 'data', 'fashion_demo')
MODULES_DIR = os.path.join(PROJECT_ROOT, 'modules')
# Local Beam: one process, or one Fn API worker process per core (the
# portable runners' path: every DoFn is pickled into the workers).
IN_MEMORY_BEAM_ARGS = (
  '--direct_running_mode=in_memory',
  '--direct_num_workers=1',
)
MULTI_PROCESS_BEAM_ARGS = (
  '--direct_running_mode=multi_processing',
  '--direct_num_workers=0',
)
# Where kubeflow/Dockerfile puts the project, and the demo data inside it:
# compile's default data root.
IMAGE_PROJECT_ROOT = '/pipeline'
IMAGE_DEMO_DATA = IMAGE_PROJECT_ROOT + '/data/fashion_demo'
MODALITIES = features.MODALITIES
# The data validation gate's checks (which warn_anomalies may name) and the
# label comparators (components/data_validator.py).
VALIDATION_CHECKS = ('schema', 'label_coverage', 'drift', 'skew')
LABEL_COMPARATORS = ('infinity_norm', 'jensen_shannon_divergence')
# Data files the text ExampleGen reads (components/text_example_gen.py).
TEXT_FILE_EXTENSIONS = ('.csv', '.jsonl', '.ndjson')
IMAGE_EXTENSIONS = ('.bmp', '.gif', '.jpeg', '.jpg', '.png')

# Backbones (modules/backbones.py) and input sizes (modules/preprocessing.py).
DEFAULT_BACKBONE = 'MobileNet'
DEFAULT_WEIGHTS = 'offline'
DEFAULT_TEXT_ENCODER = 'MiniLM'
DEFAULT_IMAGE_SIZE = 96
MIN_IMAGE_SIZE = 32  # The smallest any Keras Applications backbone takes.
DEFAULT_MAX_LENGTH = 64
# Ingestion (components/image_example_gen.py, components/text_example_gen.py).
DEFAULT_MAX_REJECTED_FRACTION = 0.1
DEFAULT_MAX_PIXELS = 40_000_000
# Learning-rate schedules (modules/schedules.py), DANN's lambda schedules
# (modules/domain_adaptation.py), Keras dtype policies.
LR_SCHEDULES = ('constant', 'exponential', 'cosine')
DANN_SCHEDULES = ('ganin', 'constant')
PRECISIONS = ('float32', 'mixed_float16')
PHASE1_STARTS = ('logistic_regression', 'random')
UNFREEZE_KEYS = ('fine_tune_layers', 'fine_tune_from', 'fine_tune_fraction')
AUGMENTATION_FLIPS = ('horizontal', 'vertical', 'horizontal_and_vertical')

# The compiled pipeline's runtime parameters (pipeline/pipeline.py builds
# them, kubeflow/schedule.py fills them in). V2 substitutes whole strings.
DATA_ROOT_PARAMETER = 'data_root'  # ExampleGen input_base.
EVAL_CONFIG_PARAMETER = 'eval_config'  # tfma.EvalConfig JSON (the gate).
TRAINER_CONFIG_PARAMETER = 'trainer_config'  # Trainer custom_config JSON.
# Trainer settings the Transform also reads: fixed when the pipeline is
# compiled, so a Kubeflow run cannot change them.
COMPILE_TIME_TRAINER_KEYS = ('image_size', 'text_encoder', 'max_length')


class ConfigError(ValueError):
  """A settings file or value that cannot be used."""


def check_keys(
  values: Mapping[str, Any],
  known: Sequence[str],
  where: str,
  *,
  noun: str = 'key(s)',
) -> None:
  """Raises ConfigError naming the keys of `values` that are not `known`.

  The one unknown-key check of every settings section and component
  options. `where` names the section, e.g. 'trainer.augmentation'; `noun`
  words the message as '<where>: unknown key(s) [...]; known keys: [...]'
  or, with noun='settings', 'Unknown <where> settings [...]; known: [...]'.
  """
  unknown = sorted(set(values) - set(known))
  if not unknown:
    return
  if noun == 'settings':
    raise ConfigError(
      f'Unknown {where} settings {unknown}; known: {sorted(known)}'
    )
  raise ConfigError(
    f'{where}: unknown {noun} {unknown}; known keys: {sorted(known)}'
  )


def setting(
  default: Any = dataclasses.MISSING,
  *,
  help: str,
  check: Optional[Callable[[Any], bool]] = None,
  requirement: str = '',
  flag: bool = False,
  factory: Optional[Callable[[], Any]] = None,
) -> Any:
  """A settings field: default, help, range check and whether it has a flag.

  Args:
    default: The default value (or `factory` for a mutable one).
    help: One line for the docs and the flag's help.
    check: Returns whether a value (of the right type) is in range.
    requirement: What `check` requires, for the message
      '<key> must be <requirement>, got <value>'.
    flag: Give it a dedicated flag (--phase1-epochs); every setting is also
      reachable with --set KEY=VALUE.
    factory: Builds the default (lists, mappings).
  """
  metadata = {
    'help': help,
    'check': check,
    'requirement': requirement,
    'flag': flag,
  }
  if factory is not None:
    return dataclasses.field(default_factory=factory, metadata=metadata)
  return dataclasses.field(default=default, metadata=metadata)


class _Section:
  """Shared behaviour of the settings dataclasses."""

  WHERE = ''  # The section's key path in error messages, e.g. 'trainer'.
  NOUN = 'key(s)'  # How its unknown-key message words it (check_keys).

  @classmethod
  def from_dict(cls, values: Optional[Mapping[str, Any]], where: str = ''):
    """The section from a mapping; ConfigError naming a bad or unknown key."""
    where = where or cls.WHERE
    if not isinstance(values or {}, Mapping):
      raise ConfigError(
        f'{where} must be a mapping of '
        f'{[f.name for f in dataclasses.fields(cls)]}, got '
        f'{values!r}'
      )
    values = dict(values or {})
    check_keys(
      values, [f.name for f in dataclasses.fields(cls)], where, noun=cls.NOUN
    )
    return cls(**values)._given_keys(values)

  def _given_keys(self, values: Mapping[str, Any]):
    """Records the keys given, which to_dict keeps even at their default."""
    self._given = frozenset(values)
    return self

  def _check_fields(self, where: str) -> None:
    """Type and range checks of every field, in declaration order."""
    hints = typing.get_type_hints(type(self))
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      key = f'{where}.{field.name}' if where else field.name
      if not _matches(value, hints[field.name]):
        raise ConfigError(
          f'{key} must be {_describe(hints[field.name])}, got {value!r} '
          f'({type(value).__name__}){_hint(value, hints[field.name])}'
        )
      check_value(type(self), field.name, value, where)

  def to_dict(self) -> Dict[str, Any]:
    """The settings given or not at their default, as a file holds them."""
    given = getattr(self, '_given', frozenset())
    values = {}
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if isinstance(value, _Section):
        value = value.to_dict()
      elif isinstance(value, list):
        value = [v.to_dict() if isinstance(v, _Section) else v for v in value]
      if (
        field.name in given
        or _default(field) is dataclasses.MISSING
        or value != _default(field)
      ):
        values[field.name] = value
    return values


def check_value(section: type, name: str, value: Any, where: str = '') -> None:
  """Checks one value against the range of field `name` of `section`."""
  (field,) = [f for f in dataclasses.fields(section) if f.name == name]
  check = field.metadata.get('check')
  if check is not None and value is not None and not check(value):
    key = f'{where}.{name}' if where else name
    raise ConfigError(
      f'{key} must be {field.metadata["requirement"]}, got {value!r}'
    )


def _default(field: dataclasses.Field) -> Any:
  if field.default_factory is not dataclasses.MISSING:
    return field.default_factory()
  return field.default


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class Unfreeze:
  """Which backbone layers a fine-tuning phase trains (never BatchNorm).

  Exactly one of: the `top` N layers; every layer from `from_layer` up (a
  layer's name, or a block's name prefix such as `block6` or `conv5_block1`);
  the top `fraction` of the layers (rounded up). Layers are counted as Keras
  lists them (`Backbone.layers`; a text encoder's are its inputs, embeddings
  and transformer blocks).
  """

  top: Optional[int] = None
  from_layer: Optional[str] = None
  fraction: Optional[float] = None

  def first_trainable(self, layers: Sequence[Any]) -> int:
    """The index of the lowest layer this setting trains."""
    if self.from_layer is not None:
      names = [layer.name for layer in layers]
      if self.from_layer in names:
        return names.index(self.from_layer)
      for i, name in enumerate(names):
        if name.startswith(self.from_layer):
          return i
      raise ValueError(
        f'fine_tune_from: no backbone layer is named or starts '
        f'with {self.from_layer!r}; its layers: {names}'
      )
    if self.fraction is not None:
      # The tolerance keeps e.g. 0.3 x 10 (3.0000000000000004) at 3 layers.
      return len(layers) - math.ceil(self.fraction * len(layers) - 1e-9)
    return max(0, len(layers) - self.top)


def parse_unfreeze(values: Mapping[str, Any], where: str) -> Unfreeze:
  """The one setting among `values`' UNFREEZE_KEYS (the others None/absent)."""
  given = [key for key in UNFREEZE_KEYS if values.get(key) is not None]
  if len(given) != 1:
    raise ConfigError(
      f'{where}: give exactly one of {list(UNFREEZE_KEYS)}, '
      f'got {given or "none"}'
    )
  key, value = given[0], values[given[0]]
  if key == 'fine_tune_layers':
    _require(
      _is_int(value) and value >= 0, f'{where}.{key}', 'an integer >= 0', value
    )
    return Unfreeze(top=value)
  if key == 'fine_tune_from':
    _require(
      isinstance(value, str) and value,
      f'{where}.{key}',
      'a layer or block name',
      value,
    )
    return Unfreeze(from_layer=value)
  _require(
    _is_number(value) and 0 < value <= 1,
    f'{where}.{key}',
    'a number in (0, 1]',
    value,
  )
  return Unfreeze(fraction=float(value))


def _require(ok, key: str, requirement: str, value) -> None:
  if not ok:
    raise ConfigError(f'{key} must be {requirement}, got {value!r}')


@dataclasses.dataclass(frozen=True)
class Phase:
  """One fine-tuning phase as the Trainer runs it (TrainerConfig's phases)."""

  name: str
  epochs: int
  learning_rate: float
  unfreeze: Unfreeze  # Image towers.
  text_unfreeze: Unfreeze  # Text towers: top transformer blocks.

  def tower_settings(self, towers: Sequence[Any]) -> List[Unfreeze]:
    """Each tower's Unfreeze: text towers (TextBackbone) take text_unfreeze."""
    from modules import backbones

    return [
      self.text_unfreeze
      if isinstance(tower, backbones.TextBackbone)
      else self.unfreeze
      for tower in towers
    ]


@dataclasses.dataclass
class PhaseConfig(_Section):
  """One entry of trainer.phases: a fine-tuning phase after phase 1."""

  epochs: Optional[int] = setting(
    None,
    help='Epochs of this phase.',
    check=lambda v: v >= 0,
    requirement='an integer >= 0',
  )
  learning_rate: Optional[float] = setting(
    None,
    help='Its learning rate.',
    check=lambda v: v > 0,
    requirement='a number > 0',
  )
  fine_tune_layers: Optional[int] = setting(
    None, help="Unfreeze the top N layers (default: the trainer's)."
  )
  fine_tune_from: Optional[str] = setting(
    None, help='Or: unfreeze from this layer or block name up.'
  )
  fine_tune_fraction: Optional[float] = setting(
    None, help='Or: unfreeze the top fraction of the layers.'
  )
  text_fine_tune_layers: Optional[int] = setting(
    None, help='Text towers: top transformer blocks unfrozen.'
  )

  def check(self, where: str) -> None:
    """Raises ConfigError for a missing or bad value; `where` names it."""
    _require(
      _is_int(self.epochs), f'{where}.epochs', 'an integer >= 0', self.epochs
    )
    _require(
      _is_number(self.learning_rate),
      f'{where}.learning_rate',
      'a number > 0',
      self.learning_rate,
    )
    self._check_fields(where)
    self.phase(where, Unfreeze(top=0), Unfreeze(top=0))

  def phase(
    self,
    name: str,
    unfreeze: Unfreeze,
    text_unfreeze: Unfreeze,
    where: str = '',
  ) -> Phase:
    """The Phase `name`; unset unfreeze settings are the trainer's."""
    where = where or name
    if any(getattr(self, key) is not None for key in UNFREEZE_KEYS):
      unfreeze = parse_unfreeze(dataclasses.asdict(self), where)
    if self.text_fine_tune_layers is not None:
      text_unfreeze = _text_unfreeze(
        self.text_fine_tune_layers, f'{where}.text_fine_tune_layers'
      )
    return Phase(
      name, self.epochs, float(self.learning_rate), unfreeze, text_unfreeze
    )


def _text_unfreeze(blocks: Any, where: str) -> Unfreeze:
  _require(_is_int(blocks) and blocks >= 0, where, 'an integer >= 0', blocks)
  return Unfreeze(top=blocks)


@dataclasses.dataclass
class AugmentationConfig(_Section):
  """trainer.augmentation: random image transforms in training only.

  Applied in this order (modules/augmentation.py); unset ones are off.
  """

  WHERE = 'trainer.augmentation'
  crop: Optional[float] = setting(
    None,
    help='Crop a random window of this fraction of each side.',
    check=lambda v: 0 < v < 1,
    requirement='a number in (0, 1)',
  )
  flip: Optional[str] = setting(
    None,
    help=f'One of {list(AUGMENTATION_FLIPS)}.',
    check=lambda v: v in AUGMENTATION_FLIPS,
    requirement=f'one of {list(AUGMENTATION_FLIPS)}',
  )
  rotation: Optional[float] = setting(
    None,
    help='Up to this fraction of a full turn either way.',
    check=lambda v: 0 < v <= 0.5,
    requirement='a number in (0, 0.5]',
  )
  zoom: Optional[float] = setting(
    None,
    help='Zoom in or out by up to this fraction.',
    check=lambda v: 0 < v < 1,
    requirement='a number in (0, 1)',
  )
  contrast: Optional[float] = setting(
    None,
    help='Contrast factor in [1 - c, 1 + c].',
    check=lambda v: 0 < v <= 1,
    requirement='a number in (0, 1]',
  )

  def __post_init__(self):
    self._check_fields(self.WHERE)

  def items(self) -> List[tuple]:
    """(key, value) of the transforms that are on, in the order applied."""
    return [
      (f.name, getattr(self, f.name))
      for f in dataclasses.fields(self)
      if getattr(self, f.name) is not None
    ]


@dataclasses.dataclass
class DomainAdaptationConfig(_Section):
  """trainer.domain_adaptation: DANN in the fine-tuning phases (images).

  Attributes:
    target_data_root: folder of unlabelled target-domain images, any nesting
      (IMAGE_EXTENSIONS); read like the Transform reads images.
    weight: the domain loss's weight in the total loss.
    schedule: 'ganin' (lambda ramps 0 -> 1) or 'constant' (lambda = 1).
    hidden_units: width of the domain head's hidden layer.
    domain_learning_rate: Adam's for the domain head, its own optimizer: a
      new head needs the faster rate of phase 1, not the fine-tuning one,
      or the features outrun it and the adversarial game breaks down.
  """

  WHERE = 'domain_adaptation'
  NOUN = 'settings'
  target_data_root: str = setting(
    help='Folder of unlabelled target-domain images (required).'
  )
  weight: float = setting(
    0.1,
    help="The domain loss's weight.",
    check=lambda v: v > 0,
    requirement='> 0',
  )
  schedule: str = setting(
    'ganin',
    help=f'Lambda schedule, one of {list(DANN_SCHEDULES)}.',
    check=lambda v: v in DANN_SCHEDULES,
    requirement=f'one of {list(DANN_SCHEDULES)}',
  )
  hidden_units: int = setting(
    64,
    help="The domain head's hidden width.",
    check=lambda v: v >= 1,
    requirement='>= 1',
  )
  domain_learning_rate: float = setting(
    1e-3,
    help="The domain head's learning rate.",
    check=lambda v: v > 0,
    requirement='> 0',
  )

  @classmethod
  def from_dict(cls, values, where: str = ''):
    """The checked settings, or None when `values` is empty (DANN off)."""
    if not values:
      return None
    if isinstance(values, Mapping) and 'target_data_root' not in values:
      raise ConfigError(
        'domain_adaptation needs target_data_root: a folder '
        'of unlabelled target-domain images.'
      )
    return super().from_dict(values, where)

  def __post_init__(self):
    self._check_fields(self.WHERE)
    if not _isdir(self.target_data_root):
      raise ConfigError(
        f'domain_adaptation.target_data_root '
        f'{self.target_data_root!r} is not a folder.'
      )
    if not _has_image(self.target_data_root):
      raise ConfigError(
        f'domain_adaptation.target_data_root {self.target_data_root!r} '
        f'holds no images (any of {list(IMAGE_EXTENSIONS)}, at any depth).'
      )


def _gfile():
  """tf.io.gfile, for URIs (gs://, s3://) only: it loads TensorFlow."""
  import tensorflow as tf

  return tf.io.gfile


def _isdir(path: str) -> bool:
  return _gfile().isdir(path) if '://' in path else os.path.isdir(path)


def _has_image(root: str) -> bool:
  walk = _gfile().walk(root) if '://' in root else os.walk(root)
  return any(
    name.lower().endswith(IMAGE_EXTENSIONS)
    for _, _, names in walk
    for name in names
  )


@dataclasses.dataclass
class TrainerConfig(_Section):
  """Everything the Trainer's run_fn reads (its custom_config).

  Fine-tuning is one phase 2 (`phase2_*` and the unfreeze setting: at most
  one of `fine_tune_from`, `fine_tune_fraction`, else `fine_tune_layers`)
  or, when `phases` is set, those phases in order (progressive unfreezing).
  """

  WHERE = 'trainer'
  NOUN = 'settings'
  backbone: str = setting(
    DEFAULT_BACKBONE,
    flag=True,
    help='Image backbone: a Keras Applications name (e.g. MobileNet, '
    'MobileNetV2), hub:<handle> or file:<path>.',
  )
  weights: str = setting(
    DEFAULT_WEIGHTS, flag=True, help='offline | imagenet | none | <file>.'
  )
  image_size: int = setting(
    DEFAULT_IMAGE_SIZE,
    flag=True,
    check=lambda v: v >= 1,
    requirement='>= 1',
    help='Square input size in pixels; the front '
    f"ends require >= {MIN_IMAGE_SIZE} and the backbone's minimum "
    '(check_models).',
  )
  batch_size: int = setting(
    32,
    check=lambda v: v >= 1,
    requirement='>= 1',
    help='Per replica; the global batch scales with replicas.',
  )
  text_encoder: str = setting(
    DEFAULT_TEXT_ENCODER,
    help='Text and image+text models: MiniLM, '
    'bert:<dir>, hub:<handle> or file:<dir>.',
  )
  text_weights: str = setting(
    DEFAULT_WEIGHTS, help="The text encoder's: offline | none."
  )
  max_length: int = setting(
    DEFAULT_MAX_LENGTH,
    check=lambda v: v >= 2,
    requirement='>= 2',
    help='Tokens per text, [CLS]/[SEP] included.',
  )
  phase1_epochs: int = setting(
    100,
    flag=True,
    check=lambda v: v >= 0,
    requirement='>= 0',
    help='Epochs with the backbone frozen: the cap (phase1_patience '
    'stops it earlier); 0 skips phase 1.',
  )
  phase1_learning_rate: float = setting(
    1e-3,
    check=lambda v: v > 0,
    requirement='> 0',
    help="Phase 1's learning rate.",
  )
  phase1_patience: int = setting(
    10,
    check=lambda v: v >= 0,
    requirement='an integer >= 0',
    help='Phase 1 stops after N epochs without a lower validation loss; '
    '0: runs every epoch.',
  )
  phase1_start: str = setting(
    PHASE1_STARTS[0],
    check=lambda v: v in PHASE1_STARTS,
    requirement=f'one of {list(PHASE1_STARTS)}',
    help='Where the head starts: the closed-form logistic regression on '
    'the cached embeddings, or random.',
  )
  head_weight_decay: float = setting(
    1e-4,
    check=lambda v: v >= 0,
    requirement='a number >= 0',
    help="L2 penalty on the head's kernel in every phase; one of the "
    "closed-form start's candidates.",
  )
  validation_fraction: float = setting(
    0.2,
    check=lambda v: 0 < v <= 0.5,
    requirement='a number in (0, 0.5]',
    help='The part of the train split held out to stop phases early and '
    'choose the exported phase; never the eval split.',
  )
  phase2_epochs: int = setting(
    2,
    flag=True,
    check=lambda v: v >= 0,
    requirement='>= 0',
    help='Fine-tuning epochs (0 skips fine-tuning).',
  )
  phase2_learning_rate: float = setting(
    1e-4,
    check=lambda v: v > 0,
    requirement='> 0',
    help="Phase 2's learning rate.",
  )
  fine_tune_layers: int = setting(
    20,
    flag=True,
    check=lambda v: v >= 0,
    requirement='>= 0',
    help='Phase 2 unfreezes the top N backbone layers.',
  )
  fine_tune_from: Optional[str] = setting(
    None, help='Or: unfreeze from this layer or block name up.'
  )
  fine_tune_fraction: Optional[float] = setting(
    None,
    check=lambda v: 0 < v <= 1,
    requirement='a number in (0, 1]',
    help='Or: unfreeze the top fraction of the layers.',
  )
  text_fine_tune_layers: int = setting(
    2,
    check=lambda v: v >= 0,
    requirement='an integer >= 0',
    help='Text towers: top transformer blocks unfrozen in phase 2.',
  )
  phases: Optional[List[PhaseConfig]] = setting(
    None,
    help='Progressive unfreezing: a list of phases, each with '
    'epochs, learning_rate and optionally an unfreeze setting; replaces '
    'phase2_*.',
  )
  lr_schedule: str = setting(
    LR_SCHEDULES[0],
    check=lambda v: v in LR_SCHEDULES,
    requirement=f'one of {list(LR_SCHEDULES)}',
    help=f'Learning-rate schedule: one of {list(LR_SCHEDULES)}.',
  )
  lr_decay_rate: float = setting(
    0.9,
    check=lambda v: 0 < v <= 1,
    requirement='a number in (0, 1]',
    help='exponential: factor per epoch.',
  )
  lr_warmup_epochs: float = setting(
    0.0,
    check=lambda v: v >= 0,
    requirement='a number >= 0',
    help='cosine: linear warm-up from 0.',
  )
  early_stopping_patience: int = setting(
    0,
    check=lambda v: v >= 0,
    requirement='an integer >= 0',
    help='Fine-tuning phases: epochs without a lower validation loss '
    'before stopping; 0: off.',
  )
  class_weights: Union[str, Dict[str, float]] = setting(
    'none',
    check=lambda v: (
      v in ('none', 'balanced')
      or (
        isinstance(v, dict)
        and all(
          isinstance(k, str) and _is_number(w) and w > 0 for k, w in v.items()
        )
      )
    ),
    requirement="'none', 'balanced' or a mapping {class name: weight > 0}",
    help="'none', 'balanced' or {class name: weight}.",
  )
  augmentation: Optional[AugmentationConfig] = setting(
    None, help='Random image transforms in training (images).'
  )
  precision: str = setting(
    PRECISIONS[0],
    check=lambda v: v in PRECISIONS,
    requirement=f'one of {list(PRECISIONS)}',
    help=f'Keras dtype policy: one of {list(PRECISIONS)}.',
  )
  dropout: float = setting(
    0.2,
    check=lambda v: 0 <= v < 1,
    requirement='in [0, 1)',
    help='Head dropout.',
  )
  seed: int = setting(42, help='Random seed.')
  phase1_cache: bool = setting(
    True, help='Phase 1 trains the head on embeddings computed once.'
  )
  domain_adaptation: Optional[DomainAdaptationConfig] = setting(
    None, help='DANN in the fine-tuning phases (images); unset: off.'
  )

  @classmethod
  def from_dict(cls, values, where: str = ''):
    values = dict(values or {})
    check_keys(
      values,
      [f.name for f in dataclasses.fields(cls)],
      'trainer',
      noun='settings',
    )
    unfreeze_keys = [k for k in UNFREEZE_KEYS if k in values]
    if len(unfreeze_keys) > 1:
      raise ConfigError(
        f'trainer: {unfreeze_keys} are alternatives; give one of them'
      )
    replaced = [
      k for k in ('phase2_epochs', 'phase2_learning_rate') if k in values
    ]
    if values.get('phases') is not None and replaced:
      raise ConfigError(
        f'trainer: phases replaces {replaced}; give each '
        'phase its epochs and learning_rate there'
      )
    return cls(**values)._given_keys(values)

  def __post_init__(self):
    if isinstance(self.augmentation, Mapping):
      self.augmentation = (
        AugmentationConfig.from_dict(self.augmentation)
        if self.augmentation
        else None
      )
    if isinstance(self.domain_adaptation, Mapping):
      self.domain_adaptation = DomainAdaptationConfig.from_dict(
        self.domain_adaptation
      )
    if self.phases is not None:
      _require(
        isinstance(self.phases, list),
        'trainer.phases',
        'a list of mappings',
        self.phases,
      )
      self.phases = [
        _phase_config(values, f'trainer.phases[{i}]')
        for i, values in enumerate(self.phases)
      ]
    self._check_fields('trainer')
    self.fine_tuning_phases()  # Checks the unfreeze settings.

  def fine_tuning_phases(self) -> List[Phase]:
    """The phases after phase 1, named phase2, phase3, ..."""
    alternatives = {
      key: getattr(self, key)
      for key in ('fine_tune_from', 'fine_tune_fraction')
      if getattr(self, key) is not None
    }
    unfreeze = parse_unfreeze(
      alternatives or {'fine_tune_layers': self.fine_tune_layers}, 'trainer'
    )
    text_unfreeze = _text_unfreeze(
      self.text_fine_tune_layers, 'trainer.text_fine_tune_layers'
    )
    if self.phases is None:
      return [
        Phase(
          'phase2',
          self.phase2_epochs,
          self.phase2_learning_rate,
          unfreeze,
          text_unfreeze,
        )
      ]
    return [
      phase.phase(
        f'phase{i + 2}', unfreeze, text_unfreeze, f'trainer.phases[{i}]'
      )
      for i, phase in enumerate(self.phases)
    ]

  # Read as the mapping of its settings that differ from the defaults (what
  # a settings file's `trainer` table holds): `{**config.trainer, ...}`.
  def keys(self):
    return self.to_dict().keys()

  def __getitem__(self, key: str) -> Any:
    return self.to_dict()[key]

  def __eq__(self, other) -> bool:
    if isinstance(other, Mapping):
      return self.to_dict() == dict(other)
    if isinstance(other, TrainerConfig):
      return self.to_dict() == other.to_dict()
    return NotImplemented


def _phase_config(values: Any, where: str) -> PhaseConfig:
  if isinstance(values, PhaseConfig):
    values.check(where)
    return values
  if not isinstance(values, Mapping):
    raise ConfigError(
      f'{where} must be a mapping with keys '
      f'{[f.name for f in dataclasses.fields(PhaseConfig)]}, got {values!r}'
    )
  check_keys(values, [f.name for f in dataclasses.fields(PhaseConfig)], where)
  phase = PhaseConfig(**values)
  phase.check(where)
  return phase


@dataclasses.dataclass
class PipelineConfig(_Section):
  """Where the pipeline reads and writes, and how it ingests, trains, gates.

  The top level of a settings file; `trainer` is its TrainerConfig table.
  """

  data_root: str = setting(
    DEMO_DATA,
    flag=True,
    help='Folder-per-class image tree, or the folder the manifest is in '
    '(default: the bundled Fashion-MNIST demo).',
  )
  modality: str = setting(
    'image',
    flag=True,
    check=lambda v: v in MODALITIES,
    requirement=f'one of {list(MODALITIES)}',
    help=f'What the examples hold: one of {list(MODALITIES)}.',
  )
  output_dir: str = setting(
    os.path.join(PROJECT_ROOT, 'outputs'),
    flag=True,
    help='Holds the pipeline root, MLMD, serving/ (the pushed models) and '
    'reports/. A local path or an object store URI (s3://bucket/dir, '
    'gs://bucket/dir); there, MLMD and the run lock stay local '
    '(state_dir).',
  )
  pipeline_name: str = setting(
    'transfer-learning', flag=True, help="The pipeline's name."
  )
  manifest: Optional[str] = setting(
    None,
    flag=True,
    help='Images: an optional CSV path,label under data_root; text and '
    'image_text: the required CSV or JSONL data file.',
  )
  split_folders: Optional[List[str]] = setting(
    None,
    help="Images: predefined split folders, e.g. ['train', 'eval']; "
    'by default files are hashed into train/eval 4:1.',
  )
  text_columns: List[str] = setting(
    help='Text and image_text: the column(s) holding the text.',
    factory=lambda: ['text'],
  )
  label_column: str = setting('label', help='The column holding the class.')
  id_column: Optional[str] = setting(
    None, help='An optional column of unique row ids.'
  )
  image_column: str = setting(
    'path', help="image_text: the column holding each row's image path."
  )
  trainer: TrainerConfig = setting(
    help="The Trainer's settings.", factory=TrainerConfig
  )
  tuning: Optional[Dict[str, int]] = setting(
    None,
    check=lambda v: (
      isinstance(v, dict)
      and set(v) == {'trials'}
      and _is_int(v['trials'])
      and v['trials'] >= 1
    ),
    requirement='a mapping {trials: N}, N an integer >= 1',
    help="A Tuner component searches the head's learning rate, dropout "
    'and weight decay in N trials on cached embeddings (modules/tuner.py); '
    "its best values override the trainer's. Unset: off.",
  )
  accuracy_threshold: float = setting(
    0.6,
    flag=True,
    check=lambda v: 0.0 <= v <= 1.0,
    requirement='in [0, 1]',
    help='The gate: eval accuracy must reach this.',
  )
  max_accuracy_drop: float = setting(
    0.0,
    flag=True,
    check=lambda v: v >= 0,
    requirement='>= 0',
    help='The gate: allowed drop below the served model (0: no regression).',
  )
  max_rejected_fraction: float = setting(
    DEFAULT_MAX_REJECTED_FRACTION,
    check=lambda v: 0 <= v <= 1,
    requirement='in [0, 1]',
    help='ExampleGen fails above this fraction of bad files or rows.',
  )
  allow_paths_outside_data_root: bool = setting(
    False,
    help='Read manifest paths outside data_root (../, absolute, '
    'symlinks); off: they are rejected with the reason.',
  )
  beam_pipeline_args: List[str] = setting(
    help=(
      'Beam options; default: the in-memory DirectRunner on one core, '
      'measured faster than the multi-process mode on small data '
      f'(docs/performance.md); one worker process per core: '
      f'{MULTI_PROCESS_BEAM_ARGS}.'
    ),
    factory=lambda: list(IN_MEMORY_BEAM_ARGS),
  )
  # The data validation gate (components/data_validator.py,
  # docs/data-validation.md).
  schema_file: Optional[str] = setting(
    None,
    flag=True,
    help='The curated schema (schema.pbtxt) the data is validated against; '
    'unset: the schema recorded beside the served model.',
  )
  label_drift_comparator: str = setting(
    'infinity_norm',
    check=lambda v: v in LABEL_COMPARATORS,
    requirement=f'one of {list(LABEL_COMPARATORS)}',
    help="The label's drift and skew measure: L-infinity or Jensen-Shannon.",
  )
  label_drift_threshold: float = setting(
    0.1,
    check=lambda v: 0.0 <= v <= 1.0,
    requirement='in [0, 1]',
    help="How far the label distribution may move from the served run's.",
  )
  feature_drift_threshold: float = setting(
    0.1,
    check=lambda v: 0.0 <= v <= 1.0,
    requirement='in [0, 1]',
    help='Jensen-Shannon divergence allowed for image width, height and '
    "text length against the served run's.",
  )
  split_skew_threshold: float = setting(
    0.15,
    check=lambda v: 0.0 <= v <= 1.0,
    requirement='in [0, 1]',
    help='Train against eval: the label and the same features.',
  )
  warn_anomalies: List[str] = setting(
    help='Anomalies reported as warnings instead of stopping the run: a '
    "check ('drift') or check:feature ('drift:label').",
    check=lambda v: all(
      isinstance(n, str) and n.split(':')[0] in VALIDATION_CHECKS for n in v
    ),
    requirement=f'checks or check:feature; checks: {list(VALIDATION_CHECKS)}',
    factory=list,
  )

  def __post_init__(self):
    if isinstance(self.trainer, Mapping):
      self.trainer = TrainerConfig.from_dict(self.trainer)
    if self.modality not in MODALITIES:
      raise ConfigError(
        f'modality {self.modality!r} is not supported; '
        f'supported: {list(MODALITIES)}'
      )
    self._check_fields('')
    if self.modality != features.IMAGE:
      if not self.manifest or not self.manifest.endswith(TEXT_FILE_EXTENSIONS):
        raise ConfigError(
          f'modality {self.modality!r} needs manifest: a CSV or JSONL data '
          f'file under data_root, got {self.manifest!r}'
        )
      if self.split_folders:
        raise ConfigError(
          f'split_folders is for images; modality '
          f'{self.modality!r} hashes rows into train/eval'
        )

  @property
  def pipeline_root(self) -> str:
    return os.path.join(self.output_dir, 'pipeline_root')

  @property
  def state_dir(self) -> str:
    """Local folder of MLMD's SQLite file and the run lock.

    output_dir itself, or for an object store
    `$XDG_CACHE_HOME/tfx-transfer/<scheme>/<bucket>/<dir>` (default
    ~/.cache/...): SQLite needs a local file, and the run lock a flock.
    """
    if not object_store.is_remote(self.output_dir):
      return self.output_dir
    cache = os.environ.get('XDG_CACHE_HOME') or os.path.join(
      os.path.expanduser('~'), '.cache'
    )
    return os.path.join(
      cache, 'tfx-transfer', self.output_dir.replace('://', '/', 1).rstrip('/')
    )

  @property
  def metadata_path(self) -> str:
    return os.path.join(self.state_dir, 'metadata.sqlite')

  @property
  def serving_dir(self) -> str:
    return os.path.join(self.output_dir, 'serving')

  @property
  def image_size(self) -> int:
    return self.trainer.image_size

  @property
  def text_encoder(self) -> str:
    return self.trainer.text_encoder

  @property
  def max_length(self) -> int:
    return self.trainer.max_length


def check_models(config: PipelineConfig) -> None:
  """Checks the backbone and text encoder names, the image size and that
  each phase's `fine_tune_from` names a layer of a Keras Applications
  backbone (built without weights; `hub:` and `file:` backbones are checked
  when the Trainer loads them).

  What needs no data but the backbone catalogue (modules/backbones.py, which
  loads TensorFlow): every front end calls it before any component runs.
  """
  if config.modality != features.TEXT and config.image_size < MIN_IMAGE_SIZE:
    raise ConfigError(
      f'trainer.image_size must be >= {MIN_IMAGE_SIZE}, got {config.image_size}'
    )
  from modules import backbones

  try:
    if config.modality != features.TEXT:
      backbones.check_spec(config.trainer.backbone, config.image_size)
      layered = [
        phase
        for phase in config.trainer.fine_tuning_phases()
        if phase.unfreeze.from_layer is not None
      ]
      if layered and config.trainer.backbone in backbones.ZOO:
        import tensorflow as tf

        with tf.Graph().as_default():  # Thrown away; Keras' names as fresh.
          layers = backbones.build_backbone(
            config.trainer.backbone, config.image_size, weights=None
          ).layers
        for phase in layered:
          phase.unfreeze.first_trainable(layers)
    if config.modality != features.IMAGE:
      backbones.check_text_spec(config.trainer.text_encoder)
  except ValueError as e:
    raise ConfigError(str(e)) from e


# Settings files.


def load_file(path: str) -> Dict[str, Any]:
  """Reads a .yaml/.yml/.toml settings file; checks its top-level keys.

  Returns:
    The settings as a mapping (PipelineConfig.from_dict checks the rest).
  """
  extension = os.path.splitext(path)[1].lower()
  if extension not in ('.yaml', '.yml', '.toml'):
    raise ConfigError(
      f'{path}: settings files are .yaml, .yml or .toml, not {extension!r}'
    )
  try:
    with open(path, 'rb') as f:
      values = tomli.load(f) if extension == '.toml' else yaml.safe_load(f)
  except OSError as e:
    raise ConfigError(f'cannot read settings file {path}: {e.strerror}') from e
  except (tomli.TOMLDecodeError, yaml.YAMLError) as e:
    raise ConfigError(
      f'{path} is not valid {extension[1:].upper()}: {e}'
    ) from e
  if values is None:
    return {}
  if not isinstance(values, dict):
    raise ConfigError(
      f'{path}: expected a mapping of settings, got {type(values).__name__}'
    )
  check_keys(values, [f.name for f in dataclasses.fields(PipelineConfig)], path)
  return values


# Flags.


def flag_fields(
  section: type = PipelineConfig, exclude: Sequence[str] = ()
) -> List[tuple]:
  """(key path, field) of every setting with a dedicated flag.

  Trainer settings' flags drop the `trainer.` prefix (--phase1-epochs).
  """
  fields = []
  for field in dataclasses.fields(section):
    if field.name == 'trainer':
      fields += [
        (f'trainer.{f.name}', f)
        for f in dataclasses.fields(TrainerConfig)
        if f.metadata.get('flag')
      ]
    elif field.metadata.get('flag'):
      fields.append((field.name, field))
  return [
    (key, field)
    for key, field in fields
    if key not in exclude and field.name not in exclude
  ]


def flag_name(key: str) -> str:
  """The flag of a settings key: trainer.phase1_epochs -> --phase1-epochs."""
  return '--' + key.rsplit('.', 1)[-1].replace('_', '-')


def add_flags(
  parser: argparse.ArgumentParser,
  exclude: Sequence[str] = (),
  set_help: str = '',
) -> None:
  """Adds the settings' flags to `parser`: dedicated ones and --set.

  `exclude` leaves out keys (or field names) this command cannot set.
  """
  for key, _ in flag_fields(exclude=exclude):
    add_flag(parser, key)
  parser.add_argument(
    '--set',
    action='append',
    default=[],
    metavar='KEY=VALUE',
    dest='settings_overrides',
    help='Any setting by its key, e.g. --set trainer.dropout=0.3 or '
    '--set trainer.augmentation.flip=horizontal; VALUE is read as YAML '
    '(repeatable; docs/cli.md lists the keys).' + set_help,
  )


def add_flag(parser: argparse.ArgumentParser, key: str, **kwargs) -> None:
  """Adds the flag of settings `key` (e.g. 'trainer.phase1_epochs').

  Its type and help come from the field, and its default is None (unset:
  the settings file's value, else the field's default, which the help
  shows); `kwargs` override argparse arguments (e.g. required=True).
  """
  section, name = (
    (TrainerConfig, key.split('.', 1)[1])
    if key.startswith('trainer.')
    else (PipelineConfig, key)
  )
  (field,) = [f for f in dataclasses.fields(section) if f.name == name]
  annotation = typing.get_type_hints(section)[name]
  scalar = {int: int, float: float}.get(_scalar(annotation), str)
  default = _default(field)
  shown = (
    '' if name in ('data_root', 'output_dir') else (f' (default {default})')
  )
  parser.add_argument(
    flag_name(key),
    dest=key,
    type=scalar,
    metavar=name.upper(),
    **{'help': field.metadata['help'] + shown, **kwargs},
  )


def _scalar(annotation: Any) -> Any:
  args = [a for a in typing.get_args(annotation) if a is not types.NoneType]
  return (
    args[0]
    if typing.get_origin(annotation) is Union and len(args) == 1
    else annotation
  )


def overrides(args: argparse.Namespace) -> Dict[str, Any]:
  """The nested settings the flags of `add_flags` give (unset: left out)."""
  values: Dict[str, Any] = {}
  for item in getattr(args, 'settings_overrides', None) or []:
    key, sep, text = item.partition('=')
    if not sep or not key:
      raise ConfigError(f'--set takes KEY=VALUE, got {item!r}')
    try:
      value = yaml.safe_load(text)
    except yaml.YAMLError as e:
      raise ConfigError(
        f'--set {key}: {text!r} is not a YAML value: {e}'
      ) from e
    _set(values, key, value)
  for key in _FLAG_KEYS:
    if getattr(args, key, None) is not None:
      _set(values, key, getattr(args, key))
  return values


def _set(values: Dict[str, Any], key: str, value: Any) -> None:
  *parents, last = key.split('.')
  for parent in parents:
    values = values.setdefault(parent, {})
    if not isinstance(values, dict):
      raise ConfigError(f'--set {key}: {parent} is not a section')
  values[last] = value


_FLAG_KEYS = frozenset(key for key, _ in flag_fields())


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> Dict[str, Any]:
  """`base` with `update`'s values; nested mappings are merged key by key."""
  merged = dict(base)
  for key, value in update.items():
    if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
      merged[key] = merge(merged[key], value)
    else:
      merged[key] = value
  return merged


def from_sources(
  config_path: Optional[str],
  args: argparse.Namespace,
  defaults: Optional[Mapping[str, Any]] = None,
) -> PipelineConfig:
  """PipelineConfig from the defaults, a settings file, then the flags.

  `defaults` replace PipelineConfig's own for this command (e.g. compile's
  data root inside the container image).
  """
  values = merge(defaults or {}, load_file(config_path) if config_path else {})
  return PipelineConfig.from_dict(merge(values, overrides(args)), 'settings')


def setting_keys(section: type = PipelineConfig, prefix: str = '') -> List[str]:
  """Every settings key path, nested sections' fields included."""
  keys = []
  hints = typing.get_type_hints(section)
  for field in dataclasses.fields(section):
    key = prefix + field.name
    keys.append(key)
    nested = _section_type(hints[field.name])
    if nested is not None and nested is not PhaseConfig:
      keys += setting_keys(nested, key + '.')
  return keys


def _section_type(annotation: Any) -> Optional[type]:
  for candidate in (annotation, *typing.get_args(annotation)):
    if isinstance(candidate, type) and issubclass(candidate, _Section):
      return candidate
  return None


# Type checks.


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
    return _is_number(value)
  if annotation is int:
    return _is_int(value)
  return isinstance(value, annotation)


def _hint(value: Any, annotation: Any) -> str:
  """Explains YAML's reading of `1e-4` (no dot) as a string."""
  if _scalar(annotation) is float and isinstance(value, str):
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
  if origin is dict or (
    isinstance(annotation, type) and issubclass(annotation, _Section)
  ):
    return 'a mapping'
  return {
    float: 'a number',
    int: 'an integer',
    str: 'a string',
    bool: 'true/false',
    types.NoneType: 'null',
  }.get(annotation, getattr(annotation, '__name__', str(annotation)))

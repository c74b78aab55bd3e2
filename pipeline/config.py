"""Pipeline settings: one dataclass, shared by the local runner and the CLI."""

import dataclasses
import os
from typing import Any, Dict, List, Optional

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_DATA = os.path.join(PROJECT_ROOT, 'data', 'fashion_demo')
MODULES_DIR = os.path.join(PROJECT_ROOT, 'modules')
MODALITIES = ('image', 'text', 'image_text')  # As in modules/features.py.
# Data files the text ExampleGen reads (components/text_example_gen.py).
TEXT_FILE_EXTENSIONS = ('.csv', '.jsonl', '.ndjson')


@dataclasses.dataclass
class PipelineConfig:
  """Where the pipeline reads and writes, and how it trains and gates.

  Attributes:
    data_root: folder-per-class image tree (or the folder a manifest is in;
      the paths in a manifest are relative to it).
    modality: what the examples hold; one of MODALITIES: 'image' (the
      default), 'text' or 'image_text' (a manifest row holds both).
    output_dir: holds the pipeline root, the MLMD sqlite file and `serving/`,
      the versioned push destination.
    manifest: for images, an optional CSV (path,label) relative to data_root;
      for text and image_text, the required CSV or JSONL data file.
    split_folders: optional predefined split folders, e.g. ['train', 'eval'];
      by default the tree is hashed into train/eval 4:1 by file path.
    text_columns: text and image_text: the column(s) holding the text.
    label_column: text and image_text: the column holding the class name.
    id_column: text and image_text: an optional column of unique row ids.
    image_column: image_text: the column holding each row's image path.
    trainer: the Trainer's settings (modules/trainer.py TrainerConfig).
    accuracy_threshold: the Evaluator blesses only above this eval accuracy.
    max_accuracy_drop: and only if accuracy is at most this much below the
      served model's (0 = no regression allowed).
    max_rejected_fraction: ExampleGen fails above this fraction of bad files.
    allow_paths_outside_data_root: read manifest paths with `../` or absolute
      paths, and files whose real path (symlinks resolved) is outside
      data_root; off: they are rejected with the reason.
    beam_pipeline_args: e.g. ['--direct_num_workers=0'].
  """
  data_root: str = DEMO_DATA
  modality: str = 'image'
  output_dir: str = os.path.join(PROJECT_ROOT, 'outputs')
  pipeline_name: str = 'transfer-learning'
  manifest: Optional[str] = None
  split_folders: Optional[List[str]] = None
  text_columns: List[str] = dataclasses.field(default_factory=lambda: ['text'])
  label_column: str = 'label'
  id_column: Optional[str] = None
  image_column: str = 'path'
  trainer: Dict[str, Any] = dataclasses.field(default_factory=dict)
  accuracy_threshold: float = 0.6
  max_accuracy_drop: float = 0.0
  max_rejected_fraction: float = 0.1
  allow_paths_outside_data_root: bool = False
  beam_pipeline_args: List[str] = dataclasses.field(
      default_factory=lambda: ['--direct_running_mode=in_memory',
                               '--direct_num_workers=1'])

  def __post_init__(self):
    if self.modality not in MODALITIES:
      raise ValueError(f'modality {self.modality!r} is not supported; '
                       f'supported: {list(MODALITIES)}')
    if self.modality != 'image':
      if not self.manifest or not self.manifest.endswith(TEXT_FILE_EXTENSIONS):
        raise ValueError(
            f'modality {self.modality!r} needs manifest: a CSV or JSONL data '
            f'file under data_root, got {self.manifest!r}')
      if self.split_folders:
        raise ValueError(f'split_folders is for images; modality '
                         f'{self.modality!r} hashes rows into train/eval')
    if not 0.0 <= self.accuracy_threshold <= 1.0:
      raise ValueError(
          f'accuracy_threshold must be in [0, 1], got {self.accuracy_threshold}')
    if self.max_accuracy_drop < 0:
      raise ValueError(
          f'max_accuracy_drop must be >= 0, got {self.max_accuracy_drop}')
    _trainer_config(self.trainer)  # Fail early on typos.

  @property
  def pipeline_root(self) -> str:
    return os.path.join(self.output_dir, 'pipeline_root')

  @property
  def metadata_path(self) -> str:
    return os.path.join(self.output_dir, 'metadata.sqlite')

  @property
  def serving_dir(self) -> str:
    return os.path.join(self.output_dir, 'serving')

  @property
  def image_size(self) -> int:
    return _trainer_config(self.trainer).image_size

  @property
  def text_encoder(self) -> str:
    return _trainer_config(self.trainer).text_encoder

  @property
  def max_length(self) -> int:
    return _trainer_config(self.trainer).max_length


def _trainer_config(values: Dict[str, Any]):
  """modules/trainer.py's TrainerConfig from `values`; raises on unknown keys.

  Imported on use: it loads TensorFlow, which settings checks should not wait
  for.
  """
  from modules import trainer  # pylint: disable=g-import-not-at-top
  return trainer.TrainerConfig.from_dict(values)

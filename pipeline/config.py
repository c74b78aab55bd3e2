"""Pipeline settings: one dataclass, shared by the local runner and the CLI."""

import dataclasses
import os
from typing import Any, Dict, List, Optional

from modules import trainer

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_DATA = os.path.join(PROJECT_ROOT, 'data', 'fashion_demo')
MODULES_DIR = os.path.join(PROJECT_ROOT, 'modules')


@dataclasses.dataclass
class PipelineConfig:
  """Where the pipeline reads and writes, and how it trains and gates.

  Attributes:
    data_root: folder-per-class image tree (or the folder a manifest is in).
    output_dir: holds the pipeline root, the MLMD sqlite file and `serving/`,
      the versioned push destination.
    manifest: optional CSV (path,label) relative to data_root.
    split_folders: optional predefined split folders, e.g. ['train', 'eval'];
      by default the tree is hashed into train/eval 4:1 by file path.
    trainer: the Trainer's settings (modules/trainer.py TrainerConfig).
    accuracy_threshold: the Evaluator blesses only above this eval accuracy.
    max_accuracy_drop: and only if accuracy is at most this much below the
      latest blessed model's (0 = no regression allowed).
    max_rejected_fraction: ExampleGen fails above this fraction of bad files.
    beam_pipeline_args: e.g. ['--direct_num_workers=0'].
  """
  data_root: str = DEMO_DATA
  output_dir: str = os.path.join(PROJECT_ROOT, 'outputs')
  pipeline_name: str = 'transfer-learning'
  manifest: Optional[str] = None
  split_folders: Optional[List[str]] = None
  trainer: Dict[str, Any] = dataclasses.field(default_factory=dict)
  accuracy_threshold: float = 0.6
  max_accuracy_drop: float = 0.0
  max_rejected_fraction: float = 0.1
  beam_pipeline_args: List[str] = dataclasses.field(
      default_factory=lambda: ['--direct_running_mode=in_memory',
                               '--direct_num_workers=1'])

  def __post_init__(self):
    trainer.TrainerConfig.from_dict(self.trainer)  # Fail early on typos.
    if not 0.0 <= self.accuracy_threshold <= 1.0:
      raise ValueError(
          f'accuracy_threshold must be in [0, 1], got {self.accuracy_threshold}')
    if self.max_accuracy_drop < 0:
      raise ValueError(
          f'max_accuracy_drop must be >= 0, got {self.max_accuracy_drop}')

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
    return trainer.TrainerConfig.from_dict(self.trainer).image_size

"""Shared test setup: tf_keras everywhere, bundled demo data, tiny datasets."""

import os
import sys

import pytest

os.environ['TF_USE_LEGACY_KERAS'] = '1'
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_DATA = os.path.join(PROJECT_ROOT, 'data', 'fashion_demo')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='session')
def demo_run(tmp_path_factory):
  """One real LocalDagRunner run of the demo pipeline, shared by the tests."""
  from pipeline import config as config_lib  # pylint: disable=g-import-not-at-top
  from pipeline import local_runner  # pylint: disable=g-import-not-at-top
  import helpers  # pylint: disable=g-import-not-at-top
  config = config_lib.PipelineConfig(
      output_dir=str(tmp_path_factory.mktemp('demo_run')),
      trainer=dict(helpers.E2E_TRAINER))
  return config, local_runner.run(config)

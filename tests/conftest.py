"""Shared test setup: tf_keras everywhere, bundled demo data, tiny datasets."""

import os
import sys

import pytest

os.environ['TF_USE_LEGACY_KERAS'] = '1'
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_DATA = os.path.join(PROJECT_ROOT, 'data', 'fashion_demo')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


# `@pytest.mark.reliability(CATEGORY)` tests (issue "Reliability"); the
# terminal summary prints one line per category.
RELIABILITY_CATEGORIES = ('bad input', 'interrupted run', 'concurrent runs',
                          'gate under faults', 'security')


def pytest_configure(config):
  config.addinivalue_line(
      'markers', 'reliability(category): a reliability guarantee test; '
      f'category is one of {RELIABILITY_CATEGORIES}.')


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # pylint: disable=unused-argument
  outcome = yield
  marker = item.get_closest_marker('reliability')
  if marker:
    category = marker.args[0]
    assert category in RELIABILITY_CATEGORIES, category
    outcome.get_result().user_properties.append(('reliability', category))


def pytest_terminal_summary(terminalreporter):
  """`RELIABILITY <category>: N passed, M failed` per category run."""
  counts = {}
  for state in ('passed', 'failed', 'error', 'skipped'):
    for report in terminalreporter.stats.get(state, []):
      category = dict(getattr(report, 'user_properties', ())).get(
          'reliability')
      if category and (report.when == 'call' or state != 'passed'):
        counts.setdefault(category, {'passed': 0, 'failed': 0,
                                     'skipped': 0})
        counts[category]['failed' if state == 'error' else state] += 1
  for category in RELIABILITY_CATEGORIES:
    if category in counts:
      line = counts[category]
      terminalreporter.write_line(
          f'RELIABILITY {category}: {line["passed"]} passed, '
          f'{line["failed"]} failed' +
          (f', {line["skipped"]} skipped' if line['skipped'] else ''))


@pytest.fixture(scope='session')
def demo_run(tmp_path_factory):
  """One real LocalDagRunner run of the demo pipeline, shared by the tests."""
  from pipeline import settings as settings_lib  # pylint: disable=g-import-not-at-top
  from pipeline import local_runner  # pylint: disable=g-import-not-at-top
  import helpers  # pylint: disable=g-import-not-at-top
  config = settings_lib.PipelineConfig(
      output_dir=str(tmp_path_factory.mktemp('demo_run')),
      trainer=dict(helpers.E2E_TRAINER))
  return config, local_runner.run(config)

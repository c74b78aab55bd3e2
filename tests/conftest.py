"""Shared test setup: tf_keras everywhere, bundled demo data, tiny datasets."""

import os
import re
import sys

import pytest

os.environ['TF_USE_LEGACY_KERAS'] = '1'
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_DATA = os.path.join(PROJECT_ROOT, 'data', 'fashion_demo')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


# `@pytest.mark.reliability(CATEGORY)` tests (issue "Reliability"); the
# terminal summary prints one line per category.
RELIABILITY_CATEGORIES = (
  'bad input',
  'interrupted run',
  'concurrent runs',
  'gate under faults',
  'security',
)

# The fast tier, `make test-fast` (`pytest -m fast`): tests that take seconds
# and run no whole pipeline; under 3 minutes in all on 2 cores. An entry is a
# module (all its tests) or a `module::test name` prefix.
FAST_TESTS = (
  'test_atomic_pusher.py',
  'test_cli_workflow.py',
  'test_kfp_local.py',
  'test_kubeflow_compile.py',
  'test_kubeflow_entrypoint.py',
  'test_kubeflow_schedule.py',
  'test_modalities.py',
  'test_reliability_security.py',
  'test_report.py',
  'test_domain_adaptation.py::test_reversal_',
  'test_domain_adaptation.py::test_ganin_schedule',
  'test_domain_adaptation.py::test_dann_loss_gradients_per_part',
  'test_domain_adaptation.py::test_class_weights_weigh_the_source_label',
  'test_domain_adaptation.py::test_adapted_phase_needs_trainable_backbone',
  'test_domain_adaptation.py::test_target_dataset_reads_any_nesting',
  'test_domain_adaptation.py::test_settings_off_by_default_and_checked',
  'test_embedding_cache.py::test_cache_round_trips_the_embeddings',
  'test_image_example_gen.py::test_bad_files_are_rejected_with_reasons',
  'test_image_example_gen.py::test_custom_config',
  'test_image_example_gen.py::test_manifest_errors',
  'test_model.py::test_keras_is_tf_keras',
  'test_model.py::test_unknown_backbone_is_a_clear_error',
  'test_pretrained_weights.py::test_missing_package_error',
  'test_text_encoder.py::test_vocab_file_is_the_tokenizer_json_vocabulary',
  'test_text_encoder.py::test_token_ids_match_hugging_face',
  'test_text_encoder.py::test_truncation_keeps_cls_and_sep',
  'test_text_example_gen.py::test_bad_csv_rows_are_counted_with_reasons',
  'test_text_example_gen.py::test_custom_config_round_trip',
  'test_training_options.py::test_bad_settings_name_their_key',
  'test_training_options.py::test_balanced_and_explicit_class_weights',
  'test_training_options.py::test_default_settings_are_one_phase_2',
  'test_training_options.py::test_lr_schedule_values',
  'test_training_options.py::test_unfreeze_settings_on_mobilenet',
)


def pytest_configure(config):
  config.addinivalue_line(
    'markers',
    'reliability(category): a reliability guarantee test; '
    f'category is one of {RELIABILITY_CATEGORIES}.',
  )
  config.addinivalue_line(
    'markers', 'fast: in the fast tier, `make test-fast` (FAST_TESTS).'
  )
  _check_fast_tests()


def _check_fast_tests():
  """Each FAST_TESTS entry names a module, and a test in it: none goes stale."""
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  for entry in FAST_TESTS:
    module, _, test = entry.partition('::')
    path = os.path.join(tests_dir, module)
    if not os.path.exists(path):
      raise pytest.UsageError(
        f'FAST_TESTS in tests/conftest.py: {entry!r} '
        f'names no module tests/{module}'
      )
    with open(path, encoding='utf-8') as f:
      if not re.search(rf'^\s*def {re.escape(test)}', f.read(), re.M):
        raise pytest.UsageError(
          f'FAST_TESTS in tests/conftest.py: {entry!r} '
          f'names no test in tests/{module}'
        )


def pytest_collection_modifyitems(items):
  """Marks the tests FAST_TESTS names `fast`."""
  for item in items:
    if f'{item.path.name}::{item.name}'.startswith(FAST_TESTS):
      item.add_marker(pytest.mark.fast)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
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
      category = dict(getattr(report, 'user_properties', ())).get('reliability')
      if category and (report.when == 'call' or state != 'passed'):
        counts.setdefault(category, {'passed': 0, 'failed': 0, 'skipped': 0})
        counts[category]['failed' if state == 'error' else state] += 1
  for category in RELIABILITY_CATEGORIES:
    if category in counts:
      line = counts[category]
      terminalreporter.write_line(
        f'RELIABILITY {category}: {line["passed"]} passed, '
        f'{line["failed"]} failed'
        + (f', {line["skipped"]} skipped' if line['skipped'] else '')
      )


@pytest.fixture(scope='session')
def demo_run(tmp_path_factory):
  """One real LocalDagRunner run of the demo pipeline, shared by the tests."""
  from pipeline import settings as settings_lib
  from pipeline import local_runner
  import helpers

  config = settings_lib.PipelineConfig(
    output_dir=str(tmp_path_factory.mktemp('demo_run')),
    trainer=dict(helpers.E2E_TRAINER),
    # Beam's worker processes, as on the portable runners: every DoFn of
    # ExampleGen, StatisticsGen, Transform and the Evaluator is pickled.
    beam_pipeline_args=list(settings_lib.MULTI_PROCESS_BEAM_ARGS),
  )
  return config, local_runner.run(config)


@pytest.fixture(scope='session')
def s3_server(tmp_path_factory):
  """A real S3 server (moto_server) on loopback, for the whole session."""
  import s3_server as s3_server_lib

  server = s3_server_lib.S3Server(
    str(tmp_path_factory.mktemp('moto') / 'moto_server.log')
  )
  yield server
  server.stop()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):
  """A fresh bucket on `s3_server` (its `s3://` URI); the env points at it.

  The pytest process must not touch s3:// through tensorflow-io (it would
  abort at exit, tensorflow/io#2039): pass `s3_server.env` to subprocesses.
  """
  for name, value in s3_server.env.items():
    monkeypatch.setenv(name, value)
  return s3_server.create_bucket()


@pytest.fixture(scope='session')
def fusion_run(tmp_path_factory):
  """One real image+text run on data/fashion_text, shared by the tests."""
  from pipeline import settings as settings_lib
  from pipeline import local_runner
  import helpers

  config = settings_lib.PipelineConfig(
    output_dir=str(tmp_path_factory.mktemp('fusion_run')),
    modality='image_text',
    data_root=os.path.join(PROJECT_ROOT, 'data'),
    manifest='fashion_text/manifest.csv',
    trainer=dict(helpers.FUSION_TRAINER),
  )
  return config, local_runner.run(config)

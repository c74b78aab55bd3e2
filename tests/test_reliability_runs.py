"""Reliability of whole runs: killed, concurrent, and gated under faults.

One output directory goes through, in order (a module fixture, then the
gate tests; every run has 1 phase-1 epoch):
1. two runs (`python -m pipeline.cli run`, real processes) start at once;
   one takes the output directory's lock, the other must fail at once with
   exit code 2, naming the holder;
2. the one running is SIGKILLed (its process group) in its Trainer;
3. a third run re-runs: what A completed comes from the MLMD cache, the Trainer
   runs, the model is pushed; a watcher lists serving/ all along and never
   sees a version without its SavedModel;
4. a run whose loss is NaN, and a run with an empty eval split, push
   nothing, and C's model still serves.
"""

import dataclasses
import glob
import json
import os
import pathlib
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from typing import Dict, List, Set

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
import pytest
import tensorflow as tf
from tfx import v1 as tfx

import helpers
from components import atomic_pusher
from pipeline import cli
from pipeline import settings as settings_lib
from pipeline import local_runner

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINER = {'phase1_epochs': 1, 'phase2_epochs': 0}
SETTINGS = (
  'accuracy_threshold: 0.3\ntrainer:\n  phase1_epochs: 1\n  phase2_epochs: 0\n'
)
UPSTREAM = ('FileBasedExampleGen', 'StatisticsGen', 'SchemaGen', 'Transform')
# Their cache keys include the user-module wheel (all of modules/).
USER_CODE = {'Transform': 'transform'}
TIMEOUT = 900


def _cli_command(settings: pathlib.Path, output_dir: str) -> List[str]:
  return [
    sys.executable,
    '-m',
    'pipeline.cli',
    'run',
    '--config',
    str(settings),
    '--output-dir',
    output_dir,
  ]


def _env():
  return {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2', 'PYTHONUNBUFFERED': '1'}


def _wait_for(condition, what: str, process=None, timeout=TIMEOUT):
  deadline = time.time() + timeout
  while not condition():
    if process is not None and process.poll() is not None:
      raise AssertionError(
        f'process ended (exit {process.returncode}) before {what}'
      )
    if time.time() > deadline:
      raise AssertionError(f'timed out waiting for {what}')
    time.sleep(0.2)


class _ServingWatcher(threading.Thread):
  """Lists serving/ every 20 ms; records versions seen and any incomplete."""

  def __init__(self, serving_dir: str):
    super().__init__(daemon=True)
    self.serving_dir = serving_dir
    self.seen: Set[str] = set()
    self.incomplete: List[str] = []
    self.stop = threading.Event()

  def run(self):
    while not self.stop.is_set():
      for version in atomic_pusher.pushed_versions(self.serving_dir):
        path = os.path.join(self.serving_dir, version)
        self.seen.add(version)
        if not (
          os.path.exists(os.path.join(path, 'saved_model.pb'))
          and os.path.exists(os.path.join(path, 'variables', 'variables.index'))
        ):
          self.incomplete.append(version)
      time.sleep(0.02)


@dataclasses.dataclass
class Interrupted:
  output_dir: str
  killed_pid: int
  killed_returncode: int
  evaluator_started_at_kill: bool
  serving_at_kill: List[str]
  busy: subprocess.CompletedProcess
  resumed: subprocess.CompletedProcess
  resumed_report: dict
  watcher: _ServingWatcher


def _start(settings, output_dir, log) -> subprocess.Popen:
  with open(log, 'w') as out:
    return subprocess.Popen(
      _cli_command(settings, output_dir),
      cwd=PROJECT_ROOT,
      env=_env(),
      stdout=out,
      stderr=subprocess.STDOUT,
      start_new_session=True,
    )


def _node_started(output_dir: str, node: str) -> bool:
  """Whether `node` has started: TFX makes its output folders at launch."""
  return bool(
    glob.glob(os.path.join(output_dir, 'pipeline_root', node, '*', '*'))
  )


@pytest.fixture(scope='module')
def interrupted(tmp_path_factory) -> Interrupted:
  root = tmp_path_factory.mktemp('interrupted')
  output_dir = str(root / 'outputs')
  settings = root / 'settings.yaml'
  settings.write_text(SETTINGS)
  # Two runs at once on one output directory: one takes the lock, the other
  # must fail at once. The one that runs is SIGKILLed in its Trainer.
  runs = [_start(settings, output_dir, root / f'run{i}.log') for i in (0, 1)]
  try:
    _wait_for(
      lambda: any(r.poll() is not None for r in runs),
      'one of two concurrent runs to give up',
    )
    loser = next(r for r in runs if r.poll() is not None)
    winner = runs[1 - runs.index(loser)]
    _wait_for(
      lambda: _node_started(output_dir, 'Trainer'),
      'the Trainer to start',
      winner,
    )
    time.sleep(3)  # Inside the Trainer (it takes far longer).
    assert winner.poll() is None
  finally:
    for run in runs:
      if run.poll() is None:
        os.killpg(run.pid, signal.SIGKILL)
      run.wait()
  evaluator_started = _node_started(output_dir, 'Evaluator')
  log = root / f'run{runs.index(loser)}.log'
  busy = subprocess.CompletedProcess(
    loser.args, loser.returncode, log.read_text(), log.read_text()
  )
  serving_dir = os.path.join(output_dir, 'serving')
  serving_at_kill = (
    sorted(os.listdir(serving_dir)) if os.path.isdir(serving_dir) else []
  )

  watcher = _ServingWatcher(serving_dir)
  watcher.start()
  try:
    resumed = subprocess.run(
      _cli_command(settings, output_dir),
      cwd=PROJECT_ROOT,
      env=_env(),
      capture_output=True,
      text=True,
      timeout=TIMEOUT,
      check=False,
    )
  finally:
    watcher.stop.set()
    watcher.join()
  assert resumed.returncode == cli.EXIT_PUSHED, (
    f'{resumed.stdout[-3000:]}\n{resumed.stderr[-3000:]}'
  )
  report_line = next(
    line for line in resumed.stdout.splitlines() if line.startswith('Report: ')
  )
  with open(
    os.path.join(os.path.dirname(report_line[len('Report: ') :]), 'report.json')
  ) as f:
    resumed_report = json.load(f)
  return Interrupted(
    output_dir,
    winner.pid,
    winner.returncode,
    evaluator_started,
    serving_at_kill,
    busy,
    resumed,
    resumed_report,
    watcher,
  )


@pytest.mark.reliability('concurrent runs')
def test_second_run_on_the_same_output_dir_fails_at_once(interrupted):
  busy = interrupted.busy
  assert busy.returncode == cli.EXIT_BAD_INPUT, busy.stderr[-3000:]
  assert (
    f'error: Output directory {interrupted.output_dir} is in use by '
    f'another run (pid {interrupted.killed_pid} on '
  ) in busy.stderr
  assert 'nothing was run' in busy.stderr
  assert 'Running pipeline' in busy.stdout  # It got as far as the lock.


@pytest.mark.reliability('concurrent runs')
def test_mlmd_store_is_intact_after_kill_and_contention(interrupted):
  metadata = os.path.join(interrupted.output_dir, 'metadata.sqlite')
  with sqlite3.connect(metadata) as connection:
    assert connection.execute('PRAGMA integrity_check').fetchall() == [('ok',)]
  store = metadata_store.MetadataStore(
    tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata)
  )
  runs = store.get_contexts_by_type('pipeline_run')
  assert len(runs) == 2  # The killed run and the resumed one; not B.
  trainer_states = [
    e.last_known_state
    for e in store.get_executions_by_type(
      'tfx.components.trainer.component.Trainer'
    )
  ]
  complete = metadata_store_pb2.Execution.COMPLETE
  # The killed Trainer never completed; the resumed one did.
  assert trainer_states.count(complete) == 1, trainer_states
  assert len(trainer_states) == 2, trainer_states


@pytest.mark.reliability('interrupted run')
def test_killed_run_resumes_from_the_cache_and_pushes(interrupted):
  assert interrupted.killed_returncode == -signal.SIGKILL
  assert not interrupted.evaluator_started_at_kill
  states = {
    node: c['state']
    for node, c in interrupted.resumed_report['components'].items()
  }
  print(f'resumed run: {states}')
  for node in UPSTREAM:
    if node in USER_CODE and _user_code_changed(
      interrupted.output_dir, USER_CODE[node]
    ):
      # modules/ was edited between the runs: a new cache key, rightly.
      print(f'{node} ran: modules/ changed between the killed run and now')
      continue
    assert states[node] == 'cached', states
  assert states['Trainer'] == 'ran' and states['Pusher'] == 'ran', states
  assert interrupted.resumed_report['outcome'] == 'pushed'


@pytest.mark.reliability('interrupted run')
def test_push_destination_only_ever_shows_complete_versions(interrupted):
  # Killed in the Trainer: nothing (at most a hidden staging dir) to serve.
  assert not [
    name for name in interrupted.serving_at_kill if not name.startswith('.')
  ]
  serving_dir = os.path.join(interrupted.output_dir, 'serving')
  versions = atomic_pusher.pushed_versions(serving_dir)
  assert len(versions) == 1 and interrupted.watcher.seen == set(versions)
  assert interrupted.watcher.incomplete == []
  assert not [
    n
    for n in os.listdir(serving_dir)
    if n.startswith(atomic_pusher.STAGING_PREFIX)
  ]


@pytest.mark.reliability('security')
def test_pushed_model_loads_with_plain_saved_model_load(interrupted):
  """No custom objects, no project code: tf.saved_model.load alone."""
  serving_dir = os.path.join(interrupted.output_dir, 'serving')
  version = os.path.join(
    serving_dir, atomic_pusher.pushed_versions(serving_dir)[-1]
  )
  code = (
    'import sys, tensorflow as tf\n'
    'assert "modules" not in sys.modules\n'
    f'model = tf.saved_model.load({version!r})\n'
    'serve = model.signatures["serving_default"]\n'
    f'data = open({_demo_image()!r}, "rb").read()\n'
    'out = serve(image_bytes=tf.constant([data]))\n'
    'print(out["label"].numpy()[0].decode())\n'
  )
  # A fresh interpreter outside the project: nothing of it is importable.
  process = subprocess.run(
    [sys.executable, '-c', code],
    cwd='/',
    env={**_env(), 'PYTHONPATH': ''},
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert process.returncode == 0, process.stderr[-3000:]
  classes = sorted(os.listdir(settings_lib.DEMO_DATA))
  assert process.stdout.split()[-1] in classes


def _user_code_changed(output_dir: str, component: str) -> bool:
  """Whether two runs packaged different user code for `component`."""
  return (
    len(
      glob.glob(
        os.path.join(
          output_dir,
          'pipeline_root',
          '_wheels',
          f'tfx_user_code_{component}-*.whl',
        )
      )
    )
    > 1
  )


def _last_run_states(output_dir: str) -> Dict[str, int]:
  """Node id -> MLMD execution state of the newest run."""
  store = metadata_store.MetadataStore(
    tfx.orchestration.metadata.sqlite_metadata_connection_config(
      os.path.join(output_dir, 'metadata.sqlite')
    )
  )
  run = max(store.get_contexts_by_type('pipeline_run'), key=lambda c: c.id)
  states = {}
  for execution in store.get_executions_by_context(run.id):
    node = next(
      c.name
      for c in store.get_contexts_by_execution(execution.id)
      if c.type == 'node'
    )
    states[node.rsplit('.', 1)[-1]] = execution.last_known_state
  return states


def _demo_image() -> str:
  return sorted(glob.glob(os.path.join(settings_lib.DEMO_DATA, 'bag', '*')))[0]


def _served(output_dir: str) -> List[str]:
  return atomic_pusher.pushed_versions(os.path.join(output_dir, 'serving'))


def _blessings(output_dir: str) -> int:
  store = metadata_store.MetadataStore(
    tfx.orchestration.metadata.sqlite_metadata_connection_config(
      os.path.join(output_dir, 'metadata.sqlite')
    )
  )
  return sum(
    a.custom_properties['blessed'].int_value == 1
    for a in store.get_artifacts_by_type('ModelBlessing')
  )


def _predictions(version_dir: str) -> List[str]:
  paths = sorted(glob.glob(os.path.join(settings_lib.DEMO_DATA, '*', '*')))[:8]
  outputs = helpers.classify(version_dir, '/', paths)
  return [label.decode() for label in outputs['label'].numpy()]


@pytest.mark.reliability('gate under faults')
def test_nan_loss_pushes_nothing(interrupted, tmp_path, capsys):
  output_dir = interrupted.output_dir
  served, blessings = _served(output_dir), _blessings(output_dir)
  newest = os.path.join(output_dir, 'serving', served[-1])
  before = _predictions(newest)
  settings = tmp_path / 'diverging.yaml'
  # Adam at 1e38 overflows the head's weights: the loss is NaN at once.
  settings.write_text(SETTINGS + '  phase1_learning_rate: 1.0e+38\n')
  # The Trainer's divergence guard (modules/phases.py) stops the run: exit 3,
  # as when the gate holds.
  assert (
    cli.main(['run', '--config', str(settings), '--output-dir', output_dir])
    == cli.EXIT_NOT_BLESSED
  )
  err = capsys.readouterr().err
  assert 'training diverged, the loss became nan' in err, err
  assert 'nothing was pushed' in err
  states = _last_run_states(output_dir)
  assert states['Trainer'] == metadata_store_pb2.Execution.FAILED, states
  assert 'Evaluator' not in states and 'Pusher' not in states, states
  assert _served(output_dir) == served
  assert _blessings(output_dir) == blessings
  assert _predictions(newest) == before


@pytest.mark.reliability('gate under faults')
def test_empty_eval_split_blesses_nothing(interrupted, tmp_path):
  output_dir = interrupted.output_dir
  served, blessings = _served(output_dir), _blessings(output_dir)
  data = tmp_path / 'data'
  for name in ('cat/0.jpg', 'cat/1.jpg', 'dog/0.jpg', 'dog/1.jpg'):
    (data / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(_demo_image(), data / name)  # All four hash to train.
  config = settings_lib.PipelineConfig(
    data_root=str(data),
    output_dir=output_dir,
    accuracy_threshold=0.0,
    max_accuracy_drop=1.0,
    trainer=TRAINER,
  )
  with pytest.raises(
    ValueError,
    match=r'The eval split\(s\) got no images '
    f'under data root {data}: the model could not be '
    'evaluated, so it could not be blessed',
  ):
    local_runner.run(config)
  assert _served(output_dir) == served
  assert _blessings(output_dir) == blessings
  tf.saved_model.load(os.path.join(output_dir, 'serving', served[-1]))

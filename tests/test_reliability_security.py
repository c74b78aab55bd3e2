"""Reliability, security: nothing from data or settings is unpickled or run.

A scan of the project's Python sources (not the tests) for deserializers and
evaluators that can run code, with an allowlist that gives each exception its
reason; and the settings loader refusing YAML tags that would run code.
Other security tests: manifest paths and symlinks cannot escape the data root
(tests/test_reliability_inputs.py), the pushed model loads with plain
`tf.saved_model.load` (tests/test_reliability_runs.py).
"""

import ast
import os
from typing import Dict, List, Tuple

import pytest

from pipeline import settings as settings_lib

pytestmark = pytest.mark.reliability('security')

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_FOLDERS = (
  'components',
  'modules',
  'pipeline',
  'kubeflow',
  'data',
  'benchmarks',
)
# Modules whose loaders run code found in the bytes they read.
UNSAFE_MODULES = {
  'pickle',
  'cPickle',
  '_pickle',
  'dill',
  'cloudpickle',
  'marshal',
  'shelve',
  'joblib',
  'jsonpickle',
}
UNSAFE_BUILTINS = {'eval', 'exec', 'compile', '__import__'}
# (file, finding) -> why it is acceptable.
ALLOWED: Dict[Tuple[str, str], str] = {
  (
    'modules/backbones.py',
    'call keras.models.load_model',
  ): 'the `file:<path>` backbone: a model file named in the settings by '
  'whoever runs the pipeline, never one read from the data root. '
  '.keras files load in safe mode (no Lambda bytecode).',
}


def _dotted(node: ast.AST) -> str:
  if isinstance(node, ast.Name):
    return node.id
  if isinstance(node, ast.Attribute):
    return f'{_dotted(node.value)}.{node.attr}'
  return ''


def _keyword(call: ast.Call, name: str):
  return next((k.value for k in call.keywords if k.arg == name), None)


def findings(source: str) -> List[str]:
  """What in `source` could run code from the bytes it loads."""
  found = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      found += [
        f'import {a.name}'
        for a in node.names
        if a.name.split('.')[0] in UNSAFE_MODULES
      ]
    elif (
      isinstance(node, ast.ImportFrom)
      and node.module
      and (node.module.split('.')[0] in UNSAFE_MODULES)
    ):
      found.append(f'import {node.module}')
    elif isinstance(node, ast.Call):
      name = _dotted(node.func)
      last = name.rsplit('.', 1)[-1]
      if name in UNSAFE_BUILTINS:
        found.append(f'call {name}')
      elif name in ('yaml.load', 'yaml.load_all'):
        loader = _dotted(_keyword(node, 'Loader') or ast.Name(id=''))
        if not loader.endswith(('SafeLoader', 'CSafeLoader')):
          found.append(f'call {name} without SafeLoader')
      elif name in (
        'yaml.unsafe_load',
        'yaml.full_load',
        'yaml.full_load_all',
        'pandas.read_pickle',
        'pd.read_pickle',
        'torch.load',
        'os.system',
        'os.popen',
      ):
        found.append(f'call {name}')
      elif last == 'load' and name.split('.')[0] in ('np', 'numpy'):
        allow = _keyword(node, 'allow_pickle')
        if isinstance(allow, ast.Constant) and allow.value:
          found.append(f'call {name} with allow_pickle=True')
      elif last in ('load_model', 'model_from_json', 'model_from_yaml'):
        found.append(f'call {name}')
      elif name.startswith('subprocess.'):
        shell = _keyword(node, 'shell')
        if isinstance(shell, ast.Constant) and shell.value:
          found.append(f'call {name} with shell=True')
  return found


def _project_sources() -> List[str]:
  paths = []
  for folder in SOURCE_FOLDERS:
    for directory, _, names in os.walk(os.path.join(PROJECT_ROOT, folder)):
      paths += [
        os.path.relpath(os.path.join(directory, n), PROJECT_ROOT)
        for n in names
        if n.endswith('.py')
      ]
  return sorted(paths)


def test_the_scanner_finds_what_it_looks_for():
  source = (
    'import pickle\nfrom dill import loads\nimport yaml\n'
    'eval("1")\nexec("x = 1")\nyaml.load(f)\n'
    'yaml.load(f, Loader=yaml.SafeLoader)\nyaml.safe_load(f)\n'
    'np.load(p, allow_pickle=True)\nnp.load(p)\n'
    'keras.models.load_model(p)\nsubprocess.run(c, shell=True)\n'
    'subprocess.run(["ls"])\n'
  )
  assert findings(source) == [
    'import pickle',
    'import dill',
    'call eval',
    'call exec',
    'call yaml.load without SafeLoader',
    'call np.load with allow_pickle=True',
    'call keras.models.load_model',
    'call subprocess.run with shell=True',
  ]


def test_no_code_runs_from_loaded_bytes():
  sources = _project_sources()
  assert 'components/ingestion.py' in sources and len(sources) > 20
  found = {}
  for path in sources:
    with open(os.path.join(PROJECT_ROOT, path), encoding='utf-8') as f:
      for finding in findings(f.read()):
        found[(path, finding)] = ALLOWED.get((path, finding))
  unexplained = sorted(k for k, reason in found.items() if reason is None)
  assert not unexplained, f'unsafe loaders or evaluators: {unexplained}'
  stale = sorted(set(ALLOWED) - set(found))
  assert not stale, f'allowlist entries no longer needed: {stale}'
  print(f'scanned {len(sources)} files; allowed: {sorted(found)}')


def test_settings_yaml_cannot_run_code(tmp_path):
  marker = tmp_path / 'ran'
  settings = tmp_path / 'settings.yaml'
  settings.write_text(
    f'accuracy_threshold: !!python/object/apply:os.system ["touch {marker}"]\n'
  )
  with pytest.raises(settings_lib.ConfigError, match='is not valid YAML'):
    settings_lib.load_file(str(settings))
  assert not marker.exists()

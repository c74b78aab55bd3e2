"""The command of every compiled component: TFX's V2 entrypoint, fixed for KFP.

  python -m kubeflow.entrypoint --executor_class_path ... \\
      --json_serialized_invocation_args {{$}} \\
      --json_serialized_inputs_spec_args {...} [beam args]

KFP's driver hands a task each upstream artifact with an empty type,
`type: {instanceSchema: ""}`, on every 2.x release so far
(kubeflow/pipelines `backend/src/v2/metadata/client.go`:
`GetOutputArtifactsByExecutionId` sets `Schema: "" // TODO(Bobgy): figure
out how to get schema`, which `OutputArtifact.ToRuntimeArtifact` writes into
the type). TFX 1.16's entrypoint takes the artifact's class from that schema
(`kubeflow_v2_entrypoint_utils._parse_raw_artifact`) and fails: with
`instanceSchema: ""`, `AttributeError: 'NoneType' object has no attribute
'get'`; with no type, `UnboundLocalError` (tensorflow/tfx#7768).

The compiled container also gets the component's inputs spec (schema 2.1),
which declares each input artifact's type. This module puts that type back
wherever the driver left it empty, then runs TFX's
`kubeflow_v2_run_executor`. Unlike TFX's own `__main__`, it gives TFX's flag
parser the arguments without the program path, which TFX would otherwise
count as a Beam argument: a non-empty Beam argument list makes every Beam
component build an sdist of TFX for remote workers
(`dependency_utils.make_beam_dependency_flags`), needless for the
DirectRunner in the pod.

Object stores as the CLI handles them (pipeline/object_store.py): when an
artifact URI or a string parameter of the invocation is on `s3://`, it
registers tensorflow-io's S3 filesystem and adds Beam's S3 flags (the
endpoint and region from the environment, which on Kubernetes a Secret
fills; `--beam_plugins` for Beam's worker processes). It ends through
`object_store.exit_process` with TFX's status, since tensorflow-io aborts
a process that used S3 at exit with code 134 (tensorflow/io#2039).
"""

import json
import os
import re
import sys
import traceback
from typing import Any, Dict, List, Mapping, Optional

from pipeline import object_store

INVOCATION_FLAG = '--json_serialized_invocation_args'
INPUTS_SPEC_FLAG = '--json_serialized_inputs_spec_args'


def restore_input_types(
  executor_input: Dict[str, Any], inputs_spec: Dict[str, Any]
) -> Dict[str, Any]:
  """`executor_input` (JSON) with each untyped input artifact's declared type.

  Raises:
    ValueError: An input artifact has no type and the spec declares none.
  """
  declared = inputs_spec.get('artifacts', {})
  for key, artifact_list in (
    executor_input.get('inputs', {}).get('artifacts', {}).items()
  ):
    for artifact in artifact_list.get('artifacts', []):
      kind = artifact.get('type') or {}
      if kind.get('instanceSchema') or kind.get('schemaTitle'):
        continue
      if 'artifactType' not in declared.get(key, {}):
        raise ValueError(
          f'Input artifact {key!r} came without a type and the component '
          'declares none: compile the pipeline with schema 2.1.'
        )
      artifact['type'] = dict(declared[key]['artifactType'])
  return executor_input


def _flag_index(argv: List[str], flag: str) -> Optional[int]:
  """Where `flag`'s value is in `argv` (`--flag value` or `--flag=value`)."""
  for i, word in enumerate(argv):
    if word == flag and i + 1 < len(argv):
      return i + 1
    if word.startswith(flag + '='):
      return i
  return None


def _flag_value(argv: List[str], flag: str) -> str:
  word = argv[_flag_index(argv, flag)]
  return word.split('=', 1)[1] if word.startswith(flag + '=') else word


def fix_argv(argv: List[str]) -> List[str]:
  """The command line with the invocation's input types restored."""
  argv = list(argv)
  index = _flag_index(argv, INVOCATION_FLAG)
  if index is None or _flag_index(argv, INPUTS_SPEC_FLAG) is None:
    return argv
  fixed = json.dumps(
    restore_input_types(
      json.loads(_flag_value(argv, INVOCATION_FLAG)),
      json.loads(_flag_value(argv, INPUTS_SPEC_FLAG)),
    )
  )
  argv[index] = (
    f'{INVOCATION_FLAG}={fixed}'
    if argv[index].startswith(INVOCATION_FLAG + '=')
    else fixed
  )
  return argv


_URI = re.compile(r'[a-z][a-z0-9+.-]*://[^\s"\\]+')


def invocation_uris(argv: List[str]) -> List[str]:
  """The URIs of the invocation in `argv`: its input and output artifacts',
  and those in its string parameters (a Pusher's push destination is JSON)."""
  if _flag_index(argv, INVOCATION_FLAG) is None:
    return []
  invocation = json.loads(_flag_value(argv, INVOCATION_FLAG))
  inputs = invocation.get('inputs', {})
  uris = [
    artifact.get('uri', '')
    for side in (inputs, invocation.get('outputs', {}))
    for artifact_list in side.get('artifacts', {}).values()
    for artifact in artifact_list.get('artifacts', [])
  ]
  for value in inputs.get('parameterValues', {}).values():
    if isinstance(value, str):
      uris += _URI.findall(value)
  return [uri for uri in uris if uri]


def add_beam_flags(
  argv: List[str], uris: List[str], environ: Mapping[str, str] = os.environ
) -> List[str]:
  """`argv` and the Beam flags `object_store.beam_args` gives for `uris`,
  but for those the compiled command already sets."""
  given = {word.split('=', 1)[0] for word in argv if word.startswith('--')}
  return list(argv) + [
    flag
    for flag in object_store.beam_args(*uris, environ=environ)
    if flag.split('=', 1)[0] not in given
  ]


def main() -> None:
  # Imported here: TFX and TensorFlow load in the pod only.
  from absl import app
  from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_run_executor

  sys.argv = fix_argv(sys.argv)
  uris = invocation_uris(sys.argv)
  object_store.register(*uris)
  sys.argv = add_beam_flags(sys.argv, uris)
  try:
    app.run(
      kubeflow_v2_run_executor.main,
      flags_parser=lambda argv: parse_flags(argv[1:]),
    )
    status = 0
  except SystemExit as e:  # app.run ends with sys.exit.
    status = _exit_status(e.code)
  except BaseException:  # Reported; the pod fails.
    traceback.print_exc()
    status = 1
  object_store.exit_process(status)


def _exit_status(code) -> int:
  """The status `sys.exit(code)` gives a process."""
  if code is None:
    return 0
  if isinstance(code, int):
    return code
  print(code, file=sys.stderr)
  return 1


def parse_flags(args: List[str]):
  """TFX's V2 entrypoint flags and the Beam arguments, from `args`."""
  from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_run_executor

  return kubeflow_v2_run_executor._parse_flags(args)


if __name__ == '__main__':
  main()

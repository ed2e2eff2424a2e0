"""One peer, one task, in its own process: ``python -m benchmarks.worker SPEC.json``.

SPEC.json names the peer, the task ('check' or 'time') and its inputs; the result (a JSON
object with ``status`` 'ok' or 'skipped') is written to ``spec['result']``. A peer that
cannot run here raises :class:`benchmarks.common.Skip` with one line saying why; any other
exception is a failure (non-zero exit, traceback on stderr). A peer on MPI ranks
(``mpiexec -n R python -m benchmarks.worker SPEC.json``) reports from rank 0.
"""

import importlib
import json
import sys

from .common import Skip, write_json
from .peers import PEERS, base_peer


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as f:
        spec = json.load(f)
    module, _ = PEERS[base_peer(spec["peer"])[0]]
    tasks = importlib.import_module(module).TASKS
    try:
        res = tasks[spec["task"]](spec)
    except Skip as why:
        res = {"status": "skipped", "reason": str(why)}
    if res is None:                     # a rank other than 0 of a peer on MPI ranks: rank 0 reports
        return 0
    res.setdefault("peer", spec["peer"])
    write_json(spec["result"], res)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Puts the README's DAG, exactly as printed there, into the test DAG bundle.

Airflow's dag.test() runs DAGs of a bundle, so the README's snippet is executed from this file.
"""

from __future__ import annotations

import linecache
import re
from pathlib import Path

README = Path(__file__).parents[2] / "README.md"
(_SOURCE, *_) = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
# The snippet's lines stand for this file's, so that ``@task.ray`` reads its function's source from them
# (an entry without a modification time is one ``linecache.checkcache`` keeps).
linecache.cache[__file__] = (len(_SOURCE), None, _SOURCE.splitlines(keepends=True), __file__)
_namespace: dict = {"__name__": __name__}
exec(compile(_SOURCE, __file__, "exec"), _namespace)  # this file is where the DAG is defined
dag = _namespace["dag"]

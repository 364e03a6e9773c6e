"""Puts the README's DAG, exactly as printed there, into the test DAG bundle.

Airflow's dag.test() runs DAGs of a bundle, so the README's snippet is executed from this file.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).parents[2] / "README.md"
(_SOURCE, *_) = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
_namespace: dict = {}
exec(compile(_SOURCE, __file__, "exec"), _namespace)  # this file is where the DAG is defined
dag = _namespace["dag"]

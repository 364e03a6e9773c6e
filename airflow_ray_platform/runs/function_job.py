"""A plain Python function as a Ray job's driver: what ``@task.ray`` submits.

The function's own source is taken through :mod:`ast` (its ``@task.ray`` decorator dropped by its place
in the syntax tree, never by a pattern over the text) and checked when the DAG is parsed: a lambda, a
coroutine, another decorator, a closure, or a name it takes from its module (which the job will not
have) is an error naming what to change. At run
time the source, the call's arguments and a few lines that hand the return value back
(:mod:`~airflow_ray_platform.spec.results`) become a script carried in the job's ``runtime_env`` (an
environment variable, compressed), and the entrypoint is a fixed one-liner that runs it: nothing the user
passes ever reaches a shell, and the script is the same on every backend.

Arguments are JSON by default. ``serializer="cloudpickle"`` (or ``"pickle"``) pickles them instead, for
values JSON cannot carry; the return value is always JSON, so nothing a job produces is ever unpickled in
an Airflow worker.
"""

from __future__ import annotations

import ast
import base64
import builtins
import enum
import importlib
import inspect
import json
import symtable
import textwrap
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from airflow_ray_platform.spec.models import JobConfigurationError
from airflow_ray_platform.spec.results import RESULT_LIMIT_BYTES, RESULT_MARKER

#: The environment variable that carries the driver script to the job.
DRIVER_VARIABLE = "AIRFLOW_RAY_TASK_DRIVER"
#: Runs the script: one shell word per argument, safe through every shell and ``ray job submit`` on the way.
DRIVER_ENTRYPOINT = "python -c"
DRIVER_BOOTSTRAP = f"import base64, os, zlib; exec(zlib.decompress(base64.b64decode(os.environ['{DRIVER_VARIABLE}'])))"
#: The largest driver (compressed, base64) an environment variable carries on Linux, with room to spare.
DRIVER_LIMIT_BYTES = 96 * 1024
#: The driver never evaluates annotations: the types a DAG file imports are not the job's.
FUTURE = "from __future__ import annotations\n"
#: Airflow context values a function may take by name: plain text, so they reach the job as they are.
CONTEXT_PARAMETERS = frozenset(
    {"ds", "ds_nodash", "ts", "ts_nodash", "run_id", "logical_date", "data_interval_start", "data_interval_end"}
)
_AIRFLOW_CONTEXT = frozenset(
    {"ti", "task_instance", "dag", "dag_run", "task", "conf", "macros", "params", "var", "conn", "outlets", "inlets"}
)


class Serializer(enum.StrEnum):
    """How a function's arguments travel to the job (its return value is always JSON)."""

    JSON = "json"
    PICKLE = "pickle"
    CLOUDPICKLE = "cloudpickle"

    @property
    def module(self) -> str:
        """The module that pickles (Ray's own cloudpickle: on every node Ray runs on)."""
        return {Serializer.PICKLE: "pickle", Serializer.CLOUDPICKLE: "ray.cloudpickle"}[self]


@dataclass(frozen=True)
class CapturedFunction:
    """A function's name, its source without its decorator, and the context values it takes by name."""

    name: str
    source: str
    context_parameters: tuple[str, ...]


def _problem(function: Callable[..., Any], rule: str) -> JobConfigurationError:
    name = getattr(function, "__qualname__", repr(function))
    return JobConfigurationError(f"@task.ray: {name}: {rule}")


def capture_function(function: Callable[..., Any]) -> CapturedFunction:
    """The function as a job will run it, or a :class:`JobConfigurationError` saying what stops it."""
    if getattr(function, "__name__", "") == "<lambda>":
        raise _problem(function, "a lambda has no source of its own to run; write a def")
    if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
        raise _problem(
            function, "a coroutine cannot be a Ray job's driver; write a plain def (Ray runs it in parallel)"
        )
    target = inspect.unwrap(function)  # another decorator's wrapper: its source shows the decorator
    if not inspect.isfunction(target):
        raise _problem(function, f"a {type(target).__name__} is not a plain def statement")
    free = target.__code__.co_freevars
    if free:
        raise _problem(
            function,
            f"it closes over {sorted(free)} from the function around it, which the job will not have; define "
            "the function at module level and pass those values as arguments",
        )
    try:
        source = textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError) as error:
        raise _problem(function, f"its source cannot be read ({error})") from None
    tree = ast.parse(source)
    node = tree.body[0] if tree.body else None
    if not isinstance(node, ast.FunctionDef) or node.name != function.__name__:
        raise _problem(function, "its source is not a plain def statement")
    others = [ast.unparse(decorator) for decorator in node.decorator_list if not _is_task_ray(decorator)]
    if others:
        raise _problem(
            function,
            f"it has other decorators ({', '.join(others)}) that the job would not apply; call them inside the "
            "function instead",
        )
    lines = source.splitlines(keepends=True)
    body = "".join(lines[node.lineno - 1 :])  # from the def line: the decorator is dropped, nothing else
    _check_module_names(function, body)
    parameters = inspect.signature(function).parameters
    context = tuple(name for name in parameters if name in CONTEXT_PARAMETERS)
    unsupported = sorted(name for name in parameters if name in _AIRFLOW_CONTEXT)
    if unsupported:
        raise _problem(
            function,
            f"parameter(s) {unsupported} would be Airflow objects, which cannot reach a Ray job; pass what the job "
            f"needs as arguments (context values it may take by name: {sorted(CONTEXT_PARAMETERS)})",
        )
    return CapturedFunction(function.__name__, body, context)


def _is_task_ray(decorator: ast.expr) -> bool:
    """``@task.ray``, ``@task.ray(...)`` or ``@ray_task(...)``: the decorator the job leaves out."""
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return (isinstance(target, ast.Attribute) and target.attr == "ray") or (
        isinstance(target, ast.Name) and target.id == "ray_task"
    )


def _check_module_names(function: Callable[..., Any], body: str) -> None:
    """Refuse a function that uses names of its module (imports, constants, helpers) the job lacks."""
    table = symtable.symtable(FUTURE + body, "<function>", "exec")
    used = {  # the defaults of its parameters, evaluated where it is defined
        name
        for name in table.get_identifiers()
        if table.lookup(name).is_referenced() and not table.lookup(name).is_assigned()
    }
    pending = list(table.get_children())
    while pending:
        scope = pending.pop()
        used |= {name for name in scope.get_identifiers() if scope.lookup(name).is_global()}
        pending += scope.get_children()
    missing = sorted(used - set(dir(builtins)) - {function.__name__})
    if missing:
        raise _problem(
            function,
            f"it uses {missing} from its module, which the Ray job will not have; import or define them inside "
            "the function (modules shipped with runtime_env's working_dir or py_modules import as usual), or "
            "pass them as arguments",
        )


def _plain(value: Any) -> Any:
    """A context value as the job gets it: dates as ISO text."""
    return value.isoformat() if isinstance(value, date | datetime) else value


def encode_arguments(
    serializer: Serializer, args: Sequence[Any], kwargs: Mapping[str, Any], where: str = "@task.ray"
) -> str:
    """The call's arguments as the driver decodes them: JSON text, or base64 of a pickle."""
    payload = {"args": list(args), "kwargs": dict(kwargs)}
    if serializer == Serializer.JSON:
        try:
            return json.dumps(payload, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise JobConfigurationError(
                f"{where}: an argument is not JSON ({error}); pass JSON values, or choose serializer='cloudpickle'"
            ) from None
    return base64.b64encode(importlib.import_module(serializer.module).dumps(payload)).decode()


def driver_script(
    captured: CapturedFunction,
    serializer: Serializer,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    context: Mapping[str, Any],
    filename: str,
) -> str:
    """The job's driver: the function, its call with these arguments, and its return value handed back."""
    values = {**{name: _plain(context.get(name)) for name in captured.context_parameters}, **kwargs}
    arguments = encode_arguments(serializer, args, values)
    if serializer == Serializer.JSON:
        load = f"json.loads({arguments!r})"
    else:
        load = f"importlib.import_module({serializer.module!r}).loads(base64.b64decode({arguments!r}))"
    source = FUTURE + captured.source
    return textwrap.dedent(
        f"""\
        import base64, importlib, json, linecache
        source, filename = {source!r}, {filename!r}
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)  # tracebacks show it
        namespace = {{"__name__": "__main__"}}
        exec(compile(source, filename, "exec"), namespace)
        call = {load}
        try:
            value = namespace[{captured.name!r}](*call["args"], **call["kwargs"])
        except Exception as error:  # printed from the function's frame on, with its source lines
            import sys, traceback
            traceback.print_exception(type(error), error, error.__traceback__.tb_next)
            sys.exit(1)
        try:
            text = json.dumps(value, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as error:
            raise TypeError(f"@task.ray: {captured.name} returned a value that is not JSON ({{error}})") from None
        if len(text.encode()) > {RESULT_LIMIT_BYTES}:
            raise ValueError(
                f"@task.ray: {captured.name} returned {{len(text.encode())}} bytes of JSON, over the limit of "
                "{RESULT_LIMIT_BYTES} bytes: write large data to storage and return its location"
            )
        print({RESULT_MARKER!r} + text, flush=True)
        """
    )


def driver_job(job: Mapping[str, Any], script: str) -> dict[str, Any]:
    """The ``job`` section that runs ``script`` as its driver, from the user's section (resources,
    runtime_env, timeout) without an entrypoint."""
    for field in ("entrypoint", "args"):
        if field in job:
            raise JobConfigurationError(
                f"job_configuration.job.{field}: @task.ray runs the decorated function as the job's driver; "
                f"leave {field} out"
            )
    encoded = base64.b64encode(zlib.compress(script.encode(), 9)).decode()
    if len(encoded) > DRIVER_LIMIT_BYTES:
        raise JobConfigurationError(
            f"@task.ray: the function and its arguments take {len(encoded)} bytes compressed, over the limit of "
            f"{DRIVER_LIMIT_BYTES}: pass large data through storage (a path or URI as the argument)"
        )
    runtime_env = dict(job.get("runtime_env") or {})
    env_vars = dict(runtime_env.get("env_vars") or {})
    env_vars[DRIVER_VARIABLE] = encoded
    runtime_env["env_vars"] = env_vars
    return {**job, "entrypoint": DRIVER_ENTRYPOINT, "args": [DRIVER_BOOTSTRAP], "runtime_env": runtime_env}

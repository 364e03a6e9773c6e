"""Airflow connections, found the way Airflow finds them, without importing Airflow where it can.

Inside a process that runs Airflow (a worker, the triggerer, the API server), a connection is Airflow's
own (``BaseHook.get_connection``: its secrets backends, then the API or the metadata database). Outside
one (the ``airflow-ray`` CLI, a notebook), Airflow's Task SDK searches a custom secrets backend
(``[secrets] backend``) and then the ``AIRFLOW_CONN_<ID>`` environment variables, never the metadata
database. Importing Airflow costs seconds, which a command answering in one cannot spend, so here the
same order is followed with Airflow imported only where it has to be: a configured secrets backend is
asked through Airflow; an environment variable (JSON or URI) is read here, as Airflow parses it.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from airflow_ray_platform import settings

#: Airflow's query key that carries a URI connection's extra as JSON.
URI_EXTRA_KEY = "__extra__"


class ConnectionNotFoundError(LookupError):
    """No connection of that id in the environment, the secrets backends or the metadata database."""


@dataclass(frozen=True)
class ConnectionFields:
    """The fields of an Airflow connection the platform reads (whatever found it)."""

    conn_id: str
    conn_type: str | None = None
    host: str | None = None
    port: int | None = None
    schema: str | None = None
    login: str | None = None
    password: str | None = field(default=None, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)
    #: Airflow's own connection object, when Airflow found it (its ``get_uri()`` is Airflow's to spell).
    airflow_connection: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, connection: Any) -> ConnectionFields:
        """Airflow's connection object, as fields."""
        return cls(
            connection.conn_id,
            connection.conn_type,
            connection.host or None,
            connection.port,
            connection.schema or None,
            connection.login or None,
            connection.password or None,
            dict(connection.extra_dejson),
            connection,
        )

    def airflow_uri(self) -> str:
        """Airflow's own URI of the connection (Airflow spells each type's; imported here if it was not)."""
        return (self.airflow_connection or _from_airflow(self.conn_id).airflow_connection).get_uri()

    @classmethod
    def from_environment_value(cls, conn_id: str, value: str) -> ConnectionFields:
        """``AIRFLOW_CONN_<ID>``'s value, JSON or URI, read as Airflow reads it."""
        if value.lstrip().startswith("{"):
            fields = json.loads(value)
            extra = fields.get("extra") or {}
            port = fields.get("port")
            return cls(
                conn_id,
                _conn_type(fields.get("conn_type")),
                fields.get("host") or None,
                int(port) if port else None,
                fields.get("schema") or None,
                fields.get("login") or None,
                fields.get("password") or None,
                json.loads(extra) if isinstance(extra, str) else dict(extra),
            )
        return cls._from_uri(conn_id, value)

    @classmethod
    def _from_uri(cls, conn_id: str, uri: str) -> ConnectionFields:
        """Airflow's URI form: ``type://login:password@host:port/schema?key=value`` (or ``__extra__=<JSON>``);
        ``type://protocol://host`` keeps the protocol in the host."""
        if uri.count("://") > 2:
            raise ValueError(f"connection {conn_id!r}: not a valid connection URI")
        scheme = urlsplit(uri).scheme
        host_with_protocol = uri.count("://") == 2
        rest = uri.replace(f"{scheme}://", "" if host_with_protocol else "//")
        if host_with_protocol and ("@" in rest.split("://", 1)[0] or ":" in rest.split("://", 1)[0]):
            raise ValueError(f"connection {conn_id!r}: not a valid connection URI")
        parts = urlsplit(rest)
        host = unquote(parts.hostname or "")
        if "/" in host:  # a host that is a path: as written, not lower-cased
            host = unquote(parts.netloc.rsplit("@", 1)[-1].split(":", 1)[0])
        if host and host_with_protocol:
            host = f"{parts.scheme}://{host}"
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        extra = json.loads(query[URI_EXTRA_KEY]) if URI_EXTRA_KEY in query else query
        return cls(
            conn_id,
            _conn_type(scheme),
            host or None,
            parts.port,
            unquote(parts.path[1:]) or None,
            unquote(parts.username) if parts.username else None,
            unquote(parts.password) if parts.password else None,
            extra,
        )


def _conn_type(conn_type: str | None) -> str | None:
    """Airflow's spelling of a connection type (``postgresql`` is ``postgres``; ``-`` becomes ``_``)."""
    if conn_type == "postgresql":
        return "postgres"
    return conn_type.replace("-", "_") if conn_type else conn_type


def _from_airflow(conn_id: str) -> ConnectionFields:
    from airflow.exceptions import AirflowNotFoundException
    from airflow.sdk.bases.hook import BaseHook

    try:
        return ConnectionFields.of(BaseHook.get_connection(conn_id))
    except AirflowNotFoundException as error:
        raise ConnectionNotFoundError(str(error)) from None


def get_connection(conn_id: str) -> ConnectionFields:
    """The connection ``conn_id`` (see the module's doc); ConnectionNotFoundError when there is none."""
    if "airflow" in sys.modules or settings.custom_secrets_backend():
        return _from_airflow(conn_id)
    value = os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}")
    if value is None:
        raise ConnectionNotFoundError(f"The conn_id `{conn_id}` isn't defined")
    return ConnectionFields.from_environment_value(conn_id, value)

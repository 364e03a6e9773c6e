"""Kubernetes resource quantities (``"500m"``, ``"4Gi"``): their text form and their value.

The same grammar as the Kubernetes client's ``parse_quantity``, without importing that client (seconds on
every DAG parse); the cluster models validate with it and the backends sum requested resources with it.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from functools import lru_cache

#: The text a Kubernetes quantity may be (the CRDs' ``x-kubernetes-int-or-string`` pattern): stricter
#: than the Python client's parser, which also takes ``1_000`` or ``"2 "``, which KubeRay's CRD refuses.
QUANTITY_TEXT = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

#: Kubernetes quantity prefixes -> power: of 1000 alone (``500m``, ``2k``), of 1024 before ``i`` (``4Gi``).
_QUANTITY_POWERS = {"n": -3, "u": -2, "m": -1, "K": 1, "k": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}


def parse_quantity(quantity: object) -> Decimal:
    """The value of a Kubernetes quantity (``"500m"`` -> 0.5, ``"4Gi"`` -> 4294967296), as a Decimal.

    The grammar of the Kubernetes Python client's ``kubernetes.utils.quantity.parse_quantity``, whose
    import loads the whole Kubernetes client (seconds, on every DAG parse and trigger load); a test
    checks that both agree. Raises ValueError on anything else.
    """
    if isinstance(quantity, int | float | Decimal):
        return Decimal(quantity)
    return _parse_quantity_text(str(quantity))


@lru_cache(maxsize=4096)
def _parse_quantity_text(text: str) -> Decimal:
    """Cached: quantities repeat across thousands of objects (a garbage-collection sweep reads them all)."""
    if len(text) >= 2 and text[-1] == "i" and text[-2] in _QUANTITY_POWERS:
        number, prefix, base = text[:-2], text[-2], 1024
        if prefix == "k":  # Kubernetes spells the binary kilo "Ki" only
            raise ValueError(f"{text} has unknown suffix")
    elif text[-1:] in _QUANTITY_POWERS:
        number, prefix, base = text[:-1], text[-1], 1000
    else:
        number, prefix, base = text, "", 1
    try:
        value = Decimal(number)
    except InvalidOperation:
        raise ValueError(f"Invalid number format: {number}") from None
    return value * (base ** Decimal(_QUANTITY_POWERS[prefix])) if prefix else value

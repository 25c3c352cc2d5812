"""Counting fuzz outcomes, shared by the fuzz tests and the long form (bench/reliability.py).

Every fuzz case ends in one outcome: ``typed`` (a SlimkitError with a message), ``accepted`` (the input was
taken and the result checked against an independent oracle), ``traceback`` (any other exception: a bug) or
``wrong`` (accepted, but the result differs from the oracle: a bug). :func:`outcome` records it in the JSON
lines file named by ``SLIMKIT_FUZZ_LOG`` (when set) and re-raises the bugs, so the test fails too.
:func:`examples` is the number of hypothesis cases of one fuzzer: ``default`` in ``make test``,
``SLIMKIT_FUZZ_<NAME>`` in the long form."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

from hypothesis import HealthCheck, settings

from slimkit.errors import SlimkitError


def examples(name: str, default: int) -> int:
    return int(os.environ.get(f"SLIMKIT_FUZZ_{name.upper()}", default))


def fuzz_settings(name: str, default: int) -> settings:
    return settings(max_examples=examples(name, default), deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


def record(loader: str, result: str) -> None:
    path = os.environ.get("SLIMKIT_FUZZ_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"loader": loader, "outcome": result}) + "\n")


@contextlib.contextmanager
def outcome(loader: str) -> Iterator[None]:
    """Run one case: a SlimkitError (with a one-paragraph message) is ``typed``; the body's own assertions
    that check an accepted result count as ``wrong``; any other exception is a ``traceback``."""
    try:
        yield
    except SlimkitError as exc:
        text = str(exc)
        if not text or "Traceback" in text or len(text) > 4000:
            record(loader, "wrong")
            raise AssertionError(f"typed error without a one-paragraph message: {text[:500]!r}") from exc
        record(loader, "typed")
        return
    except AssertionError:
        record(loader, "wrong")
        raise
    except Exception:
        record(loader, "traceback")
        raise
    record(loader, "accepted")

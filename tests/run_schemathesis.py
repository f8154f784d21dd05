"""Schemathesis's command line, with `ast.parse` made one call at a time.

CPython 3.11 counts the AST constructor's recursion depth in state the whole interpreter
shares: when threads switch inside a parse (in a finaliser the garbage collector runs) and the
other thread parses too, one of them fails with "SystemError: AST constructor recursion depth
mismatch" (python/cpython#106905; 18 of 120 parses by four threads here). Schemathesis's
`--workers` are threads, and Hypothesis parses a module's source to describe a lambda: a clean
CI run lost `test_fuzz_api` to it once.
"""

import ast
import runpy
import threading
from typing import Any

_parse = ast.parse
_one_at_a_time = threading.Lock()


def _parse_alone(*args: Any, **kwargs: Any) -> Any:
    with _one_at_a_time:
        return _parse(*args, **kwargs)


ast.parse = _parse_alone
runpy.run_module("schemathesis.cli", run_name="__main__", alter_sys=True)

"""Sandboxed Jinja2 templates and expressions found in node configuration.

Every string in a node's configuration may be a template (``"Hello {{ inputs.name }}"``).
Some keys hold *expressions* instead (a condition's ``expression``, a loop's ``condition``),
written bare (``inputs.score > 0.5``) or wrapped (``{{ inputs.score > 0.5 }}``).

Rules users notice:

* A string that is exactly one ``{{ expression }}`` keeps the expression's Python type
  (``"{{ inputs.count }}"`` gives ``3``, not ``"3"``); any other template renders to a string,
  where objects, lists, booleans and None are written as JSON (``true``, ``null``, ``[1, 2]``).
* A missing name or attribute is always an error naming the field and what is missing;
  nothing silently renders as an empty string.
* For a mapping, ``a.items`` means the key ``"items"`` when the mapping has one, not ``dict.items``.
* Templates run in Jinja's immutable sandbox: no private attributes, no mutation of lists/dicts.
  Every render has a CPU and size budget (``budget``, ``bounds``): a loop that runs too long
  or a value too large to build fails the field with a message naming the limit.

* Every value is a pure function of the run (``determinism``): ``lipsum`` and the
  ``random`` filter are refused at compile time, and no object whose text holds its memory
  address is written as text.

The modules, from the bottom up: ``errors``; ``determinism`` (what is refused because it is
not a pure function of the run); ``sandbox`` (the Jinja environment, the
``env`` namespace, the names every template sees); ``syntax`` (what is a template or an
expression, parsing, syntax errors in user words); ``render`` (evaluation at run time) with
``explain`` (missing values in user words); ``analysis`` (what a string reads, for the
compiler) with its fast path ``token_reader``.

This package is the bottom layer of ``builder``: pure, no Prefect/FastAPI imports.
"""

from builder.templates.analysis import TemplateRefs, TemplateShapeLimits, find_references
from builder.templates.budget import TemplateBudgetError, TemplateLimits
from builder.templates.errors import TemplateError, TemplateRenderError
from builder.templates.render import evaluate_expression, render_value
from builder.templates.sandbox import JINJA_GLOBALS, NAMESPACES, EnvNamespace, get_environment
from builder.templates.syntax import is_template

__all__ = [
    "JINJA_GLOBALS",
    "NAMESPACES",
    "EnvNamespace",
    "TemplateBudgetError",
    "TemplateError",
    "TemplateLimits",
    "TemplateRefs",
    "TemplateRenderError",
    "TemplateShapeLimits",
    "evaluate_expression",
    "find_references",
    "get_environment",
    "is_template",
    "render_value",
]

"""Jinja2 templates of the checkout (mkosi/, appdisk/): one environment recipe, and rendering in
which anything a template can do wrong is one BadInput naming the template (exit 2).

The environment is sandboxed: a template reaches only the values it is given (no attribute
walk to Python internals, no 10**10-element ranges).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import jinja2
import jinja2.sandbox

from .errors import BadInput


# Whitespace control per template folder of the checkout, fixed so that a project's templates keep
# rendering to the same bytes: mkosi/ drops the line a block tag stands on, appdisk/ keeps Jinja's default.
WHITESPACE = {"mkosi": {"trim_blocks": True, "lstrip_blocks": True}, "appdisk": {}}


def environment(folder: Path, source: str) -> jinja2.Environment:
    """Templates under `folder` (includes and imports resolve there), a folder below the checkout's
    `source` folder (a key of WHITESPACE); undefined values are errors."""
    return jinja2.sandbox.SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(folder), undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True, autoescape=False, **WHITESPACE[source])


@contextlib.contextmanager
def _template_errors(where: str, name: str) -> Iterator[None]:
    """What reading or parsing a template can raise, as one BadInput naming it."""
    try:
        yield
    except jinja2.TemplateSyntaxError as e:
        inner = f" (in {e.name})" if e.name and e.name != name else ""
        raise BadInput(where, f"template syntax error at line {e.lineno}{inner}: {e.message}") from None
    except jinja2.TemplateNotFound as e:
        raise BadInput(where, f"template includes {e.name!r}, which is not there") from None
    except UnicodeDecodeError as e:
        raise BadInput(where, f"not UTF-8 text (the template or one it includes, offset {e.start})") from None
    except RecursionError:
        raise BadInput(where, "template recurses without end or nests too deeply") from None


def render(env: jinja2.Environment, name: str, values: dict, where: str) -> str:
    """Render template `name` of env; `where` names it in errors (e.g. "mkosi/mkosi.conf.j2")."""
    with _template_errors(where, name):
        try:
            return env.get_template(name).render(values)
        except jinja2.UndefinedError as e:
            raise BadInput(where, f"template uses an undefined value: {e.message}",
                           "values: " + ", ".join(sorted(values))) from None
        except MemoryError:
            raise BadInput(where, "template needs more memory than there is") from None
        except (jinja2.TemplateSyntaxError, jinja2.TemplateNotFound, UnicodeDecodeError, RecursionError):
            raise
        except Exception as e:  # noqa: BLE001 -- whatever a template's expressions raise is the template's error
            raise BadInput(where, f"template fails while rendering: {type(e).__name__}: {str(e)[:200]}") from None


def check_syntax(env: jinja2.Environment, name: str, where: str) -> None:
    """Parse without rendering (for templates rendered only later in a build)."""
    with _template_errors(where, name):
        source, _, _ = env.loader.get_source(env, name)
        env.parse(source)

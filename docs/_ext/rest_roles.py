"""A Griffe extension for this site: reST markup in docstrings, as Markdown.

The docstrings are written for readers of the source and of ``help()``, in
reST's habits: ``:class:`~resilient_smtp.Clock``` roles, ``text::`` before an
indented example, ``.. versionadded::``.  mkdocstrings renders docstrings as
Markdown, where those show up literally.  This extension rewrites them when
the docs are built; the source is left as it is.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

# :class:`~a.b.C` -> `C`; :meth:`a.b.C.m` -> `a.b.C.m`; :func:`text <target>` -> `text`
_ROLE = re.compile(
    r":(?:py:)?(?:class|meth|func|data|attr|mod|exc|obj|const):`(~?)([^`<]+?)\s*(?:<[^`>]*>)?`"
)
_VERSION = re.compile(r"^(\s*)\.\. version(added|changed):: *(\S+)\s*$", re.MULTILINE)
_LITERAL = re.compile(r"::$", re.MULTILINE)


def _role(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2).strip()
    if short:
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def _version(match: re.Match[str]) -> str:
    indent, kind, version = match.groups()
    return f"{indent}*{kind.capitalize()} in version {version}.*"


def markdown(text: str) -> str:
    text = _ROLE.sub(_role, text)
    text = _VERSION.sub(_version, text)
    # "text::" introduces a literal block in reST; a lone "::" line says the same.
    return "\n".join(
        "" if line.strip() == "::" else _LITERAL.sub(":", line) for line in text.split("\n")
    )


class RestRoles(griffe.Extension):
    """Rewrite each object's docstring once, as it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)

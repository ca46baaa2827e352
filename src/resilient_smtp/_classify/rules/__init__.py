"""The built-in rule tables: generic rules, then one table per provider."""

from __future__ import annotations

from ..rule import Rule
from .generic import GENERIC_RULES
from .providers import PROVIDER_RULES

__all__ = ["BUILTIN_RULES"]

BUILTIN_RULES: tuple[Rule, ...] = (*PROVIDER_RULES, *GENERIC_RULES)

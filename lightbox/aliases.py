"""What a registry alias may be called: MLflow's rules, checked before anything is read or moved.

A promotion moves two aliases (the target and the one that remembers what it replaced): a name MLflow
refuses, checked only when the second is set, would leave the first moved. And two names MLflow gives a
meaning of its own are refused: ``latest`` always resolves to the newest version (a promotion to it would
read as done and move nothing), ``v<N>`` to version N.
"""

from __future__ import annotations

import re

MAX_ALIAS_LENGTH = 255  # MLflow's limit
_ALIAS = re.compile(r"[\w-]+")  # MLflow: alphanumerics, '_' and '-'
_VERSION_ALIAS = re.compile(r"[vV]\d+")


class BadAlias(ValueError):
    """An alias name the registry refuses or reads as something else; the message says which to use."""


def check_alias(alias: str) -> str:
    """``alias`` when MLflow would set it and read it back as that alias; BadAlias otherwise."""
    if not _ALIAS.fullmatch(alias):
        raise BadAlias(
            f"alias {alias!r} is not a valid name: use letters, digits, '_' and '-' (e.g. champion, staging)"
        )
    if len(alias) > MAX_ALIAS_LENGTH:
        raise BadAlias(f"alias {alias[:20]!r}... is {len(alias)} characters long: at most 255")
    if alias.lower() == "latest" or _VERSION_ALIAS.fullmatch(alias):
        raise BadAlias(
            f"alias {alias!r} is reserved by MLflow ('latest' is always the newest version, 'v<N>' version "
            "N): choose another name"
        )
    return alias

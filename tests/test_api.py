"""The public API: a sorted, complete __all__ and a version from the metadata."""

from __future__ import annotations

import importlib.metadata
import types

import resilient_smtp


def test_all_is_sorted() -> None:
    assert list(resilient_smtp.__all__) == sorted(resilient_smtp.__all__)


def test_all_is_complete() -> None:
    # Every public name defined in the package namespace is listed, and every
    # listed name exists.
    public = {
        name
        for name, value in vars(resilient_smtp).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"
    }
    assert public == set(resilient_smtp.__all__)


def test_all_names_resolve() -> None:
    for name in resilient_smtp.__all__:
        assert getattr(resilient_smtp, name) is not None


def test_version_comes_from_metadata() -> None:
    assert resilient_smtp.__version__ == importlib.metadata.version("resilient-smtp")


def test_package_is_typed() -> None:
    files = importlib.metadata.files("resilient-smtp") or []
    # An editable install lists the .pth; the source tree must carry py.typed.
    import pathlib

    root = pathlib.Path(resilient_smtp.__file__).parent
    assert (root / "py.typed").exists() or any(f.name == "py.typed" for f in files)

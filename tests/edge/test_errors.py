"""The error hierarchy: one root, builtin bases, stable reasons, the docstring tree."""

from __future__ import annotations

import edge.errors as errors


def _classes() -> list[type[errors.AstroEdgeError]]:
    return [getattr(errors, n) for n in errors.__all__]


def test_every_error_derives_from_the_root_and_a_builtin() -> None:
    """A caller can catch any astro-edge error as AstroEdgeError and as the natural builtin."""
    for cls in _classes():
        assert issubclass(cls, errors.AstroEdgeError)
        if cls is not errors.AstroEdgeError:
            assert issubclass(cls, (ValueError, OSError, RuntimeError)), cls


def test_reasons_are_unique_counter_keys() -> None:
    """Each class has its own reason, so counters never merge two kinds of failure."""
    reasons = [cls.reason for cls in _classes()]
    assert len(reasons) == len(set(reasons))


def test_every_class_is_drawn_in_the_module_docstring() -> None:
    """The tree in the docstring names every class, so it cannot go stale."""
    doc = errors.__doc__ or ""
    for cls in _classes():
        assert cls.__name__ in doc, cls.__name__


def test_where_prefixes_the_message() -> None:
    """The file or frame an error concerns leads its message."""
    exc = errors.ChecksumError("crc32c mismatch", where="series s1 frame 7")
    assert str(exc) == "series s1 frame 7: crc32c mismatch"
    assert exc.where == "series s1 frame 7"

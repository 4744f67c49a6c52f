"""The error hierarchy's helpers: one translation of OS errors for every module."""

from __future__ import annotations

import errno
import os

import pytest

from postoffice.core.errors import (
    PostOfficeError,
    StorageError,
    os_errors,
    translate_os_error,
)


class _DiskError(StorageError):
    """A service's own storage error."""


def test_translate_os_error_names_the_act_and_the_os_reason() -> None:
    exc = OSError(errno.EIO, os.strerror(errno.EIO), "/var/x")
    error = translate_os_error(exc, _DiskError, "fsync /var/x")
    assert type(error) is _DiskError
    assert str(error) == "cannot fsync /var/x: Input/output error"


def test_translate_os_error_without_a_reason_uses_the_message() -> None:
    error = translate_os_error(OSError("mapping failed"), _DiskError, "map /var/x")
    assert str(error) == "cannot map /var/x: mapping failed"


def test_os_errors_raises_the_class_it_is_given_from_the_os_error() -> None:
    cause = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
    with (
        pytest.raises(_DiskError, match=r"^cannot open /gone: No such file or directory$") as info,
        os_errors(_DiskError, "open /gone"),
    ):
        raise cause
    assert info.value.__cause__ is cause


def test_os_errors_lets_every_other_error_through() -> None:
    with pytest.raises(ValueError, match=r"^not an os error$"), os_errors(_DiskError, "x"):
        raise ValueError("not an os error")
    with pytest.raises(PostOfficeError, match=r"^ours$"), os_errors(_DiskError, "x"):
        raise PostOfficeError("ours")

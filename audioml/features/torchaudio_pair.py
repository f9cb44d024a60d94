"""torchaudio, loaded where audioml needs it: the Kaldi mel filters of the EfficientAT and AST
front ends, and torch-audiomentations' transforms.

``import torchaudio`` loads its compiled library, which is built against particular torch
releases; against another torch it fails with ``OSError: ... undefined symbol ...`` (or a
missing ``libc10_cuda.so`` for a CPU-only torch). :func:`require_torchaudio` turns that into
:class:`TorchaudioMismatch`, one line naming both versions and the pip command that installs a
matching torchaudio, which the commands end with exit status 2 (``audioml.entry``).
"""

from __future__ import annotations

import functools
import re
from importlib import metadata

from audioml.errors import UserError

__all__ = ["MIN_TORCH", "TORCHAUDIO", "TorchaudioMismatch", "matching_torchaudio_command", "mismatch_message",
           "require_torchaudio"]

#: The oldest torch audioml supports (pyproject.toml's lower bound): torchaudio 2.11.1 loads with
#: torch 2.13.0, 2.14.0 and 2.14.1, not with 2.11.0 or 2.12.1 (undefined symbol
#: ``torch_exception_get_what_without_backtrace``).
MIN_TORCH = (2, 13)
#: The torchaudio the pip command installs: constraints.txt's, which loads with every torch from
#: ``MIN_TORCH`` on that was tried (and promises later ones).
TORCHAUDIO = "2.11.1"
_PYTORCH_INDEX = "https://download.pytorch.org/whl"


class TorchaudioMismatch(UserError):
    """The installed torch and torchaudio do not load together; the message says what to install."""


def _installed(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _release(torch_version: str) -> tuple[int, ...]:
    """``(major, minor)`` of a version such as ``2.14.1+cu126``."""
    return tuple(int(part) for part in re.findall(r"\d+", torch_version.split("+", 1)[0])[:2])


def matching_torchaudio_command(torch_version: str) -> str:
    """The pip command that installs a torchaudio matching ``torch_version`` (a distribution
    version, ``2.14.1`` or ``2.14.1+cu126``): from the PyTorch index of that build (its local
    label: ``cpu``, ``cu126`` ...) when it has one, else from PyPI; below ``MIN_TORCH``, with
    a torch audioml supports."""
    index = f" --index-url {_PYTORCH_INDEX}/{torch_version.split('+', 1)[1]}" if "+" in torch_version else ""
    if _release(torch_version) < MIN_TORCH:
        return f'pip install "torch>={MIN_TORCH[0]}.{MIN_TORCH[1]}" "torchaudio=={TORCHAUDIO}"{index}'
    return f"pip install --force-reinstall --no-deps torchaudio=={TORCHAUDIO}{index}"


def mismatch_message(torch_version: str, torchaudio_version: str | None, error: BaseException) -> str:
    """One line: both versions, why torchaudio did not load (the innermost error, library paths
    cut to their file names), and ``matching_torchaudio_command``."""
    cause = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    reason = re.sub(r"\S*/([^/\s:]+\.so[.\d]*)", r"\1", reason)[:200]
    advice = ("install a matching torchaudio" if _release(torch_version) >= MIN_TORCH
              else f"audioml needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]}")
    advice = f"{advice}: {matching_torchaudio_command(torch_version)}"
    if torchaudio_version is None:
        return f"torchaudio is not installed ({reason}) with torch {torch_version}; {advice}"
    return f"torch {torch_version} and torchaudio {torchaudio_version} do not work together ({reason}); {advice}"


@functools.cache
def require_torchaudio() -> None:
    """Import torchaudio (its compiled library with it); raises :class:`TorchaudioMismatch` when
    it does not load with the installed torch, or is missing. Checked once per process."""
    try:
        import torchaudio.compliance.kaldi  # noqa: F401 - loads libtorchaudio and checks its CUDA build
    except Exception as error:  # a broken pair fails as OSError, RuntimeError or ImportError
        raise TorchaudioMismatch(mismatch_message(_installed("torch") or "(unknown)", _installed("torchaudio"),
                                                  error)) from error

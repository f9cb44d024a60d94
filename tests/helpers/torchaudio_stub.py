"""A ``torchaudio`` that does not load with the installed torch: a package whose import fails as
torchaudio 2.11.1's does against torch 2.12.1 (the text and the chain of ``OSError``s seen there),
with its own ``torchaudio-<version>.dist-info``, for a folder put first on the import path."""

from __future__ import annotations

from pathlib import Path

_INIT = '''import os

import torch  # the real package imports torch first, then loads its compiled library

_library = os.path.join(os.path.dirname(__file__), "lib", "libtorchaudio.so")
try:
    raise OSError(f"{_library}: undefined symbol: torch_exception_get_what_without_backtrace")
except OSError as error:
    raise OSError(f"Could not load this library: {_library}") from error
'''


def write_broken_torchaudio(folder: Path, version: str = "2.11.1") -> Path:
    """Write the package and its metadata into ``folder`` (created); returns ``folder``."""
    package = folder / "torchaudio"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(_INIT)
    info = folder / f"torchaudio-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torchaudio\nVersion: {version}\n")
    return folder

"""Image readers: one module a file format, each a :class:`Reader` in the registry here.

:func:`pneumoscan.data.decode.read_gray` and :func:`pneumoscan.data.decode.image_info` ask the registry which reader
takes a file (by its first bytes, then by its name's suffix), and discovery takes a file as an image when a registered
reader claims its suffix. A new format is one module with a :class:`Reader` subclass, registered with
:func:`register` (a built-in one below; a site's where it is imported); the built-in ones are
:mod:`.pillow` (JPEG, PNG) and :mod:`.dicom`, which share :mod:`.jpeg` (strict JPEG decoding).
"""

from __future__ import annotations

from . import dicom, pillow
from .base import (HEAD_BYTES, Reader, claiming, formats, media_types, one_of, plugin_readers, reader_for, register,
                   registered, suffixes, unregister)

__all__ = ["HEAD_BYTES", "Reader", "claiming", "formats", "media_types", "one_of", "plugin_readers", "reader_for",
           "register", "registered", "suffixes", "unregister"]

# The built-in readers, registered in the order a refusal lists them.
register(pillow.PillowReader())
register(dicom.DicomReader())

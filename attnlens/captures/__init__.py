"""The Capture: what was kept from one generation, its layout, saving and loading."""

from .io import CaptureFileError, load_capture, save_capture
from .layout import SEGMENTS, ItemLayout, Layout
from .result import Capture, NotCapturedError
from .session import CaptureError, capture

__all__ = [
    "SEGMENTS",
    "Capture",
    "CaptureError",
    "CaptureFileError",
    "ItemLayout",
    "Layout",
    "NotCapturedError",
    "capture",
    "load_capture",
    "save_capture",
]

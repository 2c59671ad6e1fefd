"""Box formats: how objects become target text, and how model text becomes objects again.

One module per format, each with its own ``render`` and ``parse`` (the round trip is the contract):

- ``qwen2``: Qwen2-VL grounding tokens on the 0-1000 grid (``<|object_ref_start|>NAME<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``).
- ``qwen2_5``: Qwen2.5-VL JSON ``[{"bbox_2d": [...], "label": ...}]`` in pixels of the image as the processor resized it.
- ``qwen3``: Qwen3-VL, the same JSON on the 0-1000 grid.

``base`` holds what they share (:class:`ParseResult`, labels, empty answers); this module the registry.
"""

from __future__ import annotations

from .base import (
    BOX_END,
    BOX_START,
    END_OF_TURN_RE,
    NO_OBJECTS,
    OBJECT_REF_END,
    OBJECT_REF_START,
    BoxFormat,
    ParseResult,
    normalize_label,
    says_no_objects,
)
from .qwen2 import Qwen2Format
from .qwen2_5 import Qwen2_5Format
from .qwen3 import Qwen3Format

__all__ = ["BOX_END", "BOX_FORMATS", "BOX_START", "END_OF_TURN_RE", "NO_OBJECTS", "OBJECT_REF_END", "OBJECT_REF_START", "BoxFormat",
           "ParseResult", "Qwen2Format", "Qwen2_5Format", "Qwen3Format", "get_box_format", "normalize_label", "parse_detections",
           "says_no_objects"]

BOX_FORMATS: dict[str, BoxFormat] = {f.name: f for f in (Qwen2Format(), Qwen2_5Format(), Qwen3Format())}


def get_box_format(name: str) -> BoxFormat:
    """The registered box format called ``name``."""
    try:
        return BOX_FORMATS[name]
    except KeyError:
        raise ValueError(f"Unknown box format {name!r}; choose one of {sorted(BOX_FORMATS)}.") from None


def parse_detections(
    text: str, *, width: int, height: int, box_format: str = "qwen2", input_size=None, categories=None
) -> dict:
    """Model text to ``{"boxes", "labels", "unparsed", "dropped", "unknown_labels"}`` in original pixels."""
    return get_box_format(box_format).parse(text, width, height, input_size, categories).to_dict()

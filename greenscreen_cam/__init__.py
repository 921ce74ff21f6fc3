"""greencam: a virtual green screen for video calls, powered by SAM 2.

Frames inside the program are ``numpy.ndarray`` of shape ``(H, W, 3)``, dtype
``uint8``, **RGB** order, unless a docstring says otherwise. Conversion to and
from OpenCV's BGR happens only at the edges (sources, file sinks, preview).
"""

__version__ = "0.1.0"

KEY_COLOR: tuple[int, int, int] = (0, 175, 57)
"""The default chroma key colour, RGB."""

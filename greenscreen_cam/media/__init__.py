"""Media: the frames that come in and go out (camera and file sources, virtual-camera and file sinks,
recording outputs, device listing, even frame sizes). Hands out Source/Sink classes and the device helpers."""

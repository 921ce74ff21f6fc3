"""The real-time link: ``greencam serve`` (SAM 2 on a GPU machine) and its clients."""

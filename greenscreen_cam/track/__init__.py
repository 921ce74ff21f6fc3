"""Tracking: the tracker interface and backend registry, SAM 2 models and checkpoints, prompts, automatic
selection, and the streaming, steady, batched and several-subject steps. Hands out Tracker, load_model and friends."""

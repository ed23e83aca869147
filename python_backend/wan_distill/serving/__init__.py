"""Serving descriptions that need no Triton import: the model repository spec (every config.pbtxt is rendered from it)."""

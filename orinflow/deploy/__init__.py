"""Jetson deployment: trtexec flags read from the model (traits, trtexec), the bundle, and its infer.py."""

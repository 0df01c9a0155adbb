"""The orinflow release (in run records, exported models and Jetson bundles)."""
VERSION = "0.1.0"

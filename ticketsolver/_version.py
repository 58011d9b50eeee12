"""The package version, in one place (read by the package root, the CLI, the service and the manifest)."""

__version__ = "0.1.0"

"""The package version (its own module, so that code below the package's top imports it freely)."""

__version__ = "0.2.0"

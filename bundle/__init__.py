"""LA LGE-MRI quality assessment: the custom components that the bundle's configs name by dotted path."""

__version__ = "0.14.0"  # = configs/metadata.json "version" (tests/test_configs.py checks)

"""MONAI Label tasks of the LA LGE-MRI QA bundle (see docs/monailabel.md)."""

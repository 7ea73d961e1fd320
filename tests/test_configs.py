"""Every config parses, every `_target_` it names imports, and the metadata is current."""

import glob
import json
import os

import pytest
import yaml
from monai.bundle import ConfigComponent, ConfigParser
from monai.utils import optional_import

import bundle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))


def _targets(node):
    if isinstance(node, dict):
        if isinstance(node.get("_target_"), str):
            yield node["_target_"]
        for v in node.values():
            yield from _targets(v)
    elif isinstance(node, list):
        for v in node:
            yield from _targets(v)


def test_there_are_configs():
    names = {os.path.basename(c) for c in CONFIGS}
    assert {"common.yaml", "train.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_target_imports(path):
    with open(path) as f:
        config = yaml.safe_load(f)
    targets = sorted(set(_targets(config)))
    for target in targets:
        module_path = ConfigComponent({"_target_": target}).resolve_module_name()
        module, _, name = module_path.rpartition(".")
        obj, ok = optional_import(module, name=name)
        assert ok and callable(obj), f"{os.path.basename(path)}: _target_ {target!r} ({module_path}) does not import"


def test_metadata_version_and_changelog():
    meta = json.load(open(os.path.join(ROOT, "configs", "metadata.json")))
    assert meta["version"] in meta["changelog"]
    assert meta["version"] == max(meta["changelog"], key=lambda v: tuple(int(x) for x in v.split(".")))
    import bundle

    assert bundle.__version__ == meta["version"]  # reports record it
    assert meta["monai_version"] == "1.6.1" and meta["pytorch_version"] == "2.13.0"
    reqs = open(os.path.join(ROOT, "requirements.txt")).read()
    assert "torch==2.13.0" in reqs and "monai==1.6.1" in reqs


def test_workflow_configs_merge_with_common():
    parser = ConfigParser()
    parser.read_config([os.path.join(ROOT, "configs", "common.yaml"), os.path.join(ROOT, "configs", "train.yaml")])
    for key in (
        "bundle_root",
        "dataset_dir",
        "device",
        "network_def",
        "network",
        "train#trainer",
        "train#dataset",
        "train#handlers",
        "validate#evaluator",
        "run",
        "training",
        "initialize",
        "finalize",
    ):
        assert key in parser, key
    assert parser["run"] == parser["training"]
    assert bundle.__version__

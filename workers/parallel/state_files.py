"""Nested state (optimizer and scheduler state dicts) saved as safetensors + JSON, never pickled.

Tensors go to a .safetensors file under their path in the tree; everything else (numbers,
strings, lists, the tree's shape) goes to a JSON skeleton beside it.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

TENSOR = "__tensor__"


def save_tree(tree, path: Path) -> None:
    """Write `tree` to path.safetensors and path.json."""
    tensors: dict[str, torch.Tensor] = {}

    def encode(node, key: str):
        if isinstance(node, torch.Tensor):
            tensors[key] = node.detach().contiguous().cpu()
            return {TENSOR: key}
        if isinstance(node, dict):
            return {
                "__dict__": [
                    [encode(k, f"{key}/k{i}"), encode(v, f"{key}/{i}")] for i, (k, v) in enumerate(node.items())
                ]
            }
        if isinstance(node, (list, tuple)):
            return {"__list__": [encode(v, f"{key}/{i}") for i, v in enumerate(node)], "tuple": isinstance(node, tuple)}
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(f"cannot save {type(node).__name__} at {key} without pickling")

    skeleton = encode(tree, "root")
    path = Path(path)
    save_file(tensors, str(path.with_suffix(".safetensors")))
    path.with_suffix(".json").write_text(json.dumps(skeleton))


def load_tree(path: Path):
    """Read a tree written by `save_tree`."""
    path = Path(path)
    tensors = load_file(str(path.with_suffix(".safetensors")))

    def decode(node):
        if isinstance(node, dict) and TENSOR in node:
            return tensors[node[TENSOR]]
        if isinstance(node, dict) and "__dict__" in node:
            return {decode(k): decode(v) for k, v in node["__dict__"]}
        if isinstance(node, dict) and "__list__" in node:
            items = [decode(v) for v in node["__list__"]]
            return tuple(items) if node["tuple"] else items
        return node

    return decode(json.loads(path.with_suffix(".json").read_text()))

"""No module of loopstream imports a layer above its own (README, "Layout").

The layers, bottom up: the generated ``v1`` stubs; the science ``core``; the product (``serving``,
``client``, ``tracker``, ``models``), whose parts import only what is listed below; the operator
tools (``ops``); the dev harness (``dev``), which nothing else imports. The imports are read from
the sources (every ``import`` statement, also those inside functions), nothing is executed.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

PRODUCT = {"v1", "core", "serving", "client", "tracker", "models"}
# What each layer may import (its own layer included).
ALLOWED = {
    "v1": {"v1"},
    "core": {"core", "v1"},
    "serving": {"serving", "core", "v1"},
    "client": {"client", "serving", "core", "v1"},
    "tracker": {"tracker", "core", "v1"},
    "models": {"models", "serving", "core", "v1"},
    "ops": {"ops", *PRODUCT},
    "dev": {"dev", "ops", *PRODUCT},
    "loopstream": set(),  # the package's own __init__
}
# Packages mapped from top-level folders (pyproject.toml, package-dir) and the root package.
PACKAGES = ["loopstream.client", "loopstream.tracker", "loopstream.models", "loopstream"]


def sources() -> Iterator[tuple[str, Path]]:
    """(module name, file) of every module of loopstream, wherever package-dir puts its folder."""
    mapped = {p.split(".")[1] for p in PACKAGES if "." in p}
    for package in PACKAGES:
        root = Path(importlib.util.find_spec(package).submodule_search_locations[0])
        for path in sorted(root.rglob("*.py")):
            parts = [p for p in path.relative_to(root).with_suffix("").parts if p != "__init__"]
            if package == "loopstream" and parts and parts[0] in mapped:
                continue  # a stray folder of that name under loopstream/ is not the package
            yield ".".join([package, *parts]), path


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imported_modules(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        yield from (n for n in names if n == "loopstream" or n.startswith("loopstream."))


MODULES = dict(sources())


def test_every_layer_is_known_and_the_walk_finds_them_all() -> None:
    layers = {layer(m) for m in MODULES}
    assert layers == set(ALLOWED), f"layers without a rule or rules without modules: {layers ^ set(ALLOWED)}"
    assert "loopstream.core.detections" in MODULES and "loopstream.tracker.service" in MODULES


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_goes_up_a_layer(module: str) -> None:
    own = layer(module)
    back_edges = [m for m in imported_modules(MODULES[module]) if layer(m) not in ALLOWED[own]]
    assert not back_edges, (
        f"{module} ({own}) imports {back_edges}: a {own} module may import only "
        f"{sorted(ALLOWED[own])}; move the shared code down a layer (often into loopstream.core)"
    )

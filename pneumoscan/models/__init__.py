"""The networks and the deployable bundle: the model registry, the ensemble network, and the bundle format (card,
weights and their checksums) with its loader."""

import ast
import sys
from pathlib import Path


class WeightsUnavailable(OSError):
    """Pretrained weights that can be neither read from the local cache nor downloaded: the CLI exits with status 3
    for it alone, so a script (``make reference``) can train that run from scratch instead, under another name.
    Here, free of torch, so that the CLI catches it without loading torch."""


# The command line imports the modules this environment variable names (comma-separated) before it reads its
# arguments: how a task, model, reader or layout of one's own reaches `pneumoscan`, as an import does in a script.
# Here, free of torch, for the CLI and for the refusals that say how to register what a bundle names.
PLUGINS_ENV = "PNEUMOSCAN_PLUGINS"


def or_your_own(listed: str) -> str:
    """The end of a refusal of an unknown task or model name: what is registered (``listed``), and how one of one's
    own gets there, since a module not imported is the likely cause of a name that is not a typo."""
    return f"{listed}; or one of your own, its module imported first: on the command line, {PLUGINS_ENV}=MODULE"


def register_first(kind: str, module: str = "") -> str:
    """What to do about a bundle whose ``kind`` ("task" or "model") is not registered in this process (its module
    not imported): said by every refusal of one, so that none reads as a misspelt option the user never gave.
    ``module``: the module the bundle's card records as the one that registered it where the bundle was made
    (``BundleCard.plugins``; "" for a card that records none, which is told how to find one's own)."""
    if module:
        return (f"import {module}, the module that registered it where the bundle was made, first (on the command "
                f"line, {PLUGINS_ENV}={module})")
    return (f"import the module that registers it first (a {kind} of your own: docs/development.md, Adding a {kind}; "
            f"on the command line, {PLUGINS_ENV}=MODULE)")


def model_names() -> list[str]:
    """The registered model names (``pneumoscan models``), without loading torch and timm (2.6 s of CPU) to build
    the registry whose builders need them: the registry's own list where this process has built it (a plug-in that
    registers a model imports it), else the names its module registers, read from its source (each
    ``@register("name", ...)``)."""
    if (registry := sys.modules.get(f"{__name__}.registry")) is not None:
        return registry.list_models()
    tree = ast.parse((Path(__file__).parent / "registry.py").read_text(encoding="utf-8"))
    return sorted(decorator.args[0].value for node in tree.body if isinstance(node, ast.FunctionDef)
                  for decorator in node.decorator_list
                  if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", None) == "register")

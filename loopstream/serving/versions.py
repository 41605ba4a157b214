"""Which versions of a pipeline a Triton replica serves, changed without restarting it.

Needs ``--model-control-mode=explicit``. A pipeline version calls its core network at the same
version (BLS), so the two models change together: the core first when versions are added, the
pipeline first when they are removed, so no served pipeline version ever lacks its network.
Versions that stay are not reloaded and keep serving throughout.
"""

from __future__ import annotations

import json

import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException


def ready_versions(client: triton.InferenceServerClient, model: str) -> list[int]:
    """Versions of ``model`` that are READY on this replica."""
    index = client.get_model_repository_index(as_json=True).get("models", [])
    return sorted(int(m["version"]) for m in index if m["name"] == model and m.get("state") == "READY")


def ready_versions_open(client: triton.InferenceServerClient, model: str) -> list[int]:
    """Versions of ``model`` that are READY, through the health and metadata APIs only: those stay
    open to microscope clients where the repository API needs the admin header."""
    if not client.is_model_ready(model):  # also False for a model Triton does not know
        return []
    return sorted(int(v) for v in client.get_model_metadata(model, as_json=True).get("versions", []))


def serve_versions(client: triton.InferenceServerClient, pipeline: str, versions: list[int]) -> None:
    """Make ``pipeline`` (and its core) serve exactly ``versions`` on this replica."""
    if not versions:
        raise ValueError("serve at least one version; to stop a pipeline, unload it")
    core = f"{pipeline}_core"
    before = ready_versions(client, pipeline)
    order = (core, pipeline) if set(versions) - set(before) else (pipeline, core)
    for model in order:
        _load_with_versions(client, model, versions)
    missing = sorted(set(versions) - set(ready_versions(client, pipeline)))
    if missing:
        if before:  # put the replica back as it was rather than leave it half changed
            for model in (core, pipeline):
                _load_with_versions(client, model, before)
        raise RuntimeError(
            f"versions {missing} of {pipeline} did not load on this replica (not in its model repository, "
            f"or failed: see the server log); it still serves {before}"
        )


def _load_with_versions(client: triton.InferenceServerClient, model: str, versions: list[int]) -> None:
    if not client.is_model_ready(model):
        client.load_model(model)  # first load: the repository's config, then narrow it below
    config = client.get_model_config(model, as_json=True)["config"]
    config["version_policy"] = {"specific": {"versions": sorted(versions)}}
    try:
        client.load_model(model, config=json.dumps(config))
    except InferenceServerException as exc:
        raise RuntimeError(
            f"Triton could not serve versions {sorted(versions)} of {model}: {exc.message()}; "
            "check that each version exists in the model repository"
        ) from exc

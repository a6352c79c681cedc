"""Wiring shared by the CLI and the HTTP functions: which LLM a new swarm uses, building an engine."""

from __future__ import annotations

import os
from pathlib import Path

from .config import ConfigError, SwarmBlueprint, load_blueprint, load_recording
from .dispatch import Dispatcher
from .dispatchers import make_dispatcher
from .actions import ActionError
from .engine import Engine
from .llm import AZURE_CREDENTIALS
from .store import StoreError


def llm_configured(blueprint: SwarmBlueprint) -> bool:
    if blueprint.llm.provider == "azure":  # OPENAI_API_KEY is no Azure key: the SDK would refuse to start
        endpoint = os.environ.get("AZURE_OPENAI_ENDPOINT") or blueprint.llm.base_url
        return bool(endpoint and any(map(os.environ.get, AZURE_CREDENTIALS)))
    return bool(os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL") or blueprint.llm.base_url)


def recording_path(blueprint: SwarmBlueprint) -> Path | None:
    if not blueprint.recording:
        return None
    path = Path(blueprint.recording)
    return path if path.is_absolute() else blueprint.root / path


def recorded_goal(blueprint: SwarmBlueprint) -> str | None:
    path = recording_path(blueprint)
    return load_recording(path)["goal"] if path else None


def llm_source_for(goal: str, blueprint: SwarmBlueprint) -> str:
    """A real model when one is configured; else the shipped recording, for its own goal only."""
    if llm_configured(blueprint):
        return "openai"
    demo = recorded_goal(blueprint)
    if demo is not None and goal.strip() == demo.strip():
        return f"recording:{recording_path(blueprint)}"
    hint = f' Without one, only the recorded demo goal runs offline: swarm run "{demo}"' if demo else ""
    raise ConfigError(
        "no LLM configured: set OPENAI_API_KEY (OpenAI), or OPENAI_BASE_URL for any "
        "OpenAI-compatible server (Ollama, vLLM, llama.cpp), or AZURE_OPENAI_ENDPOINT and "
        f"AZURE_OPENAI_API_KEY with llm.provider = \"azure\".{hint}"
    )


def build_engine(
    blueprint: str | SwarmBlueprint | None = None,
    *,
    store: str | None = None,
    dispatcher: Dispatcher | None = None,
) -> Engine:
    bp = blueprint if isinstance(blueprint, SwarmBlueprint) else load_blueprint(blueprint)
    if store:
        bp = bp.model_copy(update={"stores": bp.stores.model_copy(update={"state": store})})
    try:
        return Engine(bp, dispatcher=dispatcher or make_dispatcher(bp))  # SWARM_DISPATCHER / [dispatcher] kind
    except (StoreError, ActionError) as exc:  # the store or actions named in the configuration are unusable
        raise ConfigError(str(exc)) from None

"""The swarm blueprint: the configuration one deployment runs with, read from a TOML file.

Resolution: `--blueprint` / `SWARM_BLUEPRINT` (a folder holding `blueprint.toml`, or
the file itself), else `blueprints/default`. `SWARM_STORE`, `SWARM_MODEL`, `SWARM_LLM_MODE` and
`SWARM_DISPATCHER_RUNNER` override the file (ENV_OVERRIDES) so the same blueprint runs against
any store or model.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Collection
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .llm import LLMSettings
from .models import Budgets
from .sandbox import Limits

BLUEPRINTS_DIR = Path(__file__).resolve().parent.parent / "blueprints"
DEFAULT_BLUEPRINT = BLUEPRINTS_DIR / "default"
# (section, key) of a blueprint setting -> the environment variable that overrides it
ENV_OVERRIDES = {
    ("stores", "state"): "SWARM_STORE",
    ("llm", "model"): "SWARM_MODEL",
    ("llm", "mode"): "SWARM_LLM_MODE",
    ("dispatcher", "runner"): "SWARM_DISPATCHER_RUNNER",
}


class ConfigError(ValueError):
    """The blueprint or an environment override is wrong; the message says which and where."""


def without_userinfo(text: str) -> str:
    """`text` with the user:password of every URL in it removed, for messages that are shown or logged."""
    return re.sub(r"(?<=://)[^/?#\s]*@", "", text)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StoreSettings(_Section):
    """One store per concern; the empty ones default to `state`."""

    state: str = "file://./.swarm"
    history: str = ""
    actions: str = ""
    memory: str = ""

    def for_concern(self, concern: str) -> str:
        return getattr(self, concern) or self.state

    def uris(self) -> dict[str, str]:
        """Every concern's store URI, the defaults filled in."""
        return {concern: self.for_concern(concern) for concern in type(self).model_fields}


class DispatcherSettings(_Section):
    kind: Literal["local", "http", "cloud_tasks", "pubsub", "azure_queue"] = "local"
    concurrency: int = Field(16, ge=1, le=4096)
    runner: Literal["threads", "greenlets"] = "threads"  # local only: a thread per node, or a greenlet per node on one loop
    lease_seconds: float = Field(900, gt=0)
    url: str = ""


class RouterSettings(_Section):
    fallback: str = "write_text"


class SandboxSettings(_Section):
    """Limits for generated code (see sandbox.Limits) and the packages it may install."""

    wall_s: float = Field(10, gt=0)
    cpu_s: int = Field(10, ge=1)
    memory_mb: int = Field(512, ge=64)
    file_mb: int = Field(16, ge=0)
    max_procs: int = Field(32, ge=1)
    case_timeout_s: float = Field(2, gt=0)  # per test case
    allowed_packages: list[str] = Field(default_factory=list)  # PyPI names; anything else is refused

    def limits(self, hidden: Collection[str] = ()) -> Limits:
        """`hidden`: folders the code must not read (the deployment's file stores)."""
        return Limits(
            wall_s=self.wall_s,
            cpu_s=self.cpu_s,
            memory_mb=self.memory_mb,
            file_mb=self.file_mb,
            max_procs=self.max_procs,
            allowed_packages=frozenset(self.allowed_packages),
            hidden=frozenset(hidden),
        )


class FactorySettings(_Section):
    """`create_function`: how hard it tries and where it files what it makes."""

    max_repairs: int = Field(3, ge=0, le=10)  # rounds of "here are the failing tests, fix the code"
    max_tests: int = Field(6, ge=1, le=20)  # test cases asked for
    samples: int = Field(4, ge=0, le=10)  # fresh drafts written when the first code fails its tests
    sample_temperature: float = Field(0.8, ge=0, le=2)  # their temperature: drafts must differ to help
    code_answer: Literal["json", "text"] = "json"  # code inside the structured answer, or in a Markdown block
    folder: str = "functions"  # the folder new functions are filed in
    prompts: str = "factory"  # folder of the factory's prompts, relative to the blueprint (when unset and missing: the default's)


class SwarmBlueprint(_Section):
    name: str = "default"
    root: Path = DEFAULT_BLUEPRINT
    system_prompt: str = ""
    stores: StoreSettings = Field(default_factory=StoreSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    budgets: Budgets = Field(default_factory=Budgets)
    dispatcher: DispatcherSettings = Field(default_factory=DispatcherSettings)
    router: RouterSettings = Field(default_factory=RouterSettings)
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
    factory: FactorySettings = Field(default_factory=FactorySettings)
    recording: str = ""
    root_action: str = "break_down_goal"
    action_dirs: list[str] = Field(default_factory=lambda: ["actions"])  # later folders override earlier ones

    @property
    def action_paths(self) -> list[Path]:
        return [(self.root / d).resolve() for d in self.action_dirs]

    @property
    def prompts_path(self) -> Path:
        own = (self.root / self.factory.prompts).resolve()
        return own if own.is_dir() else DEFAULT_BLUEPRINT / "factory"


def load_blueprint(path: str | os.PathLike | None = None) -> SwarmBlueprint:
    target = Path(path or os.environ.get("SWARM_BLUEPRINT") or DEFAULT_BLUEPRINT)
    if not target.is_absolute() and not target.exists() and (BLUEPRINTS_DIR / target).exists():
        target = BLUEPRINTS_DIR / target  # a bare name: `--blueprint default`
    file = target / "blueprint.toml" if target.is_dir() else target
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))  # TOML is UTF-8 whatever the locale
    except FileNotFoundError:
        raise ConfigError(f"blueprint not found: {file}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"blueprint {file} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"blueprint {file} is not UTF-8 text") from None
    except OSError as exc:  # e.g. blueprint.toml is a folder, or unreadable
        raise ConfigError(f"cannot read blueprint {file}: {exc.strerror or exc}") from None
    raw.setdefault("root", file.parent)
    if isinstance(raw["root"], str):
        raw["root"] = Path(raw["root"])
    overridden = {setting: var for setting, var in ENV_OVERRIDES.items() if os.environ.get(var)}
    for (section, key), var in overridden.items():
        raw.setdefault(section, {})[key] = os.environ[var]
    try:
        blueprint = SwarmBlueprint.model_validate(raw, strict=True)  # `max_nodes = true` is no 1, nor "3" a 3
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(str(p) for p in first["loc"])
        source = overridden.get(loc[:2]) or file
        raise ConfigError(f"blueprint setting {'.'.join(loc) or '(top level)'} from {source}: {first['msg']}") from None
    prompts = blueprint.root / blueprint.factory.prompts
    if blueprint.factory.prompts != FactorySettings().prompts and not prompts.is_dir():  # a typo, not the default's fallback
        raise ConfigError(f"blueprint setting factory.prompts from {file}: folder {prompts} not found")
    return blueprint


def load_recording(path: Path) -> dict:
    """A recording of answers (`{"goal", "answers", …}`), or a ConfigError naming the file."""
    try:
        recording = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"recording not found: {path}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"recording {path} is not readable JSON: {exc}") from None
    if not isinstance(recording, dict) or not isinstance(recording.get("goal"), str) or not isinstance(recording.get("answers"), dict):
        raise ConfigError(f"recording {path}: expected an object with a \"goal\" string and an \"answers\" object")
    return recording

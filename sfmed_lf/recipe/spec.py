"""The recipe file: stages in order, the endpoints they need, how ``llamafactory-cli train`` is launched.

```yaml
state_dir: saves/sfmed-7b/recipe        # stage markers and logs
vars: {raw: /data/sfmed-raw}            # ${raw} anywhere below; `sfmed recipe run RECIPE raw=/other` overrides
launch:                                 # environment of every `train` stage (llamafactory-cli's launcher)
  FORCE_TORCHRUN: 1
  NPROC_PER_NODE: 8
endpoints:
  generator:                            # started by the runner for the stages that name it, then stopped
    serve: vllm serve THUDM/glm-4-9b-chat --host 127.0.0.1 --port ${port} --served-model-name glm-4-9b-chat
    model: glm-4-9b-chat
  judge:                                # or given: the runner only checks that it answers
    url: http://10.0.0.5:8001/v1
    model: Qwen/Qwen2.5-72B-Instruct
stages:
  - name: diversify_single
    sfmed: data diversify examples/yaml/sfmed_diversify_single.yaml   # `sfmed` and its arguments
    set: {generator_url: "${endpoints.generator.url}"}                 # key=value overrides
    endpoints: [generator]
  - name: sft
    train: examples/yaml/sfmed_sft.yaml                                 # `llamafactory-cli train` with `launch`
```

``${port}`` is a free port on 127.0.0.1 chosen when the endpoint starts; a served endpoint must bind 127.0.0.1.
``${endpoints.NAME.url}`` / ``${endpoints.NAME.model}`` are filled in when the stage runs. Errors name the file,
the line and the field.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sfmed_lf.config_files import ConfigError, parse_overrides
from sfmed_lf.steps import STAGES

VARIABLE = re.compile(r"\$\{([^}]*)\}")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
# launch settings that place processes but do not change what a stage computes (left out of its fingerprint)
PLACEMENT_KEYS = ("NODE_RANK", "MASTER_ADDR", "MASTER_PORT")
TOP_LEVEL = ("state_dir", "vars", "launch", "endpoints", "stages")
STAGE_KEYS = ("name", "sfmed", "train", "set", "endpoints", "launch", "env")
ENDPOINT_KEYS = ("serve", "url", "model", "env", "ready_timeout_s")
LOCALHOST = "127.0.0.1"


class RecipeError(ConfigError):
    """A recipe file that cannot be run: names the file, the line and the field."""


class _LineLoader(yaml.SafeLoader):
    """Mappings remember the line they start on (1-based), for error messages."""


class _LinedDict(dict):
    line = 0


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> _LinedDict:
    mapping = _LinedDict(loader.construct_mapping(node, deep=True))
    mapping.line = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


@dataclass(frozen=True)
class Endpoint:
    name: str
    serve: tuple[str, ...] | None  # argv with ${port}; None: a given URL
    url: str | None  # a given URL (http://host:port/v1)
    model: str | None  # the served model name
    env: dict[str, str]
    ready_timeout_s: float
    line: int

    def definition(self) -> dict[str, Any]:
        """What decides the endpoint's answers (its fingerprint part): command or URL, model, environment."""
        return {
            "serve": list(self.serve) if self.serve else None,
            "url": self.url,
            "model": self.model,
            "env": self.env,
        }


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str  # "sfmed" or "train"
    args: tuple[str, ...]  # sfmed: the arguments after `sfmed`; train: (config,)
    overrides: dict[str, Any]
    endpoints: tuple[str, ...]
    launch: dict[str, str]  # train stages: the recipe's launch settings with the stage's own on top
    env: dict[str, str]
    line: int

    @property
    def step(self) -> tuple[str, ...]:
        """``("data", "dedup")``, ``("tiny-model",)``, ``("train",)``: which step the stage runs (a stage's step, or
        a top-level one: :mod:`sfmed_lf.steps`)."""
        if self.kind == "train":
            return ("train",)
        if self.args and self.args[0] in (*STAGES, "recipe") and len(self.args) > 1:
            return tuple(self.args[:2])
        return tuple(self.args[:1])

    @property
    def config(self) -> str | None:
        """The YAML the step reads (None for argument steps such as ``data convert``)."""
        if self.kind == "train":
            return self.args[0]
        rest = self.args[len(self.step) :]
        return rest[0] if rest and rest[0].endswith((".yaml", ".yml")) else None


@dataclass
class Recipe:
    path: Path
    state_dir: Path
    variables: dict[str, str]
    launch: dict[str, str]
    endpoints: dict[str, Endpoint]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise RecipeError(f"{self.path}: no stage {name!r}; stages: {', '.join(s.name for s in self.stages)}.")


def _fail(path: Path, line: int, problem: str) -> RecipeError:
    return RecipeError(f"{path}:{line}: {problem}")


def substitute(text: str, resolve: Any, where: str) -> str:
    """Replace every ``${name}`` with ``resolve(name)``; ``$$`` is a literal ``$``."""

    def replace(match: re.Match[str]) -> str:
        value = resolve(match.group(1).strip())
        if value is None:
            raise RecipeError(f"{where}: unknown variable ${{{match.group(1)}}}.")
        return str(value)

    parts = text.split("$$")
    return "$".join(VARIABLE.sub(replace, part) for part in parts)


def _scalar_text(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float | str):
        return str(value)
    raise RecipeError(f"{where}: expected a text or a number, not {type(value).__name__}.")


def _env_mapping(value: Any, path: Path, line: int, field: str, resolve: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(path, line, f"{field}: expected a mapping of NAME: value.")
    env = {}
    for key, item in value.items():
        if not isinstance(key, str) or not ENV_NAME.match(key):
            raise _fail(path, getattr(value, "line", line), f"{field}: {key!r} is not an environment variable name.")
        env[key] = substitute(_scalar_text(item, f"{path}:{line}: {field}.{key}"), resolve, f"{path}:{line}")
    return env


def _substitute_tree(value: Any, resolve: Any, where: str) -> Any:
    if isinstance(value, str):
        return substitute(value, resolve, where)
    if isinstance(value, list):
        return [_substitute_tree(item, resolve, where) for item in value]
    if isinstance(value, dict):
        return {key: _substitute_tree(item, resolve, where) for key, item in value.items()}
    return value


def _later(name: str) -> str | None:
    """Endpoint references stay in place until the stage runs (their URL is known then)."""
    return f"${{{name}}}" if name.startswith("endpoints.") else None


def load_recipe(path: str | os.PathLike[str], overrides: list[str] | None = None) -> Recipe:
    """Read and validate a recipe; ``overrides`` are ``VAR=value`` or ``launch.NAME=value``."""
    path = Path(path)
    try:
        loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=_LineLoader)
    except (OSError, yaml.YAMLError) as error:
        raise RecipeError(f"{path}: cannot read the recipe ({error}).") from error
    if not isinstance(loaded, dict):
        raise RecipeError(f"{path}: a recipe is a mapping with state_dir, stages, ...")
    unknown = sorted(set(loaded) - set(TOP_LEVEL))
    if unknown:
        raise _fail(path, 1, f"unknown key(s) {', '.join(unknown)}; known: {', '.join(TOP_LEVEL)}.")

    variables = {key: _scalar_text(value, f"{path}: vars.{key}") for key, value in (loaded.get("vars") or {}).items()}
    launch_raw = dict(loaded.get("launch") or {})
    for key, value in parse_overrides(overrides or []).items():
        if key.startswith("launch."):
            launch_raw[key.removeprefix("launch.")] = value
        elif key in variables:
            variables[key] = _scalar_text(value, f"command line: {key}")
        else:
            raise RecipeError(
                f"command line: {key}={value!r} names no variable of {path} (vars: {', '.join(variables) or 'none'}) "
                "and is not launch.NAME."
            )

    def resolve(name: str) -> str | None:
        return variables.get(name) if name in variables else _later(name)

    variables = {key: substitute(value, resolve, f"{path}: vars.{key}") for key, value in variables.items()}
    launch = _env_mapping(launch_raw, path, getattr(loaded.get("launch"), "line", 1), "launch", resolve)
    if "state_dir" not in loaded:
        raise _fail(path, 1, "state_dir: required (where the stage markers and logs are kept).")
    state_dir = Path(substitute(str(loaded["state_dir"]), resolve, f"{path}: state_dir"))

    endpoints = {}
    for name, spec in (loaded.get("endpoints") or {}).items():
        endpoints[name] = _endpoint(path, name, spec, resolve)
    stages: list[Stage] = []
    raw_stages = loaded.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        raise _fail(path, getattr(loaded, "line", 1), "stages: a list of at least one stage.")
    for spec in raw_stages:
        stage = _stage(path, spec, launch, endpoints, resolve)
        if any(stage.name == other.name for other in stages):
            raise _fail(path, stage.line, f"stage name {stage.name!r} is used twice.")
        stages.append(stage)
    return Recipe(path, state_dir, variables, launch, endpoints, stages)


def _endpoint(path: Path, name: str, spec: Any, resolve: Any) -> Endpoint:
    if not isinstance(spec, dict):
        raise _fail(path, 1, f"endpoints.{name}: expected a mapping with serve or url.")
    line = getattr(spec, "line", 1)
    if not isinstance(name, str) or not NAME.match(name):
        raise _fail(path, line, f"endpoints: {name!r} is not a valid name (letters, digits, _ . -).")
    unknown = sorted(set(spec) - set(ENDPOINT_KEYS))
    if unknown:
        raise _fail(
            path, line, f"endpoints.{name}: unknown key(s) {', '.join(unknown)}; known: {', '.join(ENDPOINT_KEYS)}."
        )
    if ("serve" in spec) == ("url" in spec):
        raise _fail(path, line, f"endpoints.{name}: give either serve (a command the runner starts) or url (given).")

    def with_port(variable: str) -> str | None:
        return "${port}" if variable == "port" else resolve(variable)

    serve = None
    env = _env_mapping(spec.get("env"), path, line, f"endpoints.{name}.env", with_port)
    if "serve" in spec:
        command = spec["serve"]
        argv = shlex.split(command) if isinstance(command, str) else [str(part) for part in command]
        serve = tuple(substitute(part, with_port, f"{path}:{line}: endpoints.{name}.serve") for part in argv)
        if not serve:
            raise _fail(path, line, f"endpoints.{name}.serve: empty command.")
        if not any("${port}" in part for part in (*serve, *env.values())):
            raise _fail(path, line, f"endpoints.{name}: put ${{port}} in serve (or env) so the runner picks the port.")
        if not any(LOCALHOST in part for part in (*serve, *env.values())):
            raise _fail(
                path,
                line,
                f"endpoints.{name}: bind the server to {LOCALHOST} (--host {LOCALHOST}, or API_HOST: {LOCALHOST} "
                "in env for llamafactory-cli api): the runner's endpoints are not for the network.",
            )
    url = substitute(str(spec["url"]), resolve, f"{path}:{line}: endpoints.{name}.url") if "url" in spec else None
    if url is not None and not url.startswith(("http://", "https://")):
        raise _fail(path, line, f"endpoints.{name}.url: {url!r} is not an http(s) URL.")
    timeout = spec.get("ready_timeout_s", 900)
    if not isinstance(timeout, int | float) or timeout <= 0:
        raise _fail(path, line, f"endpoints.{name}.ready_timeout_s: a positive number of seconds.")
    model = spec.get("model")
    return Endpoint(name, serve, url, None if model is None else str(model), env, float(timeout), line)


def _stage(path: Path, spec: Any, launch: dict[str, str], endpoints: dict[str, Endpoint], resolve: Any) -> Stage:
    if not isinstance(spec, dict):
        raise _fail(path, 1, f"stages: each stage is a mapping with name and sfmed or train, not {spec!r}.")
    line = getattr(spec, "line", 1)
    unknown = sorted(set(spec) - set(STAGE_KEYS))
    if unknown:
        raise _fail(path, line, f"stage: unknown key(s) {', '.join(unknown)}; known: {', '.join(STAGE_KEYS)}.")
    name = spec.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise _fail(path, line, f"stage name: {name!r} is not a valid name (letters, digits, _ . -).")
    where = f"{path}:{line}: stage {name}"
    if ("sfmed" in spec) == ("train" in spec):
        raise _fail(path, line, f"stage {name}: give either sfmed (a step) or train (a llamafactory-cli train YAML).")
    if "sfmed" in spec:
        command = spec["sfmed"]
        argv = shlex.split(command) if isinstance(command, str) else [str(part) for part in command]
        args = tuple(substitute(part, resolve, where) for part in argv)
        if not args:
            raise _fail(path, line, f"stage {name}: sfmed: empty command.")
        kind = "sfmed"
    else:
        args = (substitute(str(spec["train"]), resolve, where),)
        kind = "train"
    overrides = spec.get("set") or {}
    if not isinstance(overrides, dict):
        raise _fail(path, line, f"stage {name}: set: a mapping of option: value.")
    overrides = _substitute_tree(dict(overrides), resolve, where)
    needed = spec.get("endpoints") or []
    if isinstance(needed, str):
        needed = [needed]
    for endpoint in needed:
        if endpoint not in endpoints:
            raise _fail(path, line, f"stage {name}: endpoint {endpoint!r} is not defined under endpoints.")
    if spec.get("launch") and kind != "train":
        raise _fail(path, line, f"stage {name}: launch applies to train stages (llamafactory-cli train).")
    stage_launch = {**launch, **_env_mapping(spec.get("launch"), path, line, f"stage {name}: launch", resolve)}
    env = _env_mapping(spec.get("env"), path, line, f"stage {name}: env", resolve)
    stage = Stage(name, kind, args, overrides, tuple(needed), stage_launch if kind == "train" else {}, env, line)
    referenced = {m.group(1).split(".")[1] for m in VARIABLE.finditer(repr(overrides) + " ".join(args))}
    missing = sorted(e for e in referenced if e not in needed)
    if missing:
        raise _fail(path, line, f"stage {name}: uses endpoint(s) {', '.join(missing)}; list them under endpoints.")
    if stage.config is None and overrides:
        raise _fail(path, line, f"stage {name}: set applies to steps that read a YAML config.")
    return stage

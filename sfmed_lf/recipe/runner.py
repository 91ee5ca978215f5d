"""``sfmed recipe plan|run|status``.

A stage's record (``<state_dir>/stages/<name>.json``) says ``started`` before its command runs and ``finished``
once it has exited 0 and every declared output exists; it holds the stage's fingerprint (its definition and the
content digests of its inputs, :mod:`.fingerprint`) and its outputs' digests, and is replaced atomically. On a
re-run a stage is skipped when it is finished with the current fingerprint and its outputs exist; otherwise it runs:

- a stage whose inputs or definition changed starts over: its resumable state (:attr:`StepIO.stale`) is removed
  first, so a step never resumes work done for other inputs. What it writes is what the stages after it read, so
  they re-run too when its outputs change (by content: identical outputs leave them finished);
- a stage that was started with the same fingerprint and never finished (killed, failed) runs again and resumes
  through its own resume (rounds, responses, answers, reward models, a training run's last complete checkpoint),
  or from its start when it has none.

Runs are serialised by a lock on ``<state_dir>/lock``, which the stage's process inherits, so a second runner
cannot start while a stage of a killed runner still runs. Each stage's output goes to ``<state_dir>/logs/<name>.log``
(and the console).

Several nodes: the runner on node 0 (``--node-rank 0``, the default) runs every stage; on node r > 0,
``sfmed recipe run RECIPE --node-rank r`` (the same recipe and launch settings, a shared file system) follows it:
for each training stage the head starts with ``NNODES`` > r, it starts the same ``llamafactory-cli train`` with
``NODE_RANK=r``, and it exits when the head's run ends.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import glob
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import psutil

from sfmed_lf.recipe.check import CheckResult, check_recipe
from sfmed_lf.recipe.endpoints import EndpointFailed, RunningEndpoint, llamafactory_cli, start
from sfmed_lf.recipe.fingerprint import (
    changed_inputs,
    endpoint_inputs,
    fingerprint,
    path_digest,
    stage_definition,
    stage_inputs,
)
from sfmed_lf.recipe.spec import LOCALHOST, Recipe, RecipeError, Stage, substitute
from sfmed_lf.recipe.stage_io import StepIO, override_text, stage_io
from sfmed_lf.utils.io import atomic_write_text

FOLLOW_POLL_S = 2.0
STOP_GRACE_S = 30.0


class StageFailed(RuntimeError):
    pass


class Interrupted(BaseException):
    """SIGTERM to the runner: stop the stage and the endpoints, record nothing as finished."""


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class State:
    """Records under ``state_dir``."""

    def __init__(self, recipe: Recipe) -> None:
        self.dir = recipe.state_dir
        self.logs = self.dir / "logs"

    def record_path(self, stage: Stage) -> Path:
        return self.dir / "stages" / f"{stage.name}.json"

    def record(self, stage: Stage) -> dict[str, Any] | None:
        return _read_json(self.record_path(stage))

    def write_record(self, stage: Stage, record: dict[str, Any]) -> None:
        atomic_write_text(self.record_path(stage), json.dumps(record, indent=2, ensure_ascii=False) + "\n")

    @property
    def run_path(self) -> Path:
        return self.dir / "run.json"

    def run(self) -> dict[str, Any] | None:
        return _read_json(self.run_path)

    def write_run(self, run: dict[str, Any]) -> None:
        atomic_write_text(self.run_path, json.dumps(run, indent=2) + "\n")


def _endpoint_text(recipe: Recipe, urls: dict[str, str]) -> Callable[[str], str | None]:
    def resolve(name: str) -> str | None:
        parts = name.split(".")
        if len(parts) != 3 or parts[0] != "endpoints" or parts[1] not in recipe.endpoints:
            return None
        endpoint = recipe.endpoints[parts[1]]
        if parts[2] == "url":
            return urls.get(parts[1]) or endpoint.url or f"http://{LOCALHOST}:PORT/v1"
        if parts[2] == "model":
            return endpoint.model
        return None

    return resolve


def stage_command(
    recipe: Recipe, stage: Stage, urls: dict[str, str], extra: dict[str, Any] | None = None
) -> tuple[list[str], dict[str, str], str]:
    """(argv, environment additions, the command as a person would type it) with endpoint URLs filled in."""
    resolve = _endpoint_text(recipe, urls)
    where = f"stage {stage.name}"
    args = [substitute(arg, resolve, where) for arg in stage.args]
    overrides = {**stage.overrides, **(extra or {})}
    pairs = [f"{key}={substitute(override_text(value), resolve, where)}" for key, value in overrides.items()]
    env = {**stage.launch, **stage.env}
    if stage.kind == "train":
        argv = [llamafactory_cli(), "train", *args, *pairs]
        shown = ["llamafactory-cli", "train", *args, *pairs]
    else:
        argv = [sys.executable, "-m", "sfmed_lf.cli", *args, *pairs]
        shown = ["sfmed", *args, *pairs]
    prefix = " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items())
    return argv, env, (prefix + " " if prefix else "") + shlex.join(shown)


def plan(recipe: Recipe, out: TextIO) -> int:
    """Every command in order, endpoints started and stopped where they are, then the static check."""
    try:
        result = check_recipe(recipe)
    except RecipeError as error:
        print(f"sfmed recipe plan: {error}", file=out)
        return 2
    print(f"# {recipe.path}: {len(recipe.stages)} stages; state in {recipe.state_dir}", file=out)
    running: list[str] = []
    for index, stage in enumerate(recipe.stages, 1):
        for name in [n for n in running if n not in stage.endpoints]:
            print(f"#   stop endpoint {name}", file=out)
            running.remove(name)
        for name in [n for n in stage.endpoints if n not in running]:
            endpoint = recipe.endpoints[name]
            if endpoint.serve:
                env = " ".join(f"{k}={shlex.quote(v)}" for k, v in endpoint.env.items())
                command = shlex.join([part.replace("${port}", "PORT") for part in endpoint.serve])
                env = env.replace("${port}", "PORT")
                print(f"#   start endpoint {name}: {(env + ' ') if env else ''}{command}", file=out)
                print(
                    f"#     (PORT: a free port of {LOCALHOST}; ready when GET "
                    f"http://{LOCALHOST}:PORT/v1/models answers)",
                    file=out,
                )
            else:
                print(f"#   endpoint {name}: {endpoint.url} (given)", file=out)
            running.append(name)
        _, _, shown = stage_command(recipe, stage, {})
        print(f"[{index}/{len(recipe.stages)}] {stage.name}", file=out)
        print(f"  {shown}", file=out)
    for name in running:
        print(f"#   stop endpoint {name}", file=out)
    return _report_check(result, out)


def _report_check(result: CheckResult, out: TextIO) -> int:
    if result.warnings:
        print(
            f"# external inputs not found here ({len(result.warnings)}; they must exist where the recipe runs):",
            file=out,
        )
        for warning in result.warnings:
            print(f"#   {warning}", file=out)
    if result.errors:
        print(f"# {len(result.errors)} problem(s):", file=out)
        for error in result.errors:
            print(f"  {error}", file=out)
        return 1
    print("# check: every dataset and path each stage reads is written by an earlier stage or exists", file=out)
    return 0


def _current(
    recipe: Recipe, stage: Stage, known: dict[str, dict[str, Any]]
) -> tuple[StepIO, dict[str, Any], dict[str, Any], str]:
    io = stage_io(stage, known)
    definition = stage_definition(recipe, stage)
    inputs = {**stage_inputs(io), **endpoint_inputs(recipe, stage)}
    return io, definition, inputs, fingerprint(definition, inputs)


def _missing_outputs(io: StepIO) -> list[str]:
    return [path for path in io.outputs if not Path(path).exists()]


def describe(recipe: Recipe, stage: Stage, record: dict[str, Any] | None, current: tuple | None) -> tuple[str, str]:
    """(state, detail) of a stage: done, changed, unfinished, not run, waiting."""
    if current is None:
        return ("waiting", "an earlier stage has not written its inputs yet")
    io, _, inputs, print_ = current
    if record is None:
        return ("not run", "")
    if record.get("status") != "finished":
        return ("unfinished", f"started {record.get('started_at')}, killed or failed; log {record.get('log')}")
    if record.get("fingerprint") != print_:
        changed = changed_inputs(record.get("inputs", {}), inputs)
        if record.get("definition") != stage_definition(recipe, stage):
            changed = ["the stage definition", *changed]
        return ("changed", "changed: " + ", ".join(changed[:6]) + (" ..." if len(changed) > 6 else ""))
    missing = _missing_outputs(io)
    if missing:
        return ("outputs missing", ", ".join(missing[:3]))
    return ("done", f"finished {record.get('finished_at')} in {record.get('seconds', 0):.0f} s")


def status(recipe: Recipe, out: TextIO) -> int:
    state = State(recipe)
    run = state.run() or {}
    lock_holder = _lock_holder(state)
    where = f"running (pid {run.get('pid')}, stage {run.get('stage')})" if lock_holder else "not running"
    if run and not lock_holder:
        if run.get("status") == "running":  # the runner died without a word (kill -9, a lost node)
            where += f"; the last run (started {run.get('started_at')}) was killed during stage {run.get('stage')}"
        else:
            where += f"; the last run {run.get('status')} at {run.get('ended_at')}"
    print(f"# {recipe.path}: {where}", file=out)
    known: dict[str, dict[str, Any]] = {}
    counts: dict[str, int] = {}
    for index, stage in enumerate(recipe.stages, 1):
        try:
            current = _current(recipe, stage, known)
            known.update(current[0].configs_written)
        except RecipeError:
            current = None
        label, detail = describe(recipe, stage, state.record(stage), current)
        if label == "unfinished" and lock_holder and run.get("stage") == stage.name:
            label, detail = (
                "running",
                f"since {state.record(stage).get('started_at')}; log {state.logs / (stage.name + '.log')}",
            )
        counts[label] = counts.get(label, 0) + 1
        print(f"[{index}/{len(recipe.stages)}] {label:<15} {stage.name:<24} {detail}", file=out)
    print("# " + ", ".join(f"{count} {label}" for label, count in counts.items()), file=out)
    return 0


def _lock_holder(state: State) -> bool:
    path = state.dir / "lock"
    if not path.exists():
        return False
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def _last_checkpoint(output_dir: str) -> str | None:
    """The newest ``checkpoint-N`` whose trainer_state.json was written (the Trainer writes it last)."""
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if step.isdigit() and (path / "trainer_state.json").is_file():
            found.append((int(step), path))
    return str(max(found)[1]) if found else None


def _remove(patterns: list[str], say: Callable[[str], None]) -> None:
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            say(f"  removing {path} (state of a run with other inputs)")
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)


def _terminate_tree(process: subprocess.Popen) -> None:
    try:
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.terminate()
    _, alive = psutil.wait_procs(tree, timeout=STOP_GRACE_S)
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()


class Runner:
    def __init__(self, recipe: Recipe, out: TextIO, echo: bool = True) -> None:
        self.recipe = recipe
        self.state = State(recipe)
        self.out = out
        self.echo = echo
        self.endpoints: dict[str, RunningEndpoint] = {}
        self.process: subprocess.Popen | None = None

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # --- processes
    def _execute(self, argv: list[str], env: dict[str, str], log: Path, lock_fd: int | None) -> int:
        log.parent.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        with open(log, "ab") as handle:
            handle.write(f"\n===== {_now()} {shlex.join(argv)}\n".encode())
            handle.flush()
            self.process = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=full_env,
                pass_fds=(lock_fd,) if lock_fd is not None else (),
            )
            assert self.process.stdout is not None
            console = getattr(self.out, "buffer", None)
            while chunk := os.read(self.process.stdout.fileno(), 65536):
                handle.write(chunk)
                handle.flush()
                if self.echo:
                    if console is not None:
                        console.write(chunk)
                        console.flush()
                    else:
                        self.out.write(chunk.decode("utf-8", "replace"))
            code = self.process.wait()
            self.process = None
            return code

    def _stop_endpoints(self, keep: tuple[str, ...] = ()) -> None:
        for name in [name for name in self.endpoints if name not in keep]:
            self.say(f"  stopping endpoint {name}")
            self.endpoints.pop(name).stop()

    def _start_endpoints(self, stage: Stage) -> None:
        self._stop_endpoints(keep=stage.endpoints)
        for name in stage.endpoints:
            if name not in self.endpoints:
                self.endpoints[name] = start(self.recipe.endpoints[name], self.state.logs, self.say)

    # --- the head
    def run(self, force: tuple[str, ...] = ()) -> int:
        for name in force:
            self.recipe.stage(name)
        try:
            result = check_recipe(self.recipe)
        except RecipeError as error:
            self.say(f"sfmed recipe run: {error}")
            return 2
        if result.errors:
            _report_check(result, self.out)
            self.say("sfmed recipe run: the recipe does not hold together; nothing was run.")
            return 2
        self.state.dir.mkdir(parents=True, exist_ok=True)
        lock = open(self.state.dir / "lock", "a+")  # noqa: SIM115 - held for the whole run
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            run = self.state.run() or {}
            self.say(
                f"sfmed recipe run: another run holds {self.state.dir / 'lock'} (pid {run.get('pid')}); "
                "see `sfmed recipe status`."
            )
            return 3
        run = {"run_id": uuid.uuid4().hex, "pid": os.getpid(), "status": "running", "started_at": _now(), "stage": None}
        self.state.write_run(run)
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        code = 1
        try:
            code = self._run_stages(run, force, lock.fileno())
        except EndpointFailed as error:
            self.say(f"sfmed recipe run: {error}")
            code = 1
        except RecipeError as error:
            self.say(f"sfmed recipe run: {error}")
            code = 2
        except (KeyboardInterrupt, Interrupted):
            self.say("sfmed recipe run: interrupted; the stage in progress is not marked finished.")
            code = 130
        finally:
            if self.process is not None and self.process.poll() is None:
                _terminate_tree(self.process)
            self._stop_endpoints()
            signal.signal(signal.SIGTERM, previous)
            run.update(status="finished" if code == 0 else "failed", ended_at=_now())
            self.state.write_run(run)
            lock.close()
        return code

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        raise Interrupted()

    def _run_stages(self, run: dict[str, Any], force: tuple[str, ...], lock_fd: int) -> int:
        total = len(self.recipe.stages)
        known: dict[str, dict[str, Any]] = {}
        ran = 0
        for index, stage in enumerate(self.recipe.stages, 1):
            head = f"[{index}/{total}] {stage.name}"
            io, definition, inputs, print_ = _current(self.recipe, stage, known)
            known.update(io.configs_written)
            record = self.state.record(stage)
            label, detail = describe(self.recipe, stage, record, (io, definition, inputs, print_))
            if label == "done" and stage.name not in force:
                self.say(f"{head}: done, skipped ({detail})")
                continue
            resumed = record is not None and record.get("status") == "started" and record.get("fingerprint") == print_
            if label == "changed":
                self.say(f"{head}: {detail}")
            if not resumed:  # a step resumes only work done for these very inputs
                _remove(io.stale, self.say)
            extra: dict[str, Any] = {}
            if resumed and stage.kind == "train" and io.outputs and (checkpoint := _last_checkpoint(io.outputs[0])):
                extra["resume_from_checkpoint"] = checkpoint
                self.say(f"  resuming from {checkpoint}")
            self._start_endpoints(stage)
            urls = {name: running.url for name, running in self.endpoints.items()}
            argv, env, shown = stage_command(self.recipe, stage, urls, extra)
            attempt = uuid.uuid4().hex
            log = self.state.logs / f"{stage.name}.log"
            started = {
                "stage": stage.name,
                "status": "started",
                "run_id": run["run_id"],
                "attempt": attempt,
                "fingerprint": print_,
                "definition": definition,
                "inputs": inputs,
                "command": shown,
                "argv": argv,
                "env": env,
                "launch": stage.launch,
                "log": str(log),
                "started_at": _now(),
            }
            self.state.write_record(stage, started)
            run["stage"] = stage.name
            self.state.write_run(run)
            how = "running again (an earlier attempt did not finish)" if resumed else "running"
            self.say(f"{head}: {how}: {shown}  (log {log})")
            begin = time.monotonic()
            code = self._execute(argv, env, log, lock_fd)
            seconds = time.monotonic() - begin
            missing = _missing_outputs(io)
            if code != 0 or missing:
                why = f"exited with code {code}" if code != 0 else f"did not write {', '.join(missing)}"
                self.say(
                    f"{head}: FAILED after {seconds:.0f} s ({why}); log {log}. "
                    "Fix and run again: finished stages are kept."
                )
                return 1
            outputs = {path: path_digest(path) for path in io.outputs}
            self.state.write_record(
                stage, {**started, "status": "finished", "outputs": outputs, "finished_at": _now(), "seconds": seconds}
            )
            ran += 1
            self.say(f"{head}: finished in {seconds:.1f} s")
        self._stop_endpoints()
        self.say(f"sfmed recipe run: all {total} stages done ({ran} run, {total - ran} already done).")
        return 0

    # --- a follower rank
    def follow(self, node_rank: int) -> int:
        self.say(f"sfmed recipe run: node {node_rank} follows the training stages of the run in {self.state.dir}")
        joined: set[str] = set()
        run_id = None
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            while True:
                run = self.state.run()
                if run and run.get("status") == "running" and run_id is None:
                    run_id = run["run_id"]
                    self.say(f"  following run {run_id} (pid {run.get('pid')} on the head)")
                for stage in self.recipe.stages:
                    record = self.state.record(stage)
                    if (
                        run_id is None
                        or stage.kind != "train"
                        or record is None
                        or record.get("run_id") != run_id
                        or record.get("status") != "started"
                        or record["attempt"] in joined
                        or int(record.get("launch", {}).get("NNODES", 1)) <= node_rank
                    ):
                        continue
                    joined.add(record["attempt"])
                    env = {**record["env"], "NODE_RANK": str(node_rank)}
                    log = self.state.logs / f"{stage.name}.node{node_rank}.log"
                    self.say(f"  {stage.name}: joining as node {node_rank}: {record['command']}  (log {log})")
                    code = self._execute(record["argv"], env, log, None)
                    self.say(f"  {stage.name}: node {node_rank} exited with code {code}")
                if run_id is not None and run and run.get("run_id") == run_id and run.get("status") != "running":
                    self.say(f"sfmed recipe run: the head's run {run.get('status')}")
                    return 0 if run.get("status") == "finished" else 1
                time.sleep(FOLLOW_POLL_S)
        except (KeyboardInterrupt, Interrupted):
            return 130
        finally:
            if self.process is not None and self.process.poll() is None:
                _terminate_tree(self.process)
            signal.signal(signal.SIGTERM, previous)

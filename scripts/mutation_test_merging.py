"""Mutation testing of sfmed_lf/merging/: how many small deliberate bugs the unit tests catch.

    python scripts/mutation_test_merging.py                  # all mutants, 2 workers
    python scripts/mutation_test_merging.py --workers 1 --limit 50 --files masks.py sparsify.py
    python scripts/mutation_test_merging.py --list           # print the mutants only
    python scripts/mutation_test_merging.py --sample 200     # a random sample: the kill rate as an estimate

Each mutant changes one thing in one module: an arithmetic, comparison, boolean or in-place operator swapped, a
numeric constant moved (0 <-> 1, n -> n + 1, x -> 2x), True <-> False, ``not`` dropped, or one statement (a call,
an assignment, an in-place update) removed. The mutated package is written to a scratch copy, and the fast merging
tests (``TESTS``) run against it with ``-x`` in a process forked from one that has already imported torch, numpy
and pytest, so that a mutant costs only its test time; the mutants they let through meet the FSDP torchrun tests
(``SLOW_TESTS``) in a second round. A mutant is killed when a test fails, errors or times out.
Mutants in docstrings, error messages, type annotations and ``__repr__``-like code are not generated.

The run writes benchmarks/results/mutation_merging.json: the kill rate and every surviving mutant (file, line,
what changed), to be read one by one: a survivor is either a missing test or an equivalent mutant. Not run in CI
(about an hour on two cores).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "sfmed_lf" / "merging"
TESTS = [
    "tests/test_online_merging_optimizer.py",
    "tests/test_online_merging_masks.py",
    "tests/test_task_vector.py",
]
# Second round, for the mutants the fast tests let through: FSDP1/FSDP2 on two torchrun ranks (about a minute each).
SLOW_TESTS = ["tests/test_fsdp_merging.py"]
BINARY_SWAPS = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div,
    ast.Mod: ast.FloorDiv,
    ast.Pow: ast.Mult,
    ast.LShift: ast.RShift,
    ast.RShift: ast.LShift,
    ast.BitAnd: ast.BitOr,
    ast.BitOr: ast.BitAnd,
    ast.BitXor: ast.BitOr,
}
COMPARE_SWAPS = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}


@dataclass(frozen=True)
class Mutant:
    file: str
    line: int
    index: int  # position of the mutated node in the module's walk order, to find it again
    kind: str
    description: str


def _skipped_nodes(tree: ast.Module) -> set[int]:
    """Nodes not worth mutating: docstrings, annotations, raise statements (messages), f-string parts."""
    skipped: set[int] = set()

    def skip(node: ast.AST) -> None:
        skipped.update(id(child) for child in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Module)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                skip(first)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for argument in [*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs]:
                if argument.annotation is not None:
                    skip(argument.annotation)
            if node.returns is not None:
                skip(node.returns)
        if isinstance(node, ast.AnnAssign):
            skip(node.annotation)
        if isinstance(node, (ast.Raise, ast.JoinedStr, ast.Import, ast.ImportFrom)):
            skip(node)
    return skipped


def _mutations(node: ast.AST) -> Iterator[tuple[str, str]]:
    """(kind, description) of every mutation applicable to one node."""
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY_SWAPS:
        yield "binary", f"{type(node.op).__name__} -> {BINARY_SWAPS[type(node.op)].__name__}"
    elif isinstance(node, ast.AugAssign):
        if type(node.op) in BINARY_SWAPS:
            yield "augmented", f"{type(node.op).__name__}= -> {BINARY_SWAPS[type(node.op)].__name__}="
        yield "remove", "in-place update removed"
    elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in COMPARE_SWAPS:
        yield "compare", f"{type(node.ops[0]).__name__} -> {COMPARE_SWAPS[type(node.ops[0])].__name__}"
    elif isinstance(node, ast.BoolOp):
        yield "boolean", "and <-> or"
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub, ast.Invert)):
        yield "unary", f"{type(node.op).__name__} dropped"
    elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
        yield "constant", f"{node.value} -> {not node.value}"
    elif isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        yield "constant", f"{node.value!r} -> {_moved_number(node.value)!r}"
    elif isinstance(node, (ast.Expr, ast.Assign)) and not isinstance(getattr(node, "value", None), ast.Constant):
        yield "remove", f"{type(node).__name__} statement removed"


def _moved_number(value: int | float) -> int | float:
    if value == 0:
        return 1
    if value == 1:
        return 0 if isinstance(value, int) else 2.0
    return value + 1 if isinstance(value, int) else value * 2


def enumerate_mutants(files: list[Path]) -> list[Mutant]:
    mutants = []
    for path in files:
        tree = ast.parse(path.read_text())
        skipped = _skipped_nodes(tree)
        for index, node in enumerate(ast.walk(tree)):
            if id(node) in skipped:
                continue
            for kind, description in _mutations(node):
                mutants.append(Mutant(path.name, getattr(node, "lineno", 0), index, kind, description))
    return mutants


class _Apply(ast.NodeTransformer):
    def __init__(self, target: ast.AST, mutant: Mutant) -> None:
        self.target, self.mutant = target, mutant

    def visit(self, node: ast.AST) -> ast.AST | None:
        if node is not self.target:
            return super().visit(node)
        kind = self.mutant.kind
        if kind == "binary" or kind == "augmented":
            node.op = BINARY_SWAPS[type(node.op)]()
        elif kind == "compare":
            node.ops = [COMPARE_SWAPS[type(node.ops[0])]()]
        elif kind == "boolean":
            node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        elif kind == "unary":
            return node.operand
        elif kind == "constant":
            node.value = (not node.value) if isinstance(node.value, bool) else _moved_number(node.value)
        elif kind == "remove":
            return ast.Pass()
        return node


def mutated_source(path: Path, mutant: Mutant) -> str:
    tree = ast.parse(path.read_text())
    target = list(ast.walk(tree))[mutant.index]
    tree = _Apply(target, mutant).visit(tree)
    return ast.unparse(ast.fix_missing_locations(tree))


def _run_tests(workdir: str, tests: list[str], timeout: float) -> int:
    """Fork a child that imports the mutated package from ``workdir`` and runs ``tests``; its exit status."""
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.chdir(workdir)
            sys.path.insert(0, workdir)
            os.environ["PYTHONPATH"] = workdir  # for the subprocesses tests start (torchrun)
            # the interpreter's start-up hook (sfmed_lf.pth) may have imported the real package: forget it
            for name in [name for name in sys.modules if name.split(".")[0] in ("sfmed_lf", "tests")]:
                del sys.modules[name]
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            import pytest

            code = pytest.main(["-x", "-q", "-p", "no:cacheprovider", *tests])
        except BaseException:
            code = 99
        os._exit(int(code))
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return -9
        time.sleep(0.05)


def _worker(job: tuple[list[Mutant], list[str], float, int]) -> list[dict]:
    mutants, tests, timeout, worker_id = job
    workdir = tempfile.mkdtemp(prefix=f"sfmed-mutants-{worker_id}-")
    shutil.copytree(REPO_ROOT / "sfmed_lf", Path(workdir) / "sfmed_lf", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO_ROOT / "tests", Path(workdir) / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", workdir)
    results = []
    try:
        for mutant in mutants:
            target = Path(workdir) / "sfmed_lf" / "merging" / mutant.file
            original = target.read_text()
            target.write_text(mutated_source(PACKAGE / mutant.file, mutant))
            started = time.monotonic()
            code = _run_tests(workdir, tests, timeout)
            target.write_text(original)
            status = "survived" if code == 0 else ("timeout" if code == -9 else "killed")
            results.append({**asdict(mutant), "status": status, "seconds": round(time.monotonic() - started, 1)})
            print(f"[{worker_id}] {status:8s} {mutant.file}:{mutant.line} {mutant.description}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def _survived(result: dict) -> bool:
    return result["status"] == "survived"


def _run_round(mutants: list[Mutant], tests: list[str], args: argparse.Namespace) -> list[dict]:
    jobs = [(mutants[worker :: args.workers], tests, args.timeout, worker) for worker in range(args.workers)]
    with multiprocessing.get_context("fork").Pool(args.workers) as pool:
        return [result for batch in pool.map(_worker, jobs) for result in batch]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", nargs="*", help="module file names under sfmed_lf/merging (default: all)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, help="run only the first N mutants (a smoke run)")
    parser.add_argument("--sample", type=int, help="a random sample of N mutants (the kill rate is then an estimate)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant before it counts as killed")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--fast-only", action="store_true", help="skip the second round (FSDP torchrun tests)")
    parser.add_argument("--output", default="benchmarks/results/mutation_merging.json")
    args = parser.parse_args()
    files = sorted(PACKAGE.glob("*.py")) if not args.files else [PACKAGE / name for name in args.files]
    mutants = enumerate_mutants(files)
    if args.sample and args.sample < len(mutants):  # a uniform random sample, reproducible
        mutants = sorted(random.Random(args.seed).sample(mutants, args.sample), key=lambda m: (m.file, m.index))
    mutants = mutants[: args.limit]
    if args.list:
        for mutant in mutants:
            print(f"{mutant.file}:{mutant.line} {mutant.kind}: {mutant.description}")
        print(f"{len(mutants)} mutants")
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import numpy  # noqa: F401 - imported before forking, so that each mutant's process starts warm
    import pytest
    import torch

    torch.set_num_threads(1)
    # Warm up once, rather than in every forked mutant: pytest's plugins (hypothesis alone takes seconds to import),
    # the tests' imports, and torch's lazily initialized CPU kernels.
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *TESTS, *SLOW_TESTS])
    warm = [torch.randn(64, requires_grad=True)]
    warm[0].grad = torch.randn(64)
    torch.optim.AdamW(warm, foreach=True).step()
    started = time.monotonic()
    results = _run_round(mutants, TESTS, args)
    survivors = [Mutant(**{key: r[key] for key in Mutant.__dataclass_fields__}) for r in results if _survived(r)]
    if survivors and not args.fast_only:
        print(f"second round: {len(survivors)} survivors against {' '.join(SLOW_TESTS)}", flush=True)
        second = {(r["file"], r["index"], r["description"]): r for r in _run_round(survivors, SLOW_TESTS, args)}
        for result in results:
            key = (result["file"], result["index"], result["description"])
            if key in second and not _survived(second[key]):
                result.update(status=f"{second[key]['status']} (slow tests)", seconds=second[key]["seconds"])
    killed = sum(not _survived(result) for result in results)
    summary = {
        "enumerated": len(enumerate_mutants(files)),
        "sample_seed": args.seed if args.sample else None,
        "mutants": len(results),
        "killed": killed,
        "survived": len(results) - killed,
        "timeouts": sum(result["status"].startswith("timeout") for result in results),
        "kill_rate": killed / len(results) if results else 0.0,
        "minutes": round((time.monotonic() - started) / 60, 1),
        "tests": TESTS,
        "slow_tests": [] if args.fast_only else SLOW_TESTS,
        "by_file": {
            name: f"{sum(not _survived(r) for r in results if r['file'] == name)}/"
            f"{sum(r['file'] == name for r in results)}"
            for name in sorted({r["file"] for r in results})
        },
        "survivors": sorted((r for r in results if _survived(r)), key=lambda r: (r["file"], r["line"], r["index"])),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{killed}/{len(results)} mutants killed ({summary['kill_rate']:.1%}) in {summary['minutes']} min")
    for survivor in summary["survivors"]:
        print(f"  survived: {survivor['file']}:{survivor['line']} {survivor['description']}")


if __name__ == "__main__":
    main()

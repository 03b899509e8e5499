"""The architecture's rules are enforced by tools, not by comments: import-linter keeps shared/ pure
and the two backends apart, mypy checks shared/, ruff checks everything.

The contracts are read from pyproject.toml, so these tests check what the contracts say (the I/O
modules shared/ may not import, the backends that must stay independent) and prove each contract
live by planting a violation in a copy of the tree."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# What "pure" means for shared/: no files, host, processes, threads, network, clock, randomness or
# backend. The contract may forbid more; it may not forbid less.
REQUIRED_FORBIDDEN = {
    "os", "pathlib", "io", "shutil", "tempfile", "threading", "sys", "time", "random",
    "socket", "subprocess", "simpy", "pyroute2", "pvsim", "pvreal",
}  # fmt: skip
# Builtins that do I/O or import by name, which import-linter cannot see.
IMPURE_BUILTINS = {"open", "print", "input", "breakpoint", "exec", "eval", "__import__"}


def _contracts() -> dict[str, dict]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def _tool(name: str) -> str:
    exe = BIN / name
    return str(exe) if exe.exists() else (shutil.which(name) or name)


def _lint_imports(repo: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_tool("lint-imports"), "--no-cache"], cwd=repo, capture_output=True, text=True,
        timeout=120, env=env,
    )  # fmt: skip


def _verdicts(output: str) -> dict[str, str]:
    """Contract name -> KEPT or BROKEN, from lint-imports' summary lines."""
    return dict(re.findall(r"^(.+) (KEPT|BROKEN)$", output, re.MULTILINE))


def test_shared_contract_forbids_every_io_module():
    pure = _contracts()["shared-pure"]
    assert pure["type"] == "forbidden"
    assert pure["source_modules"] == ["shared"]
    missing = REQUIRED_FORBIDDEN - set(pure["forbidden_modules"])
    assert not missing, f"shared/ may import {sorted(missing)}"
    assert not pure.get("allow_indirect_imports"), "an import through another module is one too"


def test_backends_contract_keeps_pvsim_and_pvreal_apart():
    independent = _contracts()["backends-independent"]
    assert independent["type"] == "independence"
    assert set(independent["modules"]) == {"pvsim", "pvreal"}


def test_lint_imports_keeps_every_contract():
    result = _lint_imports(REPO)
    verdicts = _verdicts(result.stdout)
    names = {c["name"] for c in _contracts().values()}
    assert set(verdicts) == names, result.stdout + result.stderr
    assert set(verdicts.values()) == {"KEPT"}, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


def test_contracts_catch_planted_violations(tmp_path):
    """The contracts are live: a copy of the tree that imports every required I/O module in shared/
    and each backend from the other must break both, naming each planted import."""
    copy = tmp_path / "repo"
    shutil.copytree(
        REPO, copy,
        ignore=shutil.ignore_patterns(".venv", ".git", "results", "*.png", ".*_cache"),
    )  # fmt: skip
    (copy / "shared" / "leak.py").write_text(
        "".join(f"import {module}\n" for module in sorted(REQUIRED_FORBIDDEN))
    )
    (copy / "pvsim" / "leak.py").write_text("import pvreal\n")
    (copy / "pvreal" / "leak.py").write_text("import pvsim.hub\n")
    result = _lint_imports(copy, env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0
    contracts = _contracts()
    verdicts = _verdicts(result.stdout)
    assert verdicts[contracts["shared-pure"]["name"]] == "BROKEN"
    assert verdicts[contracts["backends-independent"]["name"]] == "BROKEN"
    leaks = set(re.findall(r"shared\.leak -> (\w+)", result.stdout))
    assert leaks == REQUIRED_FORBIDDEN, result.stdout
    assert "pvsim.leak -> pvreal" in result.stdout
    assert "pvreal.leak -> pvsim.hub" in result.stdout


def _impure_calls(tree: ast.Module) -> list[str]:
    """Calls of IMPURE_BUILTINS outside an `if __name__ == "__main__":` block."""
    guarded = {
        id(node)
        for stmt in tree.body
        if isinstance(stmt, ast.If) and "__main__" in ast.unparse(stmt.test)
        for node in ast.walk(stmt)
    }
    return [
        f"{node.func.id} (l.{node.lineno})"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        and node.func.id in IMPURE_BUILTINS and id(node) not in guarded
    ]  # fmt: skip


def test_shared_calls_no_io_builtins():
    found = {
        str(path.relative_to(REPO)): calls
        for path in sorted((REPO / "shared").rglob("*.py"))
        if (calls := _impure_calls(ast.parse(path.read_text(), str(path))))
    }
    assert not found, f"I/O builtins in shared/: {found}"


def test_impure_builtin_check_sees_a_print():
    assert _impure_calls(ast.parse("def f():\n    print(1)\n")) == ["print (l.2)"]
    assert _impure_calls(ast.parse("if __name__ == '__main__':\n    print(1)\n")) == []


def test_mypy_shared_is_clean():
    result = subprocess.run(
        [_tool("mypy"), "shared/"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_is_clean():
    result = subprocess.run(
        [_tool("ruff"), "check", "."], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr

"""The pipeline's stages (sources -> engine -> sinks) do not import each other.

What crosses a stage boundary lives in a stage-neutral module (:mod:`monitor.model`,
:mod:`monitor.pipeline`); each stage imports only those, the configuration, a few
utility modules and its own parts. The daemon and the CLI wire the stages together and
are exempt. Lazy imports (inside functions, under ``TYPE_CHECKING``) count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "monitor"
STAGES = ("sources", "engine", "sinks")
#: What any stage may import besides its own stage.
NEUTRAL = ("monitor.model", "monitor.pipeline", "monitor.config")
#: Utility modules that belong to no stage (and import none).
UTILITIES = (
    "monitor.hl7v2",  # MLLP framing, HL7 escaping, MDC codes: HL7 in (sources) and out (sinks)
    "monitor.metrics",  # Sample, for a source's own /metrics samples
    "monitor.mqtt",  # the broker client
    "monitor.privacy",
    "monitor.queues",
    "monitor.registry",  # the type -> factory registries
    "monitor.tasks",  # threads with a deadline, cancellations never lost
)


def _allowed(module: str, stage: str) -> bool:
    return any(
        module == m or module.startswith(m + ".")
        for m in (f"monitor.{stage}", *NEUTRAL, *UTILITIES)
    )


def _imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """``(line, module)`` of every import of a ``monitor`` module in ``path`` (a file
    under ``root``, the ``monitor`` package), wherever it is (module level, in a
    function, under ``TYPE_CHECKING``). Relative imports are resolved, and ``from
    monitor import sources`` counts as ``monitor.sources``."""
    package = list(path.relative_to(root.parent).with_suffix("").parts)
    if path.name != "__init__.py":
        package.pop()
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            if module == "monitor":  # from monitor import sources
                found += [(node.lineno, f"monitor.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, module))
    return [(line, m) for line, m in found if m.startswith("monitor.")]


def _modules(stage: str) -> list[Path]:
    return sorted((ROOT / stage).rglob("*.py"))


@pytest.mark.parametrize("stage", STAGES)
def test_stage_imports_no_other_stage(stage: str) -> None:
    modules = _modules(stage)
    assert modules, f"no modules under monitor/{stage}"
    wrong = [
        f"{path.relative_to(ROOT.parent)}:{line}: {module}"
        for path in modules
        for line, module in _imports(path)
        if not _allowed(module, stage)
    ]
    assert not wrong, "imports across stages (move the type to monitor.pipeline):\n" + "\n".join(
        wrong
    )


@pytest.mark.parametrize("module", [*NEUTRAL, *UTILITIES])
def test_neutral_modules_import_no_stage(module: str) -> None:
    """The neutral and utility modules import no stage (else a stage would import
    another through them)."""
    path = ROOT.parent.joinpath(*module.split("."))
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
    wrong = [
        f"{f.relative_to(ROOT.parent)}:{line}: {m}"
        for f in files
        for line, m in _imports(f)
        if any(m == f"monitor.{s}" or m.startswith(f"monitor.{s}.") for s in STAGES)
    ]
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_a_crossing(tmp_path: Path) -> None:
    """Lazy, relative and package-level imports are found (the check is not vacuous)."""
    probe = tmp_path / "monitor" / "sinks" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text(
        "from monitor.pipeline import Sink\n"
        "from . import retention\n"
        "def f():\n"
        "    from monitor.engine.score import RULE\n"
        "    from .. import sources\n"
        "    return RULE, sources, retention, Sink\n"
    )
    found = [m for _, m in _imports(probe, tmp_path / "monitor")]
    assert found == [
        "monitor.pipeline",
        "monitor.sinks",
        "monitor.engine.score",
        "monitor.sources",
    ]
    assert [m for m in found if not _allowed(m, "sinks")] == [
        "monitor.engine.score",
        "monitor.sources",
    ]

"""Every page's Python runs in CI: the code blocks of docs/*.md and README.md.

Each ```python block must compile (top-level ``await`` allowed, as in the
asyncio REPL), unless the line just before its fence marks it
``<!-- doc: fragment -->``: an illustrative piece that elides parts on
purpose.  A block marked ``<!-- doc: runs -->`` is also executed: the
blocks of a page so marked run in order in one namespace (a later block
may use an earlier one's names), top-level ``await`` included, and every
``test_*`` function a block defines without parameters is called, as
pytest would.  They talk only to loopback servers (ScriptedSMTPServer) or
to none (ScriptedTransport).

The README's first example is also type-checked under mypy --strict: it
is kept word for word in tests/_readme_example.py, which mypy checks with
the rest of tests/, and this test makes sure the two do not drift.
"""

from __future__ import annotations

import ast
import inspect
import re
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
_MARK = re.compile(r"^\s*<!--\s*doc:\s*(fragment|runs)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    code: str
    mark: str | None  # "fragment", "runs" or None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def python_blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    out = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = m.group(1), m.group(2)
        j = i + 1
        while j < len(lines) and not re.match(r"^\s*```\s*$", lines[j]):
            j += 1
        if lang in ("python", "py"):
            body = "\n".join(line[len(indent) :] for line in lines[i + 1 : j])
            k = i - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            mark = _MARK.match(lines[k]) if k >= 0 else None
            out.append(Block(page, i + 1, body + "\n", mark.group(1) if mark else None))
        i = j + 1
    return out


BLOCKS = [b for page in PAGES for b in python_blocks(page)]
RUNNABLE = sorted({b.page for b in BLOCKS if b.mark == "runs"})


def _compile(block: Block) -> types.CodeType:
    code: types.CodeType = compile(
        block.code, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    )
    return code


def test_the_pages_have_python_blocks() -> None:
    # The scan itself works: a broken fence pattern would pass everything.
    assert len(BLOCKS) > 40
    assert any(b.mark == "runs" for b in BLOCKS)


@pytest.mark.parametrize(
    "block", [b for b in BLOCKS if b.mark != "fragment"], ids=lambda b: b.where
)
def test_every_block_compiles(block: Block) -> None:
    try:
        _compile(block)
    except SyntaxError as exc:
        pytest.fail(
            f"{block.where}: {exc.msg} (block line {exc.lineno}); fix it, or mark it "
            "<!-- doc: fragment --> if it elides code on purpose"
        )


@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: p.name)
async def test_runnable_blocks_run(page: Path) -> None:
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for block in python_blocks(page):
        if block.mark != "runs":
            continue
        before = set(namespace)
        # The asyncio REPL's way: a code object compiled with top-level
        # await is a coroutine function's body.
        result = types.FunctionType(_compile(block), namespace)()
        if inspect.isawaitable(result):
            await result
        for name in sorted(set(namespace) - before):
            test = namespace[name]
            if name.startswith("test_") and callable(test):
                if inspect.signature(test).parameters:
                    continue  # it wants fixtures: compiled, not called
                outcome = test()
                if inspect.isawaitable(outcome):
                    await outcome


def test_the_readme_example_is_the_type_checked_one() -> None:
    checked = (ROOT / "tests" / "_readme_example.py").read_text(encoding="utf-8")
    example = checked.split("# --- the README's example ---\n", 1)[1]
    readme = [b.code for b in python_blocks(ROOT / "README.md")]
    assert example in readme, "README.md's first example and tests/_readme_example.py differ"


def test_troubleshooting_explains_every_reason() -> None:
    from resilient_smtp import Reason

    page = (ROOT / "docs" / "troubleshooting.md").read_text(encoding="utf-8")
    missing = [r.value for r in Reason if f"| `{r.value}` |" not in page]
    assert missing == [], f"docs/troubleshooting.md lacks a row for {missing}"

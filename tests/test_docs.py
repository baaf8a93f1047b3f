"""The documentation: `make docs` builds without warnings, and its examples run.

The build covers every page and every autodoc reference. The examples are
taken from the pages themselves: the example tests of "Testing your protocol"
and "Sensing and admission" run under pytest, and the other snippets run in
the smallest program that gives them what they use (a manager, a connection...),
so that a snippet that no longer matches the API fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


def python_blocks(page: str) -> list[str]:
    """The ```python blocks of ``docs/page``, dedented (some sit in list items)."""
    text = (DOCS / page).read_text(encoding="utf-8")
    return [
        textwrap.dedent(body)
        for indent, body in re.findall(r"^( *)```python\n(.*?)^\1```", text, re.S | re.M)
    ]


def python_block(page: str, marker: str) -> str:
    """The one python block of ``docs/page`` that contains ``marker``."""
    found = [block for block in python_blocks(page) if marker in block]
    assert len(found) == 1, f"{len(found)} python blocks of docs/{page} contain {marker!r}"
    return found[0]


def fill(template: str) -> str:
    """``template`` with each ``{{page|marker}}`` line replaced by that block, indented
    like the placeholder."""

    def block(match: re.Match[str]) -> str:
        indent, page, marker = match.groups()
        return textwrap.indent(python_block(page, marker), indent)

    return re.sub(r"^( *)\{\{(.+?)\|(.+?)\}\}$", block, textwrap.dedent(template), flags=re.M)


def run_python(path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


@pytest.mark.timeout(240)
def test_docs_build_without_warnings(tmp_path: Path) -> None:
    pytest.importorskip("sphinx", reason="building the docs needs the `docs` extra")
    pytest.importorskip("myst_parser", reason="building the docs needs the `docs` extra")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            str(DOCS),
            str(tmp_path / "html"),
        ],
        capture_output=True,
        text=True,
        timeout=230,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    assert (tmp_path / "html" / "api.html").stat().st_size > 10_000


# What the example tests use without importing it themselves (a page shows the
# imports once, in its first example).
TEST_HEADER = """\
import pytest
import trio
import trio.testing

import trio_connmgr as cm
from trio_connmgr.sensing import FakeSensor
from trio_connmgr.testing import advance
"""


@pytest.mark.timeout(120)
def test_example_tests_of_the_docs_pass(tmp_path: Path) -> None:
    pytest.importorskip("hypothesis", reason="the property test example needs Hypothesis")
    blocks = [
        block
        for page in ("testing.md", "sensing-and-admission.md")
        for block in python_blocks(page)
        if re.search(r"^(async )?def test_", block, re.M)
    ]
    names = [
        name for block in blocks for name in re.findall(r"^(?:async )?def (test_\w+)", block, re.M)
    ]
    assert len(names) >= 5, names
    (tmp_path / "test_doc_examples.py").write_text(
        TEST_HEADER + "\n\n" + "\n\n".join(blocks), encoding="utf-8"
    )
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\ntrio_mode = true\nfilterwarnings = error\n", encoding="utf-8"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert f"{len(names)} passed" in result.stdout, result.stdout[-2000:]


# Each program runs snippets of the docs (``{{page|marker}}``: the python block of
# docs/page that contains marker) in the context they take for granted.
PROGRAMS = {
    "tutorial-start": """
        {{tutorial.md|trio.run(main)}}
    """,
    "tutorial": """
        import trio
        import trio.testing
        import trio_connmgr as cm

        peer_id = "peer-1"


        async def serve(conn): ...
        async def chat_maintenance(): ...
        async def critical_exchange(): ...


        class Socket:
            async def receive_some(self):
                return b"hello"


        sock = Socket()


        async def main():
            limits = cm.Limits(low=10, high=15, hard=20)
            async with cm.open_connection_manager(limits=limits) as mgr:
                {{tutorial.md|mgr.connection(peer_id}}
                assert conn.close_reason == "closed"
                {{tutorial.md|def score}}
                async with (
                    mgr.enroll("/chat/1.0.0", quota=cm.Quota(min=2, max=8)) as chat,
                    mgr.enroll("/ipfs/kad/1.0.0", quota=cm.Quota.share(0.1, 0.4)) as dht,
                    mgr.connection("peer-2", direction="outbound") as conn,
                ):
                    {{tutorial.md|chat.stream(conn) as stream}}
                    assert stream.nbytes == 5
                    async with chat.stream(conn) as stream:
                        {{tutorial.md|chat.lock(stream}}
                    with trio.move_on_after(1):
                        {{tutorial.md|mgr.explain(conn)}}


        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    """,
    "migration": """
        import trio
        import trio_connmgr as cm

        peer_id = "peer-1"


        def kad_score(stream):
            return 0.5


        async def main():
            {{migration.md|mgr.protect(peer_id, "relay")}}


        trio.run(main)
    """,
    "observability": """
        import logging

        import trio
        import trio.testing
        import trio_connmgr as cm

        limits = cm.Limits(low=2, high=4)


        async def main():
            async with cm.open_connection_manager(limits=limits) as mgr:
                {{observability.md|stats = mgr.statistics()}}
            {{observability.md|async def watch}}
            {{observability.md|serve_metrics}}


        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        {{observability.md|logging.basicConfig}}
    """,
    "trace": """
        import trio
        import trio.testing
        import trio_connmgr as cm

        limits = cm.Limits(low=2, high=4)


        async def main():
            {{trace.md|trace="connmgr.jsonl"}}


        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        {{trace.md|cm.replay_trace(lines)}}
        assert figures["version"] == 1
        {{trace.md|json.loads(line)}}
    """,
    "sensing-and-admission": """
        import pytest
        import trio
        import trio.testing
        import trio_connmgr as cm
        from trio_connmgr import sensing, triggers

        limits = cm.Limits(low=2, high=4)


        async def main():
            {{sensing-and-admission.md|limits=cm.Limits.auto()}}
            {{sensing-and-admission.md|class QueueDepth}}
            async with cm.open_connection_manager(
                limits=limits, sensing=cm.Sensing([QueueDepth([1, 2, 3], limit=2)], interval=1)
            ) as mgr:
                await trio.sleep(1.5)
                assert mgr.limits.high < 4
            async with (
                {{sensing-and-admission.md|triggers.FailedDials(ratio=0.5}}
                as mgr
            ):
                pass
            {{sensing-and-admission.md|admission = cm.Admission(}}
            async with cm.open_connection_manager(limits=limits, admission=admission) as mgr:
                with pytest.raises(cm.ConnectionRefused):
                    async with mgr.connection("p", direction="inbound", address="203.0.113.7"):
                        pass


        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    """,
}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_doc_snippets_run(name: str, tmp_path: Path) -> None:
    if name == "observability":
        pytest.importorskip("prometheus_client", reason="needs the `prometheus` extra")
    if name == "sensing-and-admission":
        pytest.importorskip("psutil", reason="the Memory sensor needs the `sensing` extra")
    program = tmp_path / f"{name}.py"
    program.write_text(fill(PROGRAMS[name]), encoding="utf-8")
    result = run_python(program, tmp_path)
    assert result.returncode == 0, program.read_text(encoding="utf-8") + result.stderr[-3000:]


def test_controller_figures_read_as_shown(tmp_path: Path) -> None:
    """The ``>>>`` example of sensing-and-admission.md: Limits(low=40, high=100),
    floor=20, after one sample under pressure (the default decrease of 0.7)."""
    expression, shown = python_block("sensing-and-admission.md", ">>> ").splitlines()
    program = tmp_path / "controller.py"
    program.write_text(
        textwrap.dedent(f"""\
            import trio
            import trio.testing
            import trio_connmgr as cm
            from trio_connmgr.sensing import FakeSensor


            async def main():
                sensing = cm.Sensing([FakeSensor(pressure=True)], interval=5.0, floor=20)
                limits = cm.Limits(low=40, high=100)
                async with cm.open_connection_manager(limits=limits, sensing=sensing) as mgr:
                    print(repr({expression.removeprefix(">>> ")}))


            trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        """),
        encoding="utf-8",
    )
    result = run_python(program, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == shown

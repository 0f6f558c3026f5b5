"""docs/capacity.md, the sizing guide, is what `tools.bench.capacity render` makes of the benchmark
results committed beside it (docs/capacity/*.json) and of the app's shipped settings: it cannot
drift from either, and every benchmark command it quotes is one its benchmark accepts. No benchmark
runs here."""

from __future__ import annotations

import importlib
import re
import shlex

import pytest

from config import AppSettings
from settings_base import read_settings
from tests.helpers import doc_blocks
from tools.bench import capacity

PAGE = "capacity.md"
BUDGET = "## 7. PostgreSQL connection budget"
# A quoted command runs to the end of its code span, or of its line in a code block.
COMMAND = re.compile(r"\.venv/bin/python -m tools\.bench\.(\w+)([^`\n]*)")


def page_text() -> str:
    return capacity.PAGE.read_text()


def section(text: str, heading: str) -> str:
    """The part of `text` from `heading` up to the next section of its level."""
    after = text.split(heading, 1)[1]
    return after.split("\n## ", 1)[0]


def test_the_page_is_what_its_data_renders_to():
    assert capacity.render(capacity.DATA_DIR) == page_text(), (
        "docs/capacity.md differs from its data: .venv/bin/python -m tools.bench.capacity render"
    )


def test_the_page_shows_the_command_of_every_result_it_uses():
    _, results = capacity.load(capacity.DATA_DIR)
    shown = {block.strip() for block in doc_blocks(PAGE, "# Capacity", "sh")}
    assert shown == {run["command"] for run in results.values()}


def test_every_quoted_benchmark_command_parses_with_its_benchmark():
    commands = COMMAND.findall(page_text())
    assert {module for module, _ in commands} >= {"webhooks", "apply", "status", "wakeup", "flow", "capacity"}
    for module, options in commands:
        parser = importlib.import_module(f"tools.bench.{module}").arguments()
        try:
            parser.parse_args(shlex.split(options))
        except SystemExit:
            pytest.fail(f"tools.bench.{module} refuses the page's options {options!r}")


def test_the_connection_budget_is_the_shipped_settings():
    shipped = read_settings(AppSettings, {})
    pool = shipped.DATABASE_POOL_SIZE + shipped.DATABASE_MAX_OVERFLOW
    budget = section(page_text(), BUDGET)
    assert (
        f"DATABASE_POOL_SIZE {shipped.DATABASE_POOL_SIZE} + DATABASE_MAX_OVERFLOW {shipped.DATABASE_MAX_OVERFLOW} "
        f"= {pool} |"
    ) in budget
    # Each worker's pool, and its LISTEN connection for attempt changes.
    assert f"| {shipped.WEB_CONCURRENCY * (pool + 1)} |" in budget


def test_the_connection_budget_follows_a_changed_setting():
    changed = capacity.render(capacity.DATA_DIR, {"DATABASE_MAX_OVERFLOW": "5", "WEB_CONCURRENCY": "3"})
    assert changed != page_text()
    pool_size = read_settings(AppSettings, {}).DATABASE_POOL_SIZE
    budget = section(changed, BUDGET)
    assert f"DATABASE_POOL_SIZE {pool_size} + DATABASE_MAX_OVERFLOW 5 = {pool_size + 5} |" in budget
    assert f"| {3 * (pool_size + 5 + 1)} |" in budget

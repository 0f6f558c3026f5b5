"""The dashboard's steps chart, drawn on the server as SVG (no script, no chart library, nothing the
strict CSP would block): the geometry here, the markup in templates/connect/_steps_chart.html."""

from __future__ import annotations

from dataclasses import dataclass

from services.connection_data import CHART_DAYS, DaySteps

WIDTH, HEIGHT = 420, 150
TOP, BASELINE = 18, 124  # the tallest bar reaches TOP; day labels sit below BASELINE
SLOT = WIDTH / CHART_DAYS
BAR_WIDTH = 20
MISSING_HEIGHT = 2  # a day without data: a thin mark on the baseline, not a bar of zero steps


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    height: float
    label: str  # the day of the month, under the bar
    text: str  # what the day was, for the bar's tooltip and the chart's description
    missing: bool


@dataclass(frozen=True)
class StepsChart:
    bars: list[Bar]
    peak: int
    title: str
    description: str
    width: int = WIDTH
    height: int = HEIGHT
    baseline: int = BASELINE


def _day(day) -> str:
    return f"{day.day} {day:%b}"


def steps_chart(days: list[DaySteps]) -> StepsChart:
    peak = max((day.steps or 0 for day in days), default=0)
    bars = []
    for index, day in enumerate(days):
        missing = day.steps is None
        height = MISSING_HEIGHT if missing else (BASELINE - TOP) * day.steps / peak if peak else 0
        text = f"{_day(day.day)}: " + ("no data" if missing else f"{day.steps:,} steps")
        x = index * SLOT + (SLOT - BAR_WIDTH) / 2
        bars.append(Bar(round(x, 1), round(BASELINE - height, 1), round(height, 1), str(day.day.day), text, missing))
    title = f"Steps per day, {_day(days[0].day)} to {_day(days[-1].day)}"
    description = "; ".join(bar.text for bar in bars) + "."
    return StepsChart(bars=bars, peak=peak, title=title, description=description)

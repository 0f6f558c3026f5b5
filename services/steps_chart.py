"""The dashboard's steps chart, drawn on the server as SVG (no chart library, nothing the strict CSP
would block): the geometry here, the markup in templates/connect/_steps_chart.html.

The SVG scales with its column, so its text is sized for the narrowest: FONT_SIZE units in a WIDTH-unit
box stay at 12 CSS px or more in the 286 px a card's section leaves at 360 px (static/style.css caps the
chart's width, so on a desktop it grows to about 17 px, no more)."""

from __future__ import annotations

from dataclasses import dataclass

from services.connection_data import CHART_DAYS, DaySteps

WIDTH, HEIGHT = 320, 176
FONT_SIZE = 14
HEADLINE = 16  # the top line: the peak, or the day in focus
TOP, BASELINE = 32, 150  # the scale's highest line is at TOP; day labels sit below BASELINE
LEFT = 60  # room for the scale's labels ("15,000")
SLOT = (WIDTH - LEFT) / CHART_DAYS
BAR_WIDTH = 13
MISSING_HEIGHT = 2  # a day without data: a thin mark on the baseline, not a bar of zero steps
MAX_TICKS = 4  # lines of the scale above zero


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    height: float
    label: str  # the day of the month, under the bar
    labelled: bool  # every other day shows its label (two digits a day would touch), the last day among them
    text: str  # what the day was: the bar's accessible name, tooltip and readout on focus
    missing: bool


@dataclass(frozen=True)
class Tick:
    y: float
    label: str


@dataclass(frozen=True)
class StepsChart:
    bars: list[Bar]
    ticks: list[Tick]
    peak: int
    peak_text: str  # "Peak: 14,624 steps, 12 Nov"
    title: str
    description: str
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    top: int = TOP
    baseline: int = BASELINE
    slot: float = SLOT
    bar_width: int = BAR_WIDTH
    font_size: int = FONT_SIZE
    headline: int = HEADLINE


def _day(day) -> str:
    return f"{day.day} {day:%b}"


def tick_step(peak: int) -> int:
    """The smallest round step (1, 2 or 5 times a power of ten) that covers `peak` in MAX_TICKS lines."""
    magnitude = 1
    while True:
        for multiple in (1, 2, 5):
            step = multiple * magnitude
            if step * MAX_TICKS >= peak:
                return step
        magnitude *= 10


def steps_chart(days: list[DaySteps]) -> StepsChart:
    peak = max((day.steps or 0 for day in days), default=0)
    step = tick_step(peak)
    top_value = step * -(-peak // step) if peak else step  # the scale ends on a line at or above the peak
    scale = (BASELINE - TOP) / top_value
    ticks = [Tick(round(BASELINE - value * scale, 1), f"{value:,}") for value in range(0, top_value + 1, step)]
    bars = []
    for index, day in enumerate(days):
        missing = day.steps is None
        height = MISSING_HEIGHT if missing else day.steps * scale
        text = f"{_day(day.day)}: " + ("no data" if missing else f"{day.steps:,} steps")
        x = LEFT + index * SLOT + (SLOT - BAR_WIDTH) / 2
        labelled = (len(days) - 1 - index) % 2 == 0
        bars.append(
            Bar(round(x, 1), round(BASELINE - height, 1), round(height, 1), str(day.day.day), labelled, text, missing)
        )
    peak_day = next((day.day for day in days if peak and day.steps == peak), None)
    peak_text = f"Peak: {peak:,} steps, {_day(peak_day)}" if peak_day else "No steps"
    title = f"Steps per day, {_day(days[0].day)} to {_day(days[-1].day)}"
    description = "; ".join(bar.text for bar in bars) + "."
    return StepsChart(bars=bars, ticks=ticks, peak=peak, peak_text=peak_text, title=title, description=description)

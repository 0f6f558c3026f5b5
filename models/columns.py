"""Text cut to fit its column, the length read from the model's own column definition, so that
changing a column's length (and its migration) changes every truncation with it."""

from sqlalchemy.orm import InstrumentedAttribute


def fit(column: InstrumentedAttribute, text: str) -> str:
    """`text` cut to the length of `column`, a model attribute such as `ConnectAttempt.error`."""
    return text[: column.type.length]

"""How each part of the app reads its settings from the environment: the base model (`Settings`),
the reading (`read_settings`, which turns every problem into a ConfigError naming the variable and
never quoting a secret), and the field types the parts share.

It imports nothing of the app, so each part's settings (config.py's, mobile_redirects/settings.py,
sandbox/settings.py) builds on it, and config.py composes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar, get_args
from urllib.parse import urlsplit

import limits
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError


class ConfigError(RuntimeError):
    """The environment does not describe a runnable app."""


class Settings(BaseModel):
    """The settings of one part of the app: one field per environment variable, named as it; the
    variables of other parts are ignored. Every part knows which environment it runs in."""

    model_config = ConfigDict(extra="ignore")

    APP_ENV: Literal["development", "testing", "production"] = "development"


SettingsModel = TypeVar("SettingsModel", bound=Settings)


def read_settings(model: type[SettingsModel], environ: Mapping[str, str]) -> SettingsModel:
    """Validate `model` against the environment. An empty value means "not set", so a copied
    .env.example with blanks behaves like no .env."""
    try:
        return model.model_validate({name: value for name, value in environ.items() if value != ""})
    except ValidationError as error:
        # `from None`: pydantic's own message quotes every bad input, and some inputs are secrets.
        raise ConfigError("; ".join(_describe(model, problem) for problem in error.errors())) from None


def _describe(model: type[Settings], problem: Any) -> str:
    """One problem as `NAME must be ...`. The bad value is quoted only where it cannot be a secret:
    numbers, flags and choices; a validator of a text setting decides itself whether to quote it."""
    name = problem["loc"][0] if problem["loc"] else None
    kind, value, context = problem["type"], problem.get("input"), problem.get("ctx", {})
    if kind == "value_error":  # raised by a validator, or a rule across several settings
        message = str(context["error"])
    elif kind == "literal_error":
        message = f"must be one of {', '.join(_choices(model.model_fields[name].annotation))}, not {value!r}"
    elif kind in ("int_parsing", "int_from_float"):
        message = f"must be an integer, not {value!r}"
    elif kind == "float_parsing":
        message = f"must be a number, not {value!r}"
    elif kind == "bool_parsing":
        message = f"must be on or off (1, true, yes, on or 0, false, no, off), not {value!r}"
    elif kind in ("greater_than", "greater_than_equal", "less_than_equal"):
        bound = next(iter(context.values()))
        word = {"greater_than": "greater than", "greater_than_equal": "at least", "less_than_equal": "at most"}[kind]
        message = f"must be {word} {bound}, not {value!r}"
    else:
        message = problem["msg"]  # pydantic's wording never includes the input
    return f"{name} {message}" if name else message


def _choices(annotation: Any) -> list[str]:
    """The values a Literal setting accepts, also when it is optional (`Literal[...] | None`)."""
    return [
        choice
        for arg in get_args(annotation)
        for choice in (_choices(arg) if get_args(arg) else [arg] if isinstance(arg, str) else [])
    ]


def is_plain_url(url: str, schemes: tuple[str, ...]) -> bool:
    """A URL with one of `schemes` and a host, and nothing that could make it point elsewhere than it
    seems: no user info, query, fragment or backslash."""
    parts = urlsplit(url)
    return (
        parts.scheme in schemes
        and bool(parts.hostname)
        and not (parts.username or parts.password or parts.query or parts.fragment or "\\" in url)
    )


def _comma_separated(value: Any) -> Any:
    return [item.strip() for item in value.split(",") if item.strip()] if isinstance(value, str) else value


def _http_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL, not {url!r}")
    return url.rstrip("/")


def _rate(value: str) -> str:
    try:
        limits.parse(value)
    except ValueError:
        raise ValueError(f"must be a rate such as '10 per minute', not {value!r}") from None
    return value


# Field types shared by the parts' settings.
CommaSeparated = Annotated[list[str], BeforeValidator(_comma_separated)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
Rate = Annotated[str, AfterValidator(_rate)]
Seconds = Annotated[float, Field(gt=0)]

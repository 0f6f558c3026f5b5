"""One home for the Flask extension objects; `app.create_app` binds them to an app."""

import copy

import click
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import csrf as flask_wtf_csrf
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

from terra_integration.extension import TerraIntegration


class Base(DeclarativeBase):
    # Named constraints keep Alembic migrations identical on SQLite and PostgreSQL.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class MigrateEveryHead(Migrate):
    """Flask-Migrate, whose plain `flask db upgrade` applies every head of the history: the app's and the
    embedded sandbox's own branch (sandbox/migrations). Alembic's default target, `head`, refuses two;
    `heads` is the same with one, so nothing changes once the sandbox is removed."""

    def init_app(self, app, *args, **kwargs):
        super().init_app(app, *args, **kwargs)
        # Copies: Flask-Migrate's command group is one object shared by every app in the process.
        commands = copy.copy(app.cli.commands[self.command])
        upgrade = copy.copy(commands.commands["upgrade"])
        upgrade.params = [
            _defaulting_to(param, "heads") if param.name == "revision" else param for param in upgrade.params
        ]
        commands.commands = {**commands.commands, "upgrade": upgrade}
        app.cli.add_command(commands, name=self.command)


def _defaulting_to(param: click.Parameter, default: str) -> click.Parameter:
    changed = copy.copy(param)
    changed.default = default
    return changed


class CSRFProtect(flask_wtf_csrf.CSRFProtect):
    """Flask-WTF's CSRF protection, answering 400 to a Referer it cannot read. Over HTTPS it compares
    the Referer's origin with the host's, and urllib raises ValueError on a port out of range or a
    broken IPv6 host (`https://host:99999/`, `https://[::1/`): without this, a 500."""

    def protect(self, apply_exemptions: bool = False) -> None:
        try:
            super().protect(apply_exemptions)
        except ValueError:
            raise flask_wtf_csrf.CSRFError("The referrer header is malformed.") from None


db = SQLAlchemy(model_class=Base)
migrate = MigrateEveryHead()
csrf = CSRFProtect()
limiter = Limiter(key_func=get_remote_address)
terra = TerraIntegration()

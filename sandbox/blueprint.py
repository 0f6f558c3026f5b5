"""The sandbox blueprint object, shared by the modules that add routes to it (api, widget, console)."""

from flask import Blueprint

URL_PREFIX = "/sandbox"

bp = Blueprint("sandbox", __name__)

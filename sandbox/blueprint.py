"""The sandbox blueprint object, shared by the modules that add routes to it (api, widget, console)."""

from flask import Blueprint

URL_PREFIX = "/sandbox"

# Its pages are in sandbox/templates/sandbox/, named "sandbox/<page>.html" as before.
bp = Blueprint("sandbox", __name__, template_folder="templates")

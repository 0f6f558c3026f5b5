"""The app-association documents Apple and Google fetch to let links open the app.

Both are generated from configuration and rendered with fixed formatting, so the bytes served are
stable (Apple's CDN and Google's verifier cache them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from mobile_redirects.deep_links import OUTCOMES, universal_link_path


def render(document: object) -> bytes:
    return json.dumps(document, indent=2, sort_keys=False).encode() + b"\n"


def apple_app_site_association(config: Mapping) -> dict | None:
    app_ids = config["IOS_APP_IDS"]
    if not app_ids:
        return None
    document: dict = {}
    if config["MOBILE_UNIVERSAL_LINK_BASE"]:
        # Exactly the two link paths open the app: every other page on the host, the return pages
        # included when the host is shared, stays in the browser.
        paths = [universal_link_path(config, outcome) for outcome in OUTCOMES]
        document["applinks"] = {
            "details": [
                {
                    "appIDs": list(app_ids),
                    "components": [{"/": path, "comment": "Terra connect result"} for path in paths],
                }
            ]
        }
    # Lets ASWebAuthenticationSession use an https callback on this host (iOS 17.4+).
    document["webcredentials"] = {"apps": list(app_ids)}
    return document


def android_asset_links(config: Mapping) -> list | None:
    package, fingerprints = config["ANDROID_PACKAGE_NAME"], config["ANDROID_CERT_SHA256"]
    if not package or not fingerprints:
        return None
    return [
        {
            "relation": ["delegate_permission/common.handle_all_urls"],
            "target": {
                "namespace": "android_app",
                "package_name": package,
                "sha256_cert_fingerprints": list(fingerprints),
            },
        }
    ]

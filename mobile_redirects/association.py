"""The app-association documents Apple and Google fetch to let links open the app.

Both are generated from configuration and rendered with fixed formatting, so the bytes served are
stable (Apple's CDN and Google's verifier cache them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from urllib.parse import urlsplit


def render(document: object) -> bytes:
    return json.dumps(document, indent=2, sort_keys=False).encode() + b"\n"


def apple_app_site_association(config: Mapping) -> dict | None:
    app_ids = config["IOS_APP_IDS"]
    if not app_ids:
        return None
    # Only the deep-link paths open the app; everything else on the host stays in the browser.
    base_path = urlsplit(config["MOBILE_UNIVERSAL_LINK_BASE"]).path.rstrip("/")
    return {
        "applinks": {
            "details": [
                {
                    "appIDs": list(app_ids),
                    "components": [{"/": f"{base_path}/connect/*", "comment": "Terra connect results"}],
                }
            ]
        },
        # Lets ASWebAuthenticationSession use an https callback (iOS 17.4+).
        "webcredentials": {"apps": list(app_ids)},
    }


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

"""Flask blueprints, one per capability: auth (web login), connect (web pages), api (the mobile app), health.

Text checks that every input path needs live in `terra_integration.text_checks`.
"""

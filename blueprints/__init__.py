"""Flask blueprints, one per capability: auth (web login), connect (web pages), webhooks, health.

Text checks that every input path needs live in `text_checks` (`terra_integration/` uses them too).
"""

"""Flask blueprints, one per capability: auth (web login), connect (web pages), api (the mobile app), health.

Text checks that every input path needs live in `terra_integration.text_checks`.
"""

# The largest value of an `integer` primary key (32 bits on PostgreSQL). A larger id in a URL names
# nothing; handed to the database it would be an error (PostgreSQL: out of range, SQLite: overflow).
MAX_ROW_ID = 2**31 - 1

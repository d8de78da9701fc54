"""What the tests share: waiting for something to happen, building data at the database and at
the HTTP level, reading the API's answers, and the rule for tests that need a server.

Each module holds one of these; tests import from the module, not from this package.
"""

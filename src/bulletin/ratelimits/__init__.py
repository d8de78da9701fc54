"""Abuse limits: request rates per API key and per client address, and sign-in throttling.

Modules: :mod:`.storage` (a ``limits`` storage shared by the processes of a PostgreSQL
installation), :mod:`.service` (the policies and the decision a request gets), :mod:`.middleware`
(per-address limits of the routes that need no key, and the ``RateLimit`` fields of every
answer), :mod:`.signin` (growing delays after failed portal sign-ins, single-use sign-in
nonces), :mod:`.repository` (their SQL), :mod:`.models` (their tables).
"""
